//! A real browser for the dashboard's tests: Debian's headless Chromium, driven over WebDriver
//! by chromedriver, and a page that plays GHL (it embeds the dashboard in an iframe and answers
//! `REQUEST_USER_DATA` with a user context, as GHL does). Screenshots go to a folder the test
//! names (its `CARGO_TARGET_TMPDIR`).

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use fantoccini::elements::Element;
use fantoccini::{Client, ClientBuilder, Locator};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::{ChildGuard, free_port};

/// Where the dashboard's screenshots go: `target/tmp/dashboard/` (copied into
/// `docs/screenshots/` for the README).
pub fn screenshot_dir() -> PathBuf {
    // A test runs from `<target>/<profile>/deps/`; cargo gives integration tests
    // `<target>/tmp` as CARGO_TARGET_TMPDIR at build time, which a library cannot see.
    let target = std::env::current_exe()
        .ok()
        .and_then(|exe| Some(exe.parent()?.parent()?.parent()?.to_path_buf()))
        .unwrap_or_else(|| PathBuf::from("target"));
    let dir = target.join("tmp").join("dashboard");
    std::fs::create_dir_all(&dir).expect("the screenshots' folder");
    dir
}

/// chromedriver on a free port, with Debian's Chromium (1000×760, headless). Keep the guard for
/// as long as the client is used.
pub async fn browser() -> (BrowserGuard, Client) {
    let port = free_port();
    // A profile of its own, by which the guard finds this browser's processes when it goes.
    let profile =
        std::env::temp_dir().join(format!("whatsnap-chromium-{}-{port}", std::process::id()));
    let driver = Command::new("chromedriver")
        .arg(format!("--port={port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect(
            "chromedriver is not installed: `apt-get install chromium chromium-driver` (.ci/run does)",
        );
    let guard = BrowserGuard {
        driver: ChildGuard::new(driver),
        profile: profile.clone(),
    };
    let capabilities = serde_json::json!({
        "goog:chromeOptions": {
            "binary": "/usr/bin/chromium",
            "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                     "--window-size=1000,760", format!("--user-data-dir={}", profile.display())],
        }
    });
    let capabilities = capabilities
        .as_object()
        .expect("capabilities are an object")
        .clone();
    let mut builder = ClientBuilder::rustls().expect("TLS roots for the WebDriver client");
    builder.capabilities(capabilities);
    let mut last_error = None;
    for _ in 0..100 {
        match builder.connect(&format!("http://127.0.0.1:{port}")).await {
            Ok(client) => return (guard, client),
            Err(err) => last_error = Some(err),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("chromedriver did not start: {last_error:?}");
}

/// chromedriver and the browser it started: dropped (the test passed, failed or never closed
/// its session), both are killed with every process the browser started. Killing chromedriver
/// alone left Chromium running, orphaned, after every test that did not close its session.
pub struct BrowserGuard {
    driver: ChildGuard,
    profile: PathBuf,
}

impl Drop for BrowserGuard {
    fn drop(&mut self) {
        let Some(driver) = self.driver.id() else {
            return;
        };
        // The whole tree at once: a child killed first would leave its own children orphaned.
        let mut killed = descendants(driver as i32);
        for pid in &killed {
            let _ = kill(Pid::from_raw(*pid), Signal::SIGKILL);
        }
        // Gone (or a zombie, which writes nothing) before the profile is removed, so that
        // nothing writes it again; a second at most.
        for _ in 0..50 {
            killed.retain(|pid| state_and_parent(*pid).is_some_and(|(state, _)| state != 'Z'));
            if killed.is_empty() {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = std::fs::remove_dir_all(&self.profile);
    }
}

/// A process's state (`Z` for a zombie) and its parent's id, from `/proc/<pid>/stat`; `None`
/// once it is gone.
fn state_and_parent(pid: i32) -> Option<(char, i32)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // `pid (comm) state ppid ...`; the command may hold spaces and parentheses.
    let (_, rest) = stat.rsplit_once(')')?;
    let mut fields = rest.split_whitespace();
    let state = fields.next()?.chars().next()?;
    Some((state, fields.next()?.parse().ok()?))
}

/// The processes descended from `root` (not `root` itself), from `/proc`.
fn descendants(root: i32) -> Vec<i32> {
    let mut parents = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        if let Some((_, ppid)) = state_and_parent(pid) {
            parents.push((pid, ppid));
        }
    }
    let mut found = vec![root];
    let mut next = 0;
    while next < found.len() {
        let parent = found[next];
        found.extend(
            parents
                .iter()
                .filter(|(_, p)| *p == parent)
                .map(|(pid, _)| *pid),
        );
        next += 1;
    }
    found.remove(0);
    found
}

/// chromedriver and the browser session it drives; the driver stops when this is dropped.
pub struct Browser {
    pub client: Client,
    screenshots: PathBuf,
    _driver: BrowserGuard,
}

impl Browser {
    /// chromedriver on a free port, with Debian's Chromium, saving screenshots to `screenshots`.
    pub async fn start(screenshots: PathBuf) -> Self {
        std::fs::create_dir_all(&screenshots).expect("the screenshots folder");
        let (driver, client) = browser().await;
        Self {
            client,
            screenshots,
            _driver: driver,
        }
    }

    /// Saves what the browser shows as `<name>.png`.
    pub async fn screenshot(&self, name: &str) {
        let png = self.client.screenshot().await.unwrap();
        std::fs::write(self.screenshots.join(format!("{name}.png")), png).unwrap();
    }

    /// The element `css` selects, once it is on the page (within 20 s).
    pub async fn find(&self, css: &str) -> Element {
        self.client
            .wait()
            .at_most(Duration::from_secs(20))
            .for_element(Locator::Css(css))
            .await
            .unwrap_or_else(|err| panic!("no {css} on the page: {err}"))
    }

    /// The text of the element `css` selects, once it is on the page (a page that reloads
    /// meanwhile is read again).
    pub async fn text_of(&self, css: &str) -> String {
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        loop {
            match self.find(css).await.text().await {
                Ok(text) => return text,
                Err(err) if std::time::Instant::now() > deadline => {
                    panic!("cannot read {css}: {err}")
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    }

    /// Waits (up to 30 s) until `check` holds for the text of the element `css` selects; that
    /// text.
    pub async fn wait_for_text(
        &self,
        css: &str,
        what: &str,
        check: impl Fn(&str) -> bool,
    ) -> String {
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(element) = self.client.find(Locator::Css(css)).await
                && let Ok(text) = element.text().await
                && check(&text)
            {
                return text;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "not within 30 s: {what} ({css})"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits (up to 30 s) until the attribute `name` of the element `css` selects passes
    /// `check`; its value.
    pub async fn wait_for_attr(
        &self,
        css: &str,
        name: &str,
        what: &str,
        check: impl Fn(&str) -> bool,
    ) -> String {
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(element) = self.client.find(Locator::Css(css)).await
                && let Ok(Some(value)) = element.attr(name).await
                && check(&value)
            {
                return value;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "not within 30 s: {what} ({css}[{name}])"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Types `text` into the field `css` selects, replacing what it held.
    pub async fn fill(&self, css: &str, text: &str) {
        let field = self.find(css).await;
        field.clear().await.unwrap();
        field.send_keys(text).await.unwrap();
    }

    /// Clicks the element `css` selects.
    pub async fn click(&self, css: &str) {
        self.find(css).await.click().await.unwrap();
    }

    /// The sign-in cookie's `Cookie` header, to make plain requests as the signed-in viewer.
    pub async fn session_cookie(&self) -> String {
        let cookie = self
            .client
            .get_named_cookie("whatsnap_session")
            .await
            .expect("the sign-in cookie is set");
        format!("whatsnap_session={}", cookie.value())
    }
}

/// A page that plays GHL on a port of its own: it embeds `dashboard` (its base URL) and answers
/// the dashboard's request for the user's context with `payload`. The port.
pub async fn ghl_page(dashboard: &str, payload: String) -> u16 {
    let html = format!(
        r#"<!doctype html><html><head><title>GHL (fake)</title></head>
<body style="margin:0;font-family:sans-serif">
<div style="background:#111827;color:#fff;padding:8px 12px">GHL sub-account · Custom page</div>
<iframe id="app" src="{dashboard}/app" style="border:0;width:100%;height:700px"></iframe>
<script>
window.addEventListener("message", function (event) {{
  if (event.data && event.data.message === "REQUEST_USER_DATA") {{
    event.source.postMessage({{ message: "REQUEST_USER_DATA_RESPONSE", payload: {payload:?} }}, "*");
  }}
}});
</script></body></html>"#
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let app = axum::Router::new().route(
        "/",
        axum::routing::get(move || {
            let html = html.clone();
            async move { axum::response::Html(html) }
        }),
    );
    tokio::spawn(async move { axum::serve(listener, app).await });
    port
}
