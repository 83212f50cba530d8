//! Real `whatsnap` processes for end-to-end tests: started with arguments, their addresses read
//! from what they print, killed or stopped like an operator or a crash would.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use anyhow::{Context, bail};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A child process that is killed (and reaped) when this guard is dropped — when the test that
/// started it ends, whether it passed or panicked — so no test leaves a process behind.
pub struct ChildGuard(Option<Child>);

impl ChildGuard {
    pub fn new(child: Child) -> Self {
        Self(Some(child))
    }

    /// The process id, while the process has not been stopped through this guard.
    pub fn id(&self) -> Option<u32> {
        self.0.as_ref().map(Child::id)
    }

    /// The child itself, to take its pipes.
    pub fn child_mut(&mut self) -> &mut Child {
        self.0.as_mut().expect("the child is still guarded")
    }

    /// How the process ended, if it has; `None` while it runs. `Child` keeps the status once
    /// reaped, so asking again answers the same.
    pub fn try_wait(&mut self) -> Option<std::process::ExitStatus> {
        self.0.as_mut()?.try_wait().ok()?
    }

    /// Sends `signal` and waits for the process to exit.
    pub fn signal(&mut self, signal: Signal) -> anyhow::Result<std::process::ExitStatus> {
        let mut child = self.0.take().context("already stopped")?;
        kill(Pid::from_raw(child.id() as i32), signal)?;
        Ok(child.wait()?)
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if let Some(mut child) = self.0.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The first admin token every `whatsnap serve` a test starts is given (WHATSNAP_ADMIN_TOKEN),
/// as a distributed deployment takes it from a Secret; tests call with it unless they test
/// what other tokens may do.
pub const ADMIN_TOKEN: &str = "wsn_d2hhdHNuYXAgZW5kLXRvLWVuZCB0ZXN0IGFkbWluISE";

/// The service credential of the processes a test starts (WHATSNAP_SERVICE_TOKEN), the same in
/// each, as a cluster's processes share one.
pub const SERVICE_TOKEN: &str = "wsn_d2hhdHNuYXAgZTJlIHRlc3Qgc2VydmljZSB0b2tlbiE";

/// A gRPC channel whose calls carry a token.
pub type Channel = whatsnap_auth::AuthedChannel;

/// A running `whatsnap serve`.
pub struct Whatsnap {
    child: ChildGuard,
    pub grpc: SocketAddr,
    pub http: Option<SocketAddr>,
    /// Where its logs (stderr) go.
    pub log: PathBuf,
}

/// A port free at the time of asking, for a process that must come back on the same address.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

impl Whatsnap {
    /// Starts `binary serve <args>` and waits until it says where it listens.
    pub fn serve(binary: &Path, args: &[String], log_name: &str) -> anyhow::Result<Self> {
        Self::serve_with_env(binary, args, &[], log_name)
    }

    /// As [`Whatsnap::serve`], with these environment variables set for the process (an empty
    /// value removes the variable: `("WHATSNAP_ADMIN_TOKEN", "")` starts it as on a fresh
    /// machine, without a first admin token given).
    pub fn serve_with_env(
        binary: &Path,
        args: &[String],
        env: &[(&str, String)],
        log_name: &str,
    ) -> anyhow::Result<Self> {
        let log = std::env::temp_dir().join(format!(
            "whatsnap-e2e-{log_name}-{}.log",
            crate::unique_token()
        ));
        // Guarded from the start, so that an error below does not leave the process running.
        let mut command = Command::new(binary);
        command
            .arg("serve")
            .args(args)
            .env("WHATSNAP_ADMIN_TOKEN", ADMIN_TOKEN)
            .env("WHATSNAP_SERVICE_TOKEN", SERVICE_TOKEN);
        for (name, value) in env {
            match value.is_empty() {
                true => command.env_remove(name),
                false => command.env(name, value),
            };
        }
        let mut child = ChildGuard::new(
            command
                .stdout(Stdio::piped())
                .stderr(std::fs::File::create(&log)?)
                .spawn()
                .with_context(|| format!("starting {}", binary.display()))?,
        );
        let stdout = child.child_mut().stdout.take().expect("piped stdout");
        let (lines, received) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if lines.send(line).is_err() {
                    break;
                }
            }
        });
        let (mut grpc, mut http, mut gateway) = (None, None, false);
        while grpc.is_none() || (gateway && http.is_none()) {
            let line = match received.recv_timeout(Duration::from_secs(30)) {
                Ok(line) => line,
                Err(_) => {
                    drop(child);
                    let logs = std::fs::read_to_string(&log).unwrap_or_default();
                    bail!("whatsnap did not report its addresses; its log:\n{logs}");
                }
            };
            if let Some(rest) = line.strip_prefix("whatsnap ") {
                gateway = rest.contains("gateway");
            } else if let Some(addr) = line.strip_prefix("gRPC listening on ") {
                grpc = Some(addr.trim().parse()?);
            } else if let Some(addr) = line.strip_prefix("HTTP listening on ") {
                http = Some(addr.split_whitespace().next().unwrap_or_default().parse()?);
            }
        }
        Ok(Self {
            child,
            grpc: grpc.expect("read above"),
            http,
            log,
        })
    }

    pub fn grpc_url(&self) -> String {
        format!("http://{}", self.grpc)
    }

    /// A channel to its gRPC API whose calls carry the admin token.
    pub async fn channel(&self) -> Channel {
        self.channel_with(ADMIN_TOKEN).await
    }

    /// A channel to its gRPC API whose calls carry `token`.
    pub async fn channel_with(&self, token: &str) -> Channel {
        channel_to(self.grpc, token).await
    }
}

/// A channel to the gRPC API at `addr` whose calls carry `token`.
pub async fn channel_to(addr: SocketAddr, token: &str) -> Channel {
    let channel = tonic::transport::Channel::from_shared(format!("http://{addr}"))
        .expect("a valid URL")
        .connect()
        .await
        .expect("whatsnap's gRPC server is reachable");
    whatsnap_auth::authed(channel, Some(token))
}

impl Whatsnap {
    /// The process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// How the process ended, if it has (a fail point aborts it, say); `None` while it runs.
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait()
    }

    /// SIGKILL: a crash, with no chance to finish anything.
    pub fn kill(&mut self) -> anyhow::Result<()> {
        self.child.signal(Signal::SIGKILL).map(drop)
    }

    /// SIGTERM: the orderly stop of Kubernetes; returns how the process exited.
    pub fn terminate(&mut self) -> anyhow::Result<std::process::ExitStatus> {
        self.child.signal(Signal::SIGTERM)
    }
}

/// The status code and body of `GET http://addr/path`.
pub async fn http_get(addr: SocketAddr, path: &str) -> anyhow::Result<(u16, String)> {
    http_post(addr, path, &[], None).await
}

/// The status code and body of a request to `http://addr/path`: a POST of `body` with
/// `headers` when there is a body, a GET otherwise.
pub async fn http_post(
    addr: SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&[u8]>,
) -> anyhow::Result<(u16, String)> {
    let reply = http_request(addr, path, headers, body).await?;
    Ok((reply.status, reply.body))
}

/// An HTTP answer: its status, headers (names lowercase) and body.
#[derive(Debug, Clone)]
pub struct HttpReply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl HttpReply {
    /// The first value of the header `name` (any case).
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// As [`http_post`], with the answer's headers.
pub async fn http_request(
    addr: SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&[u8]>,
) -> anyhow::Result<HttpReply> {
    let mut stream = tokio::net::TcpStream::connect(addr).await?;
    let method = if body.is_some() { "POST" } else { "GET" };
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    if let Some(body) = body {
        head.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes()).await?;
    if let Some(body) = body {
        // A server may refuse a large body before reading it all.
        let _ = stream.write_all(body).await;
    }
    let mut response = Vec::new();
    let _ = stream.read_to_end(&mut response).await;
    let response = String::from_utf8_lossy(&response).into_owned();
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("not an HTTP response: {response:?}"))?;
    let (head, body) = response
        .split_once("\r\n\r\n")
        .map(|(h, b)| (h.to_owned(), b.to_owned()))
        .unwrap_or_default();
    let headers = head
        .lines()
        .skip(1)
        .filter_map(|line| line.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    Ok(HttpReply {
        status,
        headers,
        body,
    })
}
