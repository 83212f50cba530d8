//! `whatsnap serve`: builds the backend, the services of the chosen targets, their projections,
//! the gRPC server (with health and reflection) and, for the gateway, the HTTP server; runs them
//! until SIGTERM or Ctrl-C, then drains and exits.

use std::collections::BTreeSet;
use std::fmt;
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use clap::Args;
use sqlx::any::AnyPoolOptions;
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tonic::transport::{Endpoint, Server};
use tower::ServiceExt;
use tracing::{Instrument, error, info, warn};
use whatsnap_auth::{ApiToken, AuthedChannel, Transport};
use whatsnap_eventstore::EventStore;
use whatsnap_eventstore::jetstream::{CatchUp, JetStreamConfig, JetStreamEventStore};
use whatsnap_eventstore::lease::{Fence, Leases};
use whatsnap_eventstore::projection::{Part, Projection, ProjectionRunner};
use whatsnap_eventstore::sqlite::{SqliteConfig, SqliteEventStore};
use whatsnap_gateway::{Follower, Readiness, Remote};
use whatsnap_proto::assignment::v1::assignment_service_server::AssignmentServiceServer;
use whatsnap_proto::contacts::v1::contacts_service_server::ContactsServiceServer;
use whatsnap_proto::ghlsync::v1::ghl_sync_service_server::GhlSyncServiceServer;
use whatsnap_proto::session::v1::session_service_server::SessionServiceServer;

use crate::tls::Tls;
use whatsnap_rpc::ReadDb;

/// The services one process can run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Target {
    Gateway,
    Session,
    Contacts,
    Assignment,
    GhlSync,
}

impl Target {
    const ALL: [Target; 5] = [
        Self::Gateway,
        Self::Session,
        Self::Contacts,
        Self::Assignment,
        Self::GhlSync,
    ];

    fn name(self) -> &'static str {
        match self {
            Self::Gateway => "gateway",
            Self::Session => "session",
            Self::Contacts => "contacts",
            Self::Assignment => "assignment",
            Self::GhlSync => "ghl-sync",
        }
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[derive(Debug, Clone)]
pub struct Targets(BTreeSet<Target>);

impl FromStr for Targets {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut targets = BTreeSet::new();
        for name in s.split(',').map(str::trim).filter(|n| !n.is_empty()) {
            if name == "all" {
                targets.extend(Target::ALL);
                continue;
            }
            let target = Target::ALL
                .into_iter()
                .find(|t| t.name() == name)
                .ok_or_else(|| {
                    format!("unknown target {name:?}: use all, gateway, session, contacts, assignment or ghl-sync")
                })?;
            targets.insert(target);
        }
        if targets.is_empty() {
            return Err("no target given".into());
        }
        Ok(Self(targets))
    }
}

/// Where events and read models live.
#[derive(Debug, Args)]
pub struct BackendArgs {
    /// Where the embedded backend keeps its SQLite files (used without --nats-url): the log in
    /// whatsnap.db, the read models in read-models.db.
    #[arg(long, env = "WHATSNAP_DATA_DIR", default_value = "./whatsnap-data")]
    data_dir: PathBuf,
    /// NATS server (2.12 or newer, JetStream enabled) for the event log; with --database-url,
    /// selects the distributed backend.
    #[arg(long, env = "WHATSNAP_NATS_URL")]
    nats_url: Option<String>,
    /// PostgreSQL URL for the read models; with --nats-url, selects the distributed backend.
    #[arg(long, env = "WHATSNAP_DATABASE_URL")]
    database_url: Option<String>,
    /// JetStream stream that holds the event log.
    #[arg(long, env = "WHATSNAP_STREAM_NAME", default_value = "WHATSNAP_EVENTS")]
    stream_name: String,
    /// First subject token of every event.
    #[arg(long, env = "WHATSNAP_SUBJECT_PREFIX", default_value = "evt")]
    subject_prefix: String,
    /// JetStream replicas of the event stream (3 in production clusters).
    #[arg(long, env = "WHATSNAP_NATS_REPLICAS", default_value_t = 1)]
    replicas: usize,
    /// On the distributed backend, a read model (or the assignment decider) starting more than
    /// this many events behind the log's head catches up on pages of the log that the read
    /// models of the process share, each page read once, rather than on a JetStream consumer
    /// of its own (which has the server send each of them the whole backlog).
    #[arg(long, env = "WHATSNAP_CATCH_UP_AFTER", default_value_t = CatchUp::default().after)]
    catch_up_after: u64,
    /// Events per shared page of the catch-up (one batch read from JetStream).
    #[arg(
        long,
        env = "WHATSNAP_CATCH_UP_PAGE",
        default_value_t = CatchUp::default().page,
        value_parser = clap::value_parser!(u64).range(1..=1000)
    )]
    catch_up_page: u64,
    /// The last events of the log this process keeps in memory for its read models, contacts
    /// stage and assignment decider, which take them from there rather than each reading the
    /// log: on the distributed backend they follow the head through one JetStream consumer
    /// between them (each event sent and decoded once for the process), one further behind
    /// catching up on the shared pages; on the embedded one they are the events the process
    /// has just committed, and a subscription reads the log only further behind. 0: each reads
    /// the log on its own (on JetStream, with a durable consumer), as before 2026-12.
    #[arg(long, env = "WHATSNAP_TAIL_EVENTS", default_value_t = CatchUp::default().tail)]
    tail_events: usize,
    /// The most connections this process opens to PostgreSQL, all its pools together (read
    /// models, their projection, the contacts' keys, the request quotas) and the one that hears
    /// the GHL queue move. Size PostgreSQL's max_connections for this times the processes,
    /// rolling updates included.
    #[arg(
        long,
        env = "WHATSNAP_DATABASE_CONNECTIONS",
        default_value_t = 28,
        value_parser = clap::value_parser!(u32).range(5..)
    )]
    database_connections: u32,
    #[command(flatten)]
    nats_auth: NatsAuthArgs,
}

/// How a process's PostgreSQL connections are shared among its pools.
#[derive(Debug, PartialEq, Eq)]
struct PoolSizes {
    db: u32,
    projections: u32,
    keys: u32,
    quotas: u32,
}

impl PoolSizes {
    /// The connection that listens for the GHL queue's moves (`whatsnap_ghl_sync::queue_moves`),
    /// outside the pools.
    const LISTENER: u32 = 1;

    /// A seventh each for the contacts' keys and the quotas (short statements), one for the
    /// listener, the rest halved between the read models' readers and their projection runners.
    fn of(total: u32) -> Self {
        let keys = (total / 7).max(1);
        let quotas = (total / 7).max(1);
        let rest = total.saturating_sub(keys + quotas + Self::LISTENER).max(2);
        Self {
            db: rest / 2,
            projections: rest - rest / 2,
            keys,
            quotas,
        }
    }
}

/// How whatsnap proves who it is to a NATS server with authentication; at most one way.
#[derive(Debug, Args)]
pub struct NatsAuthArgs {
    /// NATS user name (with --nats-password).
    #[arg(long, env = "WHATSNAP_NATS_USER", requires = "nats_password")]
    nats_user: Option<String>,
    /// NATS password (with --nats-user).
    #[arg(
        long,
        env = "WHATSNAP_NATS_PASSWORD",
        hide_env_values = true,
        requires = "nats_user"
    )]
    nats_password: Option<String>,
    /// NATS authentication token.
    #[arg(long, env = "WHATSNAP_NATS_TOKEN", hide_env_values = true, conflicts_with_all = ["nats_user", "nats_nkey", "nats_creds"])]
    nats_token: Option<String>,
    /// NATS NKey seed (SU…).
    #[arg(long, env = "WHATSNAP_NATS_NKEY", hide_env_values = true, conflicts_with_all = ["nats_user", "nats_creds"])]
    nats_nkey: Option<String>,
    /// A NATS .creds file (user JWT and NKey seed), for operator-mode servers.
    #[arg(long, env = "WHATSNAP_NATS_CREDS", conflicts_with = "nats_user")]
    nats_creds: Option<PathBuf>,
}

impl NatsAuthArgs {
    fn auth(&self) -> whatsnap_eventstore::jetstream::NatsAuth {
        use whatsnap_eventstore::jetstream::NatsAuth;
        match (
            &self.nats_user,
            &self.nats_password,
            &self.nats_token,
            &self.nats_nkey,
            &self.nats_creds,
        ) {
            (Some(user), Some(password), ..) => NatsAuth::UserPassword {
                user: user.clone(),
                password: password.clone(),
            },
            (_, _, Some(token), ..) => NatsAuth::Token(token.clone()),
            (_, _, _, Some(seed), _) => NatsAuth::Nkey(seed.clone()),
            (.., Some(path)) => NatsAuth::CredsFile(path.clone()),
            _ => NatsAuth::None,
        }
    }
}

/// `url` without the password it may carry (`nats://user:secret@host` → `nats://user:***@host`),
/// for messages and logs.
fn without_password(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut parsed) if parsed.password().is_some() => {
            let _ = parsed.set_password(Some("***"));
            parsed.to_string()
        }
        _ => url.to_owned(),
    }
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// The services to run, comma separated: all, gateway, session, contacts, assignment,
    /// ghl-sync.
    #[arg(long, env = "WHATSNAP_TARGET", default_value = "all")]
    target: Targets,
    #[command(flatten)]
    backend: BackendArgs,
    /// gRPC address (port 0 picks a free port; the chosen one is printed).
    #[arg(long, env = "WHATSNAP_GRPC_ADDR", default_value = "127.0.0.1:50051")]
    grpc_addr: SocketAddr,
    /// HTTP address of the gateway: health checks, Twilio and GHL webhooks, the OAuth install.
    #[arg(long, env = "WHATSNAP_HTTP_ADDR", default_value = "127.0.0.1:8080")]
    http_addr: SocketAddr,
    /// An HTTP address for operators, served by every target: `/healthz`, `/readyz` and
    /// `/metrics` (Prometheus; an admin token of every location scrapes it). The gateway serves
    /// the same on its own HTTP address too. None by default.
    #[arg(long, env = "WHATSNAP_METRICS_ADDR")]
    metrics_addr: Option<SocketAddr>,
    /// gRPC URL of the session service, when the gateway runs without it.
    #[arg(long, env = "WHATSNAP_SESSION_URL")]
    session_url: Option<String>,
    /// gRPC URL of the contacts service, when the gateway runs without it.
    #[arg(long, env = "WHATSNAP_CONTACTS_URL")]
    contacts_url: Option<String>,
    /// gRPC URL of the assignment service, when the gateway runs without it.
    #[arg(long, env = "WHATSNAP_ASSIGNMENT_URL")]
    assignment_url: Option<String>,
    /// gRPC URL of the ghl-sync service, when the gateway runs without it.
    #[arg(long, env = "WHATSNAP_GHL_SYNC_URL")]
    ghl_sync_url: Option<String>,
    /// The key that seals stored credentials (Twilio Auth Tokens, GHL tokens, linked WhatsApp
    /// devices): 32 random bytes, base64 (`openssl rand -base64 32`), the same for every process
    /// that runs session or ghl-sync. The other targets need only --personal-data-key. Without
    /// it the embedded setup keeps one in --secret-key-file.
    #[arg(long, env = "WHATSNAP_SECRET_KEY", hide_env_values = true)]
    secret_key: Option<String>,
    /// The key that seals personal data (the contacts' keys, received files, dashboard cookies),
    /// derived from --secret-key: `whatsnap keys personal-data` prints it. Give it instead of
    /// --secret-key to the gateway, contacts and assignment targets, so that the internet-facing
    /// gateway holds no key that opens a tenant's credentials. Default: derived from
    /// --secret-key.
    #[arg(long, env = "WHATSNAP_PERSONAL_DATA_KEY", hide_env_values = true)]
    personal_data_key: Option<String>,
    /// The first admin token of a distributed deployment (from a Secret): recorded, hashed, on
    /// start if it is not yet. The embedded setup writes one to <data-dir>/admin-token (mode
    /// 0600) on its first start when none is given.
    #[arg(long, env = "WHATSNAP_ADMIN_TOKEN", hide_env_values = true)]
    admin_token: Option<String>,
    /// The credential whatsnap's services call each other with, the same for every process.
    /// Default: derived from the personal data key; the embedded setup keeps one in
    /// <data-dir>/service-token.
    #[arg(long, env = "WHATSNAP_SERVICE_TOKEN", hide_env_values = true)]
    service_token: Option<String>,
    /// A PEM certificate chain: gRPC and HTTP are served over TLS with it (and --tls-key).
    #[arg(long, env = "WHATSNAP_TLS_CERT", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// The PEM private key of --tls-cert.
    #[arg(long, env = "WHATSNAP_TLS_KEY", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Where the embedded setup keeps its secret key when --secret-key is not given (created on
    /// first start). Default: $XDG_CONFIG_HOME/whatsnap/secret.key (~/.config/whatsnap/…), so
    /// that a backup of the data directory does not hold the key that opens it; a key file
    /// already in the data directory (from an older whatsnap) is used, with a warning.
    #[arg(long, env = "WHATSNAP_SECRET_KEY_FILE")]
    secret_key_file: Option<PathBuf>,
    /// The Twilio API.
    #[arg(long, env = "WHATSNAP_TWILIO_BASE_URL", default_value = whatsnap_twilio::DEFAULT_BASE_URL)]
    twilio_base_url: String,
    /// How long one request to Twilio may take before it is given up, in seconds. A send given up this
    /// way is looked for in the account's message list before it is sent again.
    #[arg(long, env = "WHATSNAP_TWILIO_TIMEOUT", default_value = "15", value_parser = seconds)]
    twilio_timeout: Duration,
    /// How long (seconds) a reply keeps being tried while its Twilio account is unreachable or rate
    /// limited before it is recorded as failed (and GHL told so). Other accounts' replies do
    /// not wait for it.
    #[arg(long, env = "WHATSNAP_SEND_PATIENCE", default_value = "120", value_parser = seconds)]
    send_patience: Duration,
    /// An Evolution API v2 server that drives WhatsApp accounts for agencies that run one
    /// (e.g. https://evolution.example.com); without it, WhatsApp accounts use the embedded
    /// engine only.
    #[arg(long, env = "WHATSNAP_EVOLUTION_URL")]
    evolution_url: Option<String>,
    /// The Evolution server's global API key (its AUTHENTICATION_API_KEY).
    #[arg(long, env = "WHATSNAP_EVOLUTION_API_KEY", hide_env_values = true)]
    evolution_api_key: Option<String>,
    /// The key Evolution signs its webhooks with (a `jwt_key` webhook header), for servers
    /// that do not put the instance's token in webhook bodies
    /// (AUTHENTICATION_EXPOSE_IN_FETCH_INSTANCES unset).
    #[arg(
        long,
        env = "WHATSNAP_EVOLUTION_WEBHOOK_JWT_KEY",
        hide_env_values = true
    )]
    evolution_webhook_jwt_key: Option<String>,
    /// How long one request to a Mac's BlueBubbles server (iMessage accounts) may take, in
    /// seconds. A send given up this way is looked for on the Mac before it is sent again.
    #[arg(long, env = "WHATSNAP_BLUEBUBBLES_TIMEOUT", default_value = "30", value_parser = seconds)]
    bluebubbles_timeout: Duration,
    /// How often (seconds) each Mac is pinged: a Mac that stops answering shows its iMessage
    /// account disconnected (and alerts) within this time.
    #[arg(long, env = "WHATSNAP_BLUEBUBBLES_PING_INTERVAL", default_value = "30", value_parser = seconds)]
    bluebubbles_ping_interval: Duration,
    /// How far back (seconds) a Mac is asked for missed messages when its iMessage account has
    /// recorded none yet (a Mac just added). Every other catch-up starts from the account's
    /// last message recorded, however long ago.
    #[arg(long, env = "WHATSNAP_BLUEBUBBLES_CATCH_UP", default_value = "86400", value_parser = seconds)]
    bluebubbles_catch_up: Duration,
    /// Meta's Graph API, which WhatsApp Cloud API accounts (`--engine cloud`) are reached
    /// through.
    #[arg(long, env = "WHATSNAP_CLOUD_GRAPH_URL", default_value = whatsnap_cloudapi::client::DEFAULT_GRAPH_URL)]
    cloud_graph_url: String,
    /// The Graph API version Cloud API calls use (Meta keeps each about two years).
    #[arg(long, env = "WHATSNAP_CLOUD_GRAPH_VERSION", default_value = whatsnap_cloudapi::client::DEFAULT_GRAPH_VERSION)]
    cloud_graph_version: String,
    /// How long one request to the Graph API may take, in seconds. A Cloud API send given up
    /// this way is reported failed, not sent again: the Cloud API cannot say whether it left.
    #[arg(long, env = "WHATSNAP_CLOUD_TIMEOUT", default_value = "20", value_parser = seconds)]
    cloud_timeout: Duration,
    /// The engine new WhatsApp accounts use when they are added without `--engine`:
    /// `embedded` (in this process, nothing else to install) or `evolution`.
    #[arg(long, env = "WHATSNAP_WHATSAPP_ENGINE", default_value = "embedded")]
    whatsapp_engine: String,
    /// How long (seconds) a WhatsApp reply may go without a delivery receipt: when an account's
    /// last three replies sent longer ago all lack one, the account is flagged as connected but
    /// not delivering (and an alert fires).
    #[arg(long, env = "WHATSNAP_RECEIPT_PATIENCE", default_value = "600", value_parser = seconds)]
    receipt_patience: Duration,
    /// SMSGate's public cloud API, for Android accounts added in cloud mode.
    #[arg(long, env = "WHATSNAP_SMSGATE_CLOUD_URL", default_value = whatsnap_smsgate::CLOUD_URL)]
    smsgate_cloud_url: String,
    /// How long (seconds) an Android phone may stay silent (no webhook, health answer or
    /// `lastSeen`) before its account shows offline, and how long a text it took may wait to
    /// be sent before the account shows connected but not delivering.
    #[arg(long, env = "WHATSNAP_SMSGATE_PATIENCE", default_value = "600", value_parser = seconds)]
    smsgate_patience: Duration,
    /// How often (seconds) whatsnap looks at each Android phone.
    #[arg(long, env = "WHATSNAP_SMSGATE_POLL", default_value = "30", value_parser = seconds)]
    smsgate_poll: Duration,
    /// How long (seconds) one request to an SMSGate gateway may take; a send given up this way
    /// is read back by its id before it is sent again.
    #[arg(long, env = "WHATSNAP_SMSGATE_TIMEOUT", default_value = "15", value_parser = seconds)]
    smsgate_timeout: Duration,
    /// Where alerts go when an account disconnects or is connected but not delivering: an
    /// incoming webhook that takes Slack's `{"text": …}` (Slack, Mattermost, Google Chat, most
    /// incident tools). No alerts without it.
    #[arg(long, env = "WHATSNAP_ALERT_WEBHOOK_URL")]
    alert_webhook_url: Option<String>,
    /// The scheme and host providers call webhooks on, as configured with them (e.g.
    /// https://whatsnap.example.com); Twilio signs that URL. Default: http:// and the request's
    /// Host header.
    #[arg(long, env = "WHATSNAP_PUBLIC_URL")]
    public_url: Option<String>,
    /// The Ed25519 public key (PEM) GHL signs X-GHL-Signature with; GHL's published key by
    /// default.
    #[arg(
        long,
        env = "WHATSNAP_GHL_WEBHOOK_ED25519_KEY",
        default_value = whatsnap_ghl::signature::GHL_ED25519_PEM,
        hide_default_value = true,
        allow_hyphen_values = true
    )]
    ghl_webhook_ed25519_key: String,
    /// The RSA public key (PEM) of GHL's legacy X-WH-Signature; GHL's published key by default.
    #[arg(
        long,
        env = "WHATSNAP_GHL_WEBHOOK_RSA_KEY",
        default_value = whatsnap_ghl::signature::GHL_RSA_PEM,
        hide_default_value = true,
        allow_hyphen_values = true
    )]
    ghl_webhook_rsa_key: String,
    /// The GHL app's Shared Secret (Marketplace: Advanced Settings > Auth > Shared Secret): signs
    /// GHL users into the dashboard (`/app`) when it is opened inside GHL as a custom page.
    /// Without it, the dashboard signs in with API tokens only.
    #[arg(long, env = "GHL_SHARED_SECRET", hide_env_values = true)]
    ghl_shared_secret: Option<String>,
    /// How many accounts, of all kinds together, one location may have.
    #[arg(long, env = "WHATSNAP_MAX_ACCOUNTS_PER_LOCATION", default_value_t = 10)]
    max_accounts_per_location: usize,
    /// How many times a projection tries an event that fails (with growing pauses) before it
    /// parks it and goes on; see `whatsnap parked --help`.
    #[arg(long, env = "WHATSNAP_PROJECTION_ATTEMPTS", default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..))]
    projection_attempts: u32,
    /// Distributed backend: how long a replica's hold on a piece of work (a projection, the
    /// replies' queue, the GHL worker, the assignment decider) lasts unrenewed. Replicas of the
    /// same targets share the work; another takes over a dead replica's work this long after it
    /// died (at once after an orderly stop). Keep it well above the clocks' skew.
    #[arg(long, env = "WHATSNAP_LEASE_TTL", default_value = "10", value_parser = seconds)]
    lease_ttl: Duration,
    /// Distributed backend: how many parts the contacts stage (finding or creating each
    /// message's contact and tagging it; choosing the account each reply leaves from) is split
    /// into, by contact, each a piece of work of its own that replicas share (one contact's
    /// messages and replies stay in order, in one part). Set it to at least the contacts
    /// replicas you run (deploy/k8s: 6); one process is faster with one part (each part reads
    /// the messages on its own).
    #[arg(long, env = "WHATSNAP_CONTACT_PARTS", default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=64))]
    contact_parts: u32,
    /// Distributed backend: how many parts the GHL work (each location's queue drained at
    /// GHL's pace) is split into, by location, each a piece of work replicas share (deploy/k8s:
    /// 4). Change it on every replica of ghl-sync at once: replicas that split the work
    /// otherwise wait for each other's parts to go, so a rolling change pauses the GHL work
    /// until the last replica with the old count has stopped.
    #[arg(long, env = "WHATSNAP_GHL_PARTS", default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=64))]
    ghl_parts: u32,
    /// This replica's name in the leases (see `--lease-ttl`); default: the host name (the pod's
    /// name on Kubernetes), the process id and a random suffix.
    #[arg(long, env = "WHATSNAP_REPLICA_ID")]
    replica_id: Option<String>,
    /// What every account tag starts with; the account's name follows (`whatsnap-account-sales`).
    #[arg(long, env = "WHATSNAP_TAG_PREFIX", default_value = whatsnap_session::DEFAULT_TAG_PREFIX, value_parser = tag_prefix)]
    tag_prefix: String,
    #[command(flatten)]
    ghl: GhlArgs,
    #[command(flatten)]
    limits: LimitArgs,
    /// Run against a fake GHL and a fake Twilio on loopback, and play a message's round trip
    /// (a text in, a reply out, its delivery back) so you can watch it; data goes to a
    /// temporary directory unless --nats-url/--database-url are given.
    #[arg(long, env = "WHATSNAP_DEMO")]
    demo: bool,
}

/// Bounds on what callers may ask of the process (see the README's "Limits").
#[derive(Debug, Args)]
pub struct LimitArgs {
    /// How long a gRPC call may take before it is cancelled, in seconds (streams such as
    /// `events tail` run on once they have started).
    #[arg(long, env = "WHATSNAP_GRPC_TIMEOUT", default_value = "30", value_parser = seconds)]
    grpc_timeout: Duration,
    /// How many gRPC calls the process handles at once; the others wait their turn.
    #[arg(long, env = "WHATSNAP_GRPC_CONCURRENCY", default_value_t = 256, value_parser = clap::value_parser!(u32).range(1..))]
    grpc_concurrency: u32,
    /// How long an HTTP request (a webhook, a page) may take, waiting included, before it is
    /// answered 503, in seconds.
    #[arg(long, env = "WHATSNAP_HTTP_TIMEOUT", default_value = "30", value_parser = seconds)]
    http_timeout: Duration,
    /// How many HTTP requests the gateway handles at once; the others wait their turn.
    #[arg(long, env = "WHATSNAP_HTTP_CONCURRENCY", default_value_t = 256, value_parser = clap::value_parser!(u32).range(1..))]
    http_concurrency: u32,
    /// The most events one page of `ReadStream` holds; a bigger page is clamped to it.
    #[arg(long, env = "WHATSNAP_MAX_PAGE", default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..))]
    max_page: u32,
    /// How many `Tail` calls (`whatsnap events tail`) may follow the log at once.
    #[arg(long, env = "WHATSNAP_MAX_TAILS", default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..))]
    max_tails: u32,
    /// How many days back `assignment simulate` may decide again.
    #[arg(long, env = "WHATSNAP_MAX_SIMULATE_DAYS", default_value_t = 90, value_parser = clap::value_parser!(u32).range(1..))]
    max_simulate_days: u32,
    /// API calls one location may make per second, on average (each call that names a
    /// location counts against it).
    #[arg(long, env = "WHATSNAP_LOCATION_QUOTA", default_value = "50", value_parser = positive)]
    location_quota: f64,
    /// API calls one location may make at once, above its average.
    #[arg(long, env = "WHATSNAP_LOCATION_BURST", default_value_t = 200, value_parser = clap::value_parser!(u32).range(1..))]
    location_burst: u32,
}

fn positive(text: &str) -> Result<f64, String> {
    text.trim()
        .parse::<f64>()
        .ok()
        .filter(|n| n.is_finite() && *n > 0.0)
        .ok_or_else(|| format!("{text:?} is not a positive number"))
}

/// How whatsnap reaches GHL.
#[derive(Debug, Args)]
pub struct GhlArgs {
    /// The GHL API (LeadConnector).
    #[arg(long, env = "WHATSNAP_GHL_API_URL", default_value = whatsnap_ghl::client::DEFAULT_API_BASE)]
    ghl_api_url: String,
    /// The GHL marketplace, where the OAuth install page is.
    #[arg(long, env = "WHATSNAP_GHL_MARKETPLACE_URL", default_value = whatsnap_ghl::client::DEFAULT_MARKETPLACE_BASE)]
    ghl_marketplace_url: String,
    /// The marketplace app's client id (for OAuth installs).
    #[arg(long, env = "WHATSNAP_GHL_CLIENT_ID")]
    ghl_client_id: Option<String>,
    /// The marketplace app's client secret (for OAuth installs).
    #[arg(long, env = "WHATSNAP_GHL_CLIENT_SECRET", hide_env_values = true)]
    ghl_client_secret: Option<String>,
    /// Where GHL redirects after an install; default: <public-url>/oauth/callback.
    #[arg(long, env = "WHATSNAP_GHL_REDIRECT_URI")]
    ghl_redirect_uri: Option<String>,
    /// Accept OAuth redirects that carry no state: installs started in GHL's marketplace rather
    /// than by whatsnap (`whatsnap ghl install-url`, or Install in the dashboard). Off: only an
    /// install an agency admin started connects a location.
    #[arg(long, env = "WHATSNAP_GHL_INSTALLS_WITHOUT_STATE")]
    ghl_installs_without_state: bool,
    /// The Conversation Provider id the marketplace shows for the whatsnap app; sent with every
    /// message added to GHL.
    #[arg(long, env = "WHATSNAP_GHL_CONVERSATION_PROVIDER_ID")]
    ghl_conversation_provider_id: Option<String>,
    /// The marketplace app's id (`appId` in GHL's webhooks): webhooks that name another app
    /// are acknowledged and ignored. Unchecked when unset.
    #[arg(long, env = "WHATSNAP_GHL_APP_ID")]
    ghl_app_id: Option<String>,
    /// GHL webhooks without a timestamp, or whose timestamp is further than this from now, are
    /// refused, and a webhookId seen within it is not acted on twice (by any gateway replica:
    /// the ids are kept in the read database).
    #[arg(long, env = "WHATSNAP_GHL_WEBHOOK_MAX_AGE", default_value = "300", value_parser = seconds)]
    ghl_webhook_max_age: Duration,
    /// The longest pause between two tries of GHL work while GHL keeps failing.
    #[arg(long, env = "WHATSNAP_GHL_MAX_BACKOFF", default_value = "60", value_parser = seconds)]
    ghl_max_backoff: Duration,
    /// How often each connected location's GHL users are listed again (they are listed at
    /// once when a location connects).
    #[arg(long, env = "WHATSNAP_GHL_USERS_REFRESH", default_value = "600", value_parser = seconds)]
    ghl_users_refresh: Duration,
}

fn seconds(text: &str) -> Result<Duration, String> {
    text.trim()
        .parse::<f64>()
        .ok()
        .filter(|s| s.is_finite() && *s >= 0.0)
        .map(Duration::from_secs_f64)
        .ok_or_else(|| format!("{text:?} is not a number of seconds"))
}

fn tag_prefix(text: &str) -> Result<String, String> {
    let ok = !text.is_empty()
        && text.len() <= 40
        && text
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_');
    if ok {
        Ok(text.to_owned())
    } else {
        Err(format!(
            "{text:?}: a tag prefix has 1 to 40 lowercase letters, digits, '-' or '_'"
        ))
    }
}

/// How the gRPC API's calls are bounded: the limits given and each location's quota.
struct ApiLimits<'a> {
    args: &'a LimitArgs,
    quotas: whatsnap_rpc::quota::LocationQuotaLayer,
}

impl<'a> ApiLimits<'a> {
    /// Each location's quota is shared by every replica in `shared` (the distributed
    /// backend's PostgreSQL) when given, else kept in this process.
    async fn new(args: &'a LimitArgs, shared: Option<&ReadDb>) -> anyhow::Result<Self> {
        let quota = whatsnap_rpc::quota::Quota {
            per_second: args.location_quota,
            burst: args.location_burst,
        };
        let buckets: Arc<dyn whatsnap_rpc::quota::Quotas> = match shared {
            Some(db) => Arc::new(
                whatsnap_rpc::quota::SharedQuotas::open(db.clone(), quota)
                    .await
                    .context("creating the shared request quotas' table")?,
            ),
            None => Arc::new(whatsnap_rpc::quota::LocationQuotas::new(quota)),
        };
        let methods = whatsnap_rpc::quota::LocatedMethods::from_descriptor_sets(&[
            whatsnap_proto::FILE_DESCRIPTOR_SET,
        ])?;
        Ok(Self {
            args,
            quotas: whatsnap_rpc::quota::LocationQuotaLayer::new(buckets, methods),
        })
    }
}

struct Backend {
    store: Arc<dyn EventStore>,
    db: ReadDb,
    /// The contacts' keys' own connections to the read database: they are looked up while a
    /// projection holds one of `db`'s in its transaction, so sharing the pool could leave every
    /// connection waiting for another.
    keys_db: ReadDb,
    /// The projection runners' connections. Read models can be rebuilt from the log, so their
    /// commits do not wait for the disk (`synchronous = NORMAL` on SQLite,
    /// `synchronous_commit = off` on PostgreSQL): a power loss or a crash of the database
    /// server (not of whatsnap) may roll back their last ones together with their checkpoints,
    /// and the projections apply those events again. Everything else is synced as it commits.
    projections_db: ReadDb,
    /// What cannot be rebuilt from the log: WhatsApp's linked devices and the media store.
    /// Distributed: `db`'s pool; embedded: the log's file, beside the contacts' keys, never the
    /// read models' (which may be deleted and rebuilt).
    state_db: ReadDb,
    /// Distributed: the request quotas every replica shares, on connections of their own whose
    /// commits do not wait for the disk (a bucket lost in a database crash only refills early).
    /// Embedded: none, each location's bucket lives in the process.
    quotas_db: Option<ReadDb>,
    description: String,
}

/// The embedded backend's event log and what cannot be rebuilt from it (the contacts' keys,
/// WhatsApp's linked devices, the media store), in `--data-dir`.
pub const EMBEDDED_LOG: &str = "whatsnap.db";
/// The embedded backend's read models, in `--data-dir`: rebuilt from the log when missing.
pub const EMBEDDED_READ_MODELS: &str = "read-models.db";

async fn backend(args: &BackendArgs) -> anyhow::Result<Backend> {
    sqlx::any::install_default_drivers();
    match (&args.nats_url, &args.database_url) {
        (Some(nats_url), Some(database_url)) => {
            let mut config = JetStreamConfig::new(nats_url);
            config.stream_name = args.stream_name.clone();
            config.subject_prefix = args.subject_prefix.clone();
            config.replicas = args.replicas;
            config.catch_up = CatchUp {
                after: args.catch_up_after,
                page: args.catch_up_page,
                tail: args.tail_events,
                ..CatchUp::default()
            };
            config.auth = args.nats_auth.auth();
            let nats_url = without_password(nats_url);
            let store = JetStreamEventStore::connect(&config)
                .await
                .with_context(|| format!("event store on NATS {nats_url}"))?;
            let pool = |connections, setup: &'static str| {
                AnyPoolOptions::new()
                    .max_connections(connections)
                    .acquire_timeout(Duration::from_secs(10))
                    .after_connect(move |conn, _| {
                        Box::pin(async move {
                            if !setup.is_empty() {
                                sqlx::Executor::execute(conn, setup).await?;
                            }
                            Ok(())
                        })
                    })
                    .connect(database_url)
            };
            let sizes = PoolSizes::of(args.database_connections);
            let db = pool(sizes.db, "")
                .await
                .context("read models on PostgreSQL (--database-url)")?;
            let state_db = db.clone();
            let keys_db = pool(sizes.keys, "")
                .await
                .context("contacts' keys on PostgreSQL (--database-url)")?;
            let projections_db = pool(sizes.projections, "SET synchronous_commit = off")
                .await
                .context("read models on PostgreSQL (--database-url)")?;
            let quotas_db = pool(sizes.quotas, "SET synchronous_commit = off")
                .await
                .context("request quotas on PostgreSQL (--database-url)")?;
            Ok(Backend {
                store: Arc::new(store),
                db,
                projections_db,
                keys_db,
                state_db,
                quotas_db: Some(quotas_db),
                description: format!(
                    "distributed: events in JetStream stream {} at {nats_url}, read models in PostgreSQL",
                    config.stream_name
                ),
            })
        }
        (None, None) => {
            let path = std::path::absolute(args.data_dir.join(EMBEDDED_LOG))?;
            let config = SqliteConfig {
                tail: args.tail_events,
                ..SqliteConfig::new(&path)
            };
            let store = SqliteEventStore::open(&config)
                .await
                .with_context(|| format!("embedded event store at {}", path.display()))?;
            // The read models in a file of their own: its writers (the projections) do not
            // wait for the log's, nor the log's for them. What cannot be rebuilt (the contacts'
            // keys, WhatsApp's devices, the media) stays with the log.
            let read_path = std::path::absolute(args.data_dir.join(EMBEDDED_READ_MODELS))?;
            let pool = |file: &std::path::Path, connections, pragmas: &'static str| {
                let url = format!("sqlite://{}?mode=rwc", file.display());
                // Writers of one file take turns: a busy machine waits, never fails.
                async move {
                    AnyPoolOptions::new()
                        .max_connections(connections)
                        .after_connect(move |conn, _| {
                            Box::pin(async move {
                                sqlx::Executor::execute(conn, pragmas).await?;
                                Ok(())
                            })
                        })
                        .connect(&url)
                        .await
                }
            };
            let db = pool(
                &read_path,
                4,
                "PRAGMA busy_timeout = 30000; PRAGMA journal_mode = WAL",
            )
            .await
            .with_context(|| format!("read models in {}", read_path.display()))?;
            let projections_db = pool(
                &read_path,
                4,
                "PRAGMA busy_timeout = 30000; PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL",
            )
            .await
            .with_context(|| format!("read models in {}", read_path.display()))?;
            let keys_db = pool(&path, 2, "PRAGMA busy_timeout = 30000")
                .await
                .with_context(|| format!("contacts' keys in {}", path.display()))?;
            let state_db = pool(&path, 4, "PRAGMA busy_timeout = 30000")
                .await
                .with_context(|| format!("WhatsApp's devices and media in {}", path.display()))?;
            Ok(Backend {
                store: Arc::new(store),
                db,
                projections_db,
                keys_db,
                state_db,
                quotas_db: None,
                description: format!(
                    "embedded: events in SQLite file {}, read models in {}",
                    path.display(),
                    read_path.display()
                ),
            })
        }
        _ => bail!(
            "the distributed backend needs both --nats-url and --database-url (or neither, for the embedded one)"
        ),
    }
}

/// The keys of a process: the secret key where it keeps credentials (session, ghl-sync, and
/// the embedded setup), and the personal data key every service reads the log with.
struct Keys {
    secret: Option<whatsnap_secrets::SecretKey>,
    personal_data: whatsnap_secrets::SecretKey,
}

/// The keys given, or for the embedded setup the secret key kept in its key file.
fn keys(args: &ServeArgs) -> anyhow::Result<Keys> {
    use whatsnap_secrets::SecretKey;
    let distributed = args.backend.nats_url.is_some();
    let secret = match &args.secret_key {
        Some(text) => Some(SecretKey::from_base64(text).context("--secret-key")?),
        None if distributed => None,
        None => Some(embedded_secret_key(args)?),
    };
    let given = args
        .personal_data_key
        .as_deref()
        .map(SecretKey::personal_data_from_base64)
        .transpose()
        .context("--personal-data-key (WHATSNAP_PERSONAL_DATA_KEY)")?;
    let personal_data = match (&secret, given) {
        (Some(secret), Some(given)) if given.to_base64() != secret.personal_data().to_base64() => {
            bail!(
                "--personal-data-key is not the one derived from --secret-key: give one of them, \
                 or the key `whatsnap keys personal-data` prints"
            )
        }
        (Some(secret), _) => secret.personal_data(),
        (None, Some(given)) => given,
        (None, None) => bail!(
            "the distributed setup needs --personal-data-key (WHATSNAP_PERSONAL_DATA_KEY) for the \
             gateway, contacts and assignment targets, and --secret-key (WHATSNAP_SECRET_KEY) for \
             session and ghl-sync: the secret key is 32 random bytes, base64, the same for every \
             process (e.g. `openssl rand -base64 32`), and `whatsnap keys personal-data` prints the \
             personal data key derived from it"
        ),
    };
    let keeps_credentials = args
        .target
        .0
        .iter()
        .filter(|target| matches!(target, Target::Session | Target::GhlSync))
        .map(|target| target.name())
        .collect::<Vec<_>>();
    if secret.is_none() && !keeps_credentials.is_empty() {
        bail!(
            "the {} target{} keep{} the tenants' credentials sealed: give --secret-key \
             (WHATSNAP_SECRET_KEY), the same for every process that runs session or ghl-sync",
            keeps_credentials.join(" and "),
            if keeps_credentials.len() > 1 { "s" } else { "" },
            if keeps_credentials.len() > 1 { "" } else { "s" },
        );
    }
    Ok(Keys {
        secret,
        personal_data,
    })
}

/// The embedded setup's secret key, kept in its key file (created on the first start).
fn embedded_secret_key(args: &ServeArgs) -> anyhow::Result<whatsnap_secrets::SecretKey> {
    let path = secret_key_file(args);
    if path.starts_with(&args.backend.data_dir) {
        warn!(
            path = %path.display(),
            "the secret key file is in the data directory: one backup of it holds both the sealed \
             data and the key that opens it; move it (--secret-key-file) or give --secret-key"
        );
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("creating the directory of {}", path.display()))?;
    }
    whatsnap_secrets::SecretKey::load_or_create(&path)
        .with_context(|| format!("the secret key in {}", path.display()))
}

/// The embedded key file: as given; else the one an older whatsnap made in the data
/// directory; else in the user's configuration directory, away from the data.
fn secret_key_file(args: &ServeArgs) -> PathBuf {
    if let Some(path) = &args.secret_key_file {
        return path.clone();
    }
    let legacy = args.backend.data_dir.join("secret.key");
    if legacy.exists() {
        return legacy;
    }
    let config = std::env::var_os("XDG_CONFIG_HOME")
        .map(PathBuf::from)
        .filter(|p| p.is_absolute())
        .or_else(|| std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".config")));
    match config {
        Some(dir) => dir.join("whatsnap").join("secret.key"),
        None => legacy,
    }
}

/// Moves what the secret key sealed before whatsnap had a personal data key (the contacts'
/// keys, received files) under the personal data key, so that the processes given only that
/// key can open it. Nothing to do after the first start.
async fn reseal_personal_data(
    secret: &whatsnap_secrets::SecretKey,
    contact_keys: &whatsnap_pii::ContactKeys,
    media: Option<&whatsnap_media::MediaStore>,
) -> anyhow::Result<()> {
    let keys = contact_keys
        .reseal_from(secret)
        .await
        .context("re-sealing the contacts' keys under the personal data key")?;
    let files = match media {
        Some(media) => media
            .reseal_from(secret)
            .await
            .context("re-sealing received files under the personal data key")?,
        None => 0,
    };
    if keys + files > 0 {
        info!(
            contact_keys = keys,
            files, "re-sealed under the personal data key what the secret key sealed"
        );
    }
    Ok(())
}

/// Signs dashboard viewers in with their API tokens: the token's locations are the viewer's.
struct DashboardTokens(whatsnap_auth::Authenticator);

#[async_trait::async_trait]
impl whatsnap_dashboard::TokenSignIn for DashboardTokens {
    async fn viewer(&self, token: &str) -> Option<whatsnap_dashboard::Viewer> {
        use whatsnap_auth::{Locations, Role};
        let caller = self.0.caller(token).await.ok()?;
        if caller.role == Role::Service {
            return None;
        }
        let scope = match caller.locations {
            Locations::All => whatsnap_dashboard::Scope::All,
            Locations::Only(locations) => whatsnap_dashboard::Scope::Locations {
                ids: locations.iter().map(ToString::to_string).collect(),
            },
        };
        Some(whatsnap_dashboard::Viewer {
            name: format!(
                "{} token {}",
                caller.role,
                caller.token_id.as_deref().unwrap_or("")
            ),
            id: caller.token_id.unwrap_or_default(),
            scope,
            can_write: caller.role != Role::ReadOnly,
            expires_at: chrono::Utc::now() + whatsnap_dashboard::signin::LIFETIME,
        })
    }
}

/// A channel to a service: this process's own services, called in process, when it runs the
/// service here; else the URL it was given; else none. Its calls carry the service credential.
fn channel_to(
    local: bool,
    url: &Option<String>,
    in_process: &Transport,
    service_token: &ApiToken,
) -> anyhow::Result<Option<AuthedChannel>> {
    let token = Some(service_token.expose());
    Ok(match (local, url) {
        (true, _) => Some(whatsnap_auth::authed_in_process(in_process.clone(), token)),
        (false, Some(url)) => Some(whatsnap_auth::authed(
            Endpoint::from_shared(url.clone())?.connect_lazy(),
            token,
        )),
        (false, None) => None,
    })
}

/// Connects lazily: the other process may start after this one. Forwarded calls keep their
/// caller's token.
fn remote(
    url: &Option<String>,
    what: &str,
    service_token: &ApiToken,
) -> anyhow::Result<Option<Remote>> {
    url.as_ref()
        .map(|url| {
            let endpoint = Endpoint::from_shared(url.clone())
                .with_context(|| format!("--{what}-url {url}"))?
                .connect_timeout(Duration::from_secs(5));
            Ok(Remote::new(whatsnap_auth::authed(
                endpoint.connect_lazy(),
                Some(service_token.expose()),
            )))
        })
        .transpose()
}

/// The credential the services call each other with: given, derived from the personal data
/// key every process has, or for the embedded setup kept in the data directory.
fn service_token(args: &ServeArgs, keys: &Keys) -> anyhow::Result<ApiToken> {
    if let Some(text) = &args.service_token {
        return ApiToken::parse(text).context("--service-token (WHATSNAP_SERVICE_TOKEN)");
    }
    let shared_key = args.secret_key.is_some() || args.personal_data_key.is_some();
    if args.backend.nats_url.is_some() || shared_key {
        return Ok(ApiToken::derived(
            "whatsnap service token",
            &keys.personal_data.to_base64(),
        ));
    }
    let path = args
        .backend
        .data_dir
        .join(crate::tokens::SERVICE_TOKEN_FILE);
    crate::tokens::load_or_create(&path).map(|(token, _)| token)
}

/// Records the first admin token: the one given (a distributed deployment's Secret), or for the
/// embedded setup the one in <data-dir>/admin-token, created on the first start. Says where the
/// file is, never what it holds.
async fn first_admin_token(
    args: &ServeArgs,
    store: &dyn EventStore,
) -> anyhow::Result<Option<PathBuf>> {
    if let Some(text) = &args.admin_token {
        let token = ApiToken::parse(text).context("--admin-token (WHATSNAP_ADMIN_TOKEN)")?;
        crate::tokens::record_admin(store, &token).await?;
        return Ok(None);
    }
    if args.backend.nats_url.is_some() {
        return Ok(None);
    }
    let path = std::path::absolute(args.backend.data_dir.join(crate::tokens::ADMIN_TOKEN_FILE))?;
    let (token, created) = crate::tokens::load_or_create(&path)?;
    crate::tokens::record_admin(store, &token).await?;
    if created {
        info!(path = %path.display(), "first admin token written; the CLI reads it from there");
    }
    Ok(Some(path))
}

pub async fn run(mut args: ServeArgs) -> anyhow::Result<()> {
    // The demo's fakes and scratch data live as long as the process.
    let mut demo_data = None;
    let demo = match args.demo {
        true => {
            let demo = crate::demo::Demo::start().await?;
            args.twilio_base_url = demo.twilio.base_url();
            args.evolution_url = Some(demo.evolution.base_url());
            args.evolution_api_key =
                Some(whatsnap_fakes::evolution::FakeEvolution::GLOBAL_API_KEY.to_owned());
            args.ghl.ghl_api_url = demo.ghl.base_url();
            args.ghl_webhook_ed25519_key = demo.ghl.ed25519_public_key_pem();
            args.ghl.ghl_max_backoff = Duration::from_secs(2);
            if args.backend.nats_url.is_none() {
                let dir = tempfile::tempdir().context("a scratch directory for the demo")?;
                args.backend.data_dir = dir.path().to_owned();
                demo_data = Some(dir);
            }
            Some(Arc::new(demo))
        }
        false => None,
    };
    let targets = &args.target.0;
    let service_name = match targets.len() {
        5 => "whatsnap".to_owned(),
        _ => format!(
            "whatsnap-{}",
            targets
                .iter()
                .map(|t| t.name())
                .collect::<Vec<_>>()
                .join("-")
        ),
    };
    let _telemetry = whatsnap_telemetry::init(&service_name)?;
    let has = |target| targets.contains(&target);
    let backend = backend(&args.backend).await?;
    let (store, db) = (backend.store.clone(), backend.db.clone());
    let keys = keys(&args)?;
    let service_token = service_token(&args, &keys)?;
    let tls = match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => Some(Tls::load(cert, key)?),
        _ => None,
    };
    let admin_token_file = first_admin_token(&args, store.as_ref()).await?;
    let authorization = whatsnap_auth::Authorization::new(
        whatsnap_auth::policy::Policy::whatsnap()?,
        whatsnap_auth::Authenticator::new(store.clone(), Some(&service_token)),
    );

    // The gateway's address is known before the services are built: the session service
    // tells Twilio where to report delivery.
    let http_listener = match has(Target::Gateway) {
        true => Some(
            TcpListener::bind(args.http_addr)
                .await
                .with_context(|| format!("binding HTTP to {}", args.http_addr))?,
        ),
        false => None,
    };
    let public_url = match (&args.public_url, &http_listener) {
        (Some(url), _) => Some(url.trim_end_matches('/').to_owned()),
        (None, Some(listener)) => Some(format!(
            "{}://{}",
            if tls.is_some() { "https" } else { "http" },
            listener.local_addr()?
        )),
        (None, None) => None,
    };
    if has(Target::Session) && public_url.is_none() {
        warn!(
            "no --public-url: replies go out without a StatusCallback, so GHL never learns their delivery status"
        );
    }
    // Every service reads personal data, sealed per contact under keys the personal data key
    // seals.
    let contact_keys = Arc::new(
        whatsnap_pii::ContactKeys::open(backend.keys_db.clone(), keys.personal_data.clone())
            .await
            .context("opening the contacts' keys")?,
    );
    let store: Arc<dyn EventStore> =
        Arc::new(whatsnap_pii::SealingStore::new(store, contact_keys.clone()));
    // Files received with messages, kept by the session service and served by the gateway.
    let media = match has(Target::Session) || has(Target::Gateway) {
        true => Some(
            whatsnap_media::MediaStore::open(backend.state_db.clone(), keys.personal_data.clone())
                .await
                .context("opening the media store")?,
        ),
        false => None,
    };
    if let Some(secret) = &keys.secret {
        reseal_personal_data(secret, &contact_keys, media.as_ref()).await?;
    }
    let mut services = Services::build(
        &args,
        &store,
        &db,
        &backend.state_db,
        keys.secret.as_ref(),
        media.as_ref(),
        public_url.as_deref(),
    )
    .await?;
    services.contacts = services
        .contacts
        .map(|contacts| contacts.with_contact_keys(contact_keys.clone()));
    services.ghl_sync = services
        .ghl_sync
        .map(|ghl_sync| ghl_sync.with_contact_keys(contact_keys));
    let projections = services.projections();
    #[cfg(feature = "failpoints")]
    let projections = crate::failpoints::poison_projections(projections);
    // The gateway answers for the services that run elsewhere.
    let remotes = services.remotes(&args, &service_token)?;

    let shutdown = CancellationToken::new();
    let mut tasks = JoinSet::new();
    // Replicas share the work through leases in the read-model database; the embedded backend
    // is one process, which does all of it.
    let leases = match args.backend.database_url.is_some() {
        true => {
            let leases = Leases::open(
                db.clone(),
                &names_of(targets),
                replica_id(&args),
                args.lease_ttl,
            )
            .await
            .context("the leases' table")?;
            let heartbeat = leases.clone().heartbeat(shutdown.clone());
            tasks.spawn(async move {
                heartbeat.await;
                Ok(())
            });
            export_lease_metrics(leases.clone());
            Some(leases)
        }
        false => None,
    };
    let mut progress = run_projections(
        &store,
        &backend.projections_db,
        projections,
        args.projection_attempts,
        leases.as_ref(),
        &shutdown,
        &mut tasks,
    )
    .await?;
    let pending = progress
        .iter()
        .find(|follower| follower.name == "ghl_pending");
    match (
        services.ghl_sync.as_mut(),
        &args.backend.database_url,
        pending,
    ) {
        // Replicas: the GHL queue's read model may run on another one; its notifications say
        // when it moved.
        (Some(ghl_sync), Some(url), _) => ghl_sync.hears_queue_moves(url),
        (Some(ghl_sync), None, Some(pending)) => {
            ghl_sync.queue_moves_with(pending.position.clone())
        }
        _ => {}
    }
    if let (Some(ghl_sync), Some(leases)) = (services.ghl_sync.as_mut(), &leases) {
        ghl_sync.share_tokens_with(leases.clone());
    }
    if let Some(assignment) = &services.assignment {
        progress.push(Follower {
            name: "assignment_decider".to_owned(),
            lease: "workers:assignment".to_owned(),
            position: assignment.decided_through(),
        });
    }

    let limits = ApiLimits::new(&args.limits, backend.quotas_db.as_ref()).await?;
    let (router, in_process) = services
        .grpc_router(
            remotes,
            store.clone(),
            db.clone(),
            limits,
            authorization,
            tls.as_ref(),
        )
        .await?;
    let ghl_parts = match leases {
        Some(_) => args.ghl_parts,
        None => 1,
    };
    let gateway = services.run_until_stopped(&mut tasks, leases.as_ref(), ghl_parts, &shutdown);
    let readiness = Readiness {
        store: store.clone(),
        projections: progress.clone(),
        leases: leases.clone(),
    };
    readiness.export_metrics();
    export_parked_metrics(db.clone());
    if has(Target::GhlSync) {
        whatsnap_ghl_sync::worker::export_metrics(db.clone());
    }
    let scrapers = whatsnap_auth::Authenticator::new(store.clone(), Some(&service_token));
    let metrics_for = |assignment| whatsnap_gateway::MetricsConfig {
        tokens: scrapers.clone(),
        assignment,
    };

    let grpc_listener = TcpListener::bind(args.grpc_addr)
        .await
        .with_context(|| format!("binding gRPC to {}", args.grpc_addr))?;
    let grpc_addr = grpc_listener.local_addr()?;
    let stop = shutdown.clone();
    tasks.spawn(async move {
        router
            .serve_with_incoming_shutdown(
                tokio_stream::wrappers::TcpListenerStream::new(grpc_listener),
                stop.cancelled_owned(),
            )
            .await
            .context("gRPC server")
    });

    let names: Vec<_> = targets.iter().map(|t| t.name()).collect();
    // Where it listens goes to stdout, for people and for scripts that start it.
    let mut out = format!(
        "whatsnap {} serving {}\nbackend: {}\ngRPC listening on {grpc_addr}\n",
        env!("CARGO_PKG_VERSION"),
        names.join(","),
        backend.description
    );
    if tls.is_some() {
        out.push_str("TLS: gRPC and HTTP\n");
    }
    if let Some(path) = &admin_token_file {
        out.push_str(&format!(
            "admin token in {} (the CLI reads it from there; see `whatsnap tokens --help`)\n",
            path.display()
        ));
    }
    if let Some(http_listener) = http_listener {
        let http_addr = http_listener.local_addr()?;
        // Webhooks become commands to the session service: this process's own, or the one
        // the gateway forwards to.
        let to = |local, url| channel_to(local, url, &in_process, &service_token);
        let session_channel = to(has(Target::Session), &args.session_url)?;
        let contacts_channel = to(has(Target::Contacts), &args.contacts_url)?;
        let ghl_sync_channel = to(has(Target::GhlSync), &args.ghl_sync_url)?;
        let assignment_channel = to(has(Target::Assignment), &args.assignment_url)?;
        let ghl_keys = whatsnap_ghl::signature::WebhookKeys::from_pem(
            &args.ghl_webhook_ed25519_key,
            &args.ghl_webhook_rsa_key,
        )?;
        let http = whatsnap_gateway::HttpConfig {
            readiness: readiness.clone(),
            webhooks: whatsnap_gateway::Webhooks {
                public_url: public_url.clone(),
                session: session_channel,
                ghl_keys,
                contacts: contacts_channel,
                ghl_sync: ghl_sync_channel,
                replay: whatsnap_gateway::ReplayGuard::open(
                    db.clone(),
                    args.ghl.ghl_webhook_max_age,
                )
                .await
                .context("the GHL webhook replay guard's table")?,
                ghl_app: whatsnap_ghl::webhook::AppIdentity {
                    app_id: args.ghl.ghl_app_id.clone(),
                    conversation_provider_id: args.ghl.ghl_conversation_provider_id.clone(),
                },
                media: media.clone(),
            },
            metrics: metrics_for(assignment_channel),
            limits: whatsnap_gateway::HttpLimits {
                timeout: args.limits.http_timeout,
                concurrency: args.limits.http_concurrency as usize,
            },
            pages: whatsnap_dashboard::routes(whatsnap_dashboard::Dashboard::new(
                whatsnap_dashboard::DashboardConfig {
                    shared_secret: args
                        .ghl_shared_secret
                        .clone()
                        .map(whatsnap_dashboard::SharedSecret::new),
                    cookie_key: keys.personal_data.derive("dashboard cookies"),
                    secure_cookies: public_url
                        .as_deref()
                        .is_some_and(|url| url.starts_with("https://")),
                    tokens: Some(std::sync::Arc::new(DashboardTokens(
                        whatsnap_auth::Authenticator::new(store.clone(), Some(&service_token)),
                    ))),
                    shutdown: shutdown.clone(),
                },
                in_process.clone(),
                Some(service_token.expose().to_owned()),
            )),
        };
        let gateway = gateway.expect("the gateway runs where HTTP is served");
        let stop = shutdown.clone();
        match &tls {
            Some(tls) => {
                let listener = tls.http_listener(http_listener);
                tasks.spawn(async move {
                    gateway
                        .run_until_stopped(listener, http, stop)
                        .await
                        .context("HTTP server")
                });
            }
            None => {
                tasks.spawn(async move {
                    gateway
                        .run_until_stopped(http_listener, http, stop)
                        .await
                        .context("HTTP server")
                });
            }
        }
        out.push_str(&format!(
            "HTTP listening on {http_addr} (/app, /healthz, /readyz, /metrics)\n"
        ));
        if let Some(demo) = demo.clone() {
            if targets.len() != Target::ALL.len() {
                bail!("--demo runs every service in one process: leave out --target");
            }
            out.push_str(&format!(
                "demo: fake GHL at {}, fake Twilio at {}, fake Evolution API at {}\n",
                demo.ghl.base_url(),
                demo.twilio.base_url(),
                demo.evolution.base_url()
            ));
            let token = service_token.clone();
            tokio::spawn(async move {
                if let Err(err) = demo.play(grpc_addr, http_addr, &token).await {
                    error!(error = format!("{err:#}"), "the demo stopped");
                }
            });
        }
    }
    if let Some(metrics_addr) = args.metrics_addr {
        let listener = TcpListener::bind(metrics_addr)
            .await
            .with_context(|| format!("binding the metrics address {metrics_addr}"))?;
        let metrics_addr = listener.local_addr()?;
        let assignment = channel_to(has(Target::Assignment), &None, &in_process, &service_token)?;
        let routes = whatsnap_gateway::router(readiness.clone())
            .merge(whatsnap_gateway::metrics_routes(metrics_for(assignment)));
        let stop = shutdown.clone();
        match &tls {
            Some(tls) => {
                let listener = tls.http_listener(listener);
                tasks.spawn(async move {
                    axum::serve(listener, routes)
                        .with_graceful_shutdown(stop.cancelled_owned())
                        .await
                        .context("metrics HTTP server")
                });
            }
            None => {
                tasks.spawn(async move {
                    axum::serve(listener, routes)
                        .with_graceful_shutdown(stop.cancelled_owned())
                        .await
                        .context("metrics HTTP server")
                });
            }
        }
        out.push_str(&format!(
            "metrics listening on {metrics_addr} (/healthz, /readyz, /metrics)\n"
        ));
    }
    {
        use std::io::Write;
        let mut stdout = std::io::stdout().lock();
        stdout.write_all(out.as_bytes())?;
        stdout.flush()?;
    }
    info!(targets = %names.join(","), %grpc_addr, backend = %backend.description, "whatsnap started");

    let stop = shutdown.clone();
    tokio::spawn(async move {
        wait_for_signal().await;
        info!("shutting down: draining in-flight work");
        stop.cancel();
    });

    let mut failure = None;
    while let Some(joined) = tasks.join_next().await {
        let result = joined.context("task panicked").and_then(|r| r);
        if let Err(err) = result {
            error!(error = format!("{err:#}"), "stopping");
            failure.get_or_insert(err);
            shutdown.cancel();
        }
    }
    backend.projections_db.close().await;
    backend.db.close().await;
    drop(demo_data);
    match failure {
        Some(err) => Err(err),
        None => {
            info!("stopped cleanly");
            Ok(())
        }
    }
}

/// This process's gRPC services as its own clients reach them (the gateway's webhooks calling
/// the session service of `--target all`, say): the server's layers, its span and its deadline,
/// without a connection or HTTP/2 between.
fn in_process(layers: CallLayers, routes: tonic::service::Routes, timeout: Duration) -> Transport {
    Transport::new(tower::service_fn(
        move |request: axum::http::Request<tonic::body::Body>| {
            let span = whatsnap_telemetry::grpc_span(&request);
            // A concurrency limit's service holds its wait for a turn, so each call gets its own
            // (sharing the one semaphore of `layers`).
            let served = tower::Layer::layer(&layers, routes.clone());
            let call = served.oneshot(request).instrument(span);
            async move {
                match tokio::time::timeout(timeout, call).await {
                    Ok(Ok(response)) => Ok::<_, tonic::transport::Error>(response),
                    Ok(Err(never)) => match never {},
                    Err(_) => Ok(tonic::Status::deadline_exceeded(format!(
                        "not answered within --grpc-timeout ({timeout:?})"
                    ))
                    .into_http()),
                }
            }
        },
    ))
}

/// The layers every gRPC call of the process passes: a turn among `--grpc-concurrency`, then
/// its location's quota.
type CallLayers = tower::layer::util::Stack<
    whatsnap_rpc::quota::LocationQuotaLayer,
    tower::layer::util::Stack<
        whatsnap_auth::Authorization,
        tower::layer::util::Stack<
            tower::limit::GlobalConcurrencyLimitLayer,
            tower::layer::util::Identity,
        >,
    >,
>;

/// [`CallLayers`] as the gRPC server holds them.
type GrpcLayers = tower::layer::util::Stack<CallLayers, tower::layer::util::Identity>;

/// The services this process runs, each its crate's `Application`.
struct Services {
    session: Option<whatsnap_session::Application>,
    contacts: Option<whatsnap_contacts::Application>,
    assignment: Option<whatsnap_assignment::Application>,
    ghl_sync: Option<whatsnap_ghl_sync::Application>,
    gateway: Option<whatsnap_gateway::Application>,
}

/// The services the gateway forwards to, where they run in other processes.
#[derive(Default)]
struct Remotes {
    session: Option<Remote>,
    contacts: Option<Remote>,
    assignment: Option<Remote>,
    ghl_sync: Option<Remote>,
}

impl Services {
    /// The services of the chosen targets; those that seal credentials are built only with a
    /// key.
    async fn build(
        args: &ServeArgs,
        store: &Arc<dyn EventStore>,
        db: &ReadDb,
        state_db: &ReadDb,
        secret_key: Option<&whatsnap_secrets::SecretKey>,
        media: Option<&whatsnap_media::MediaStore>,
        public_url: Option<&str>,
    ) -> anyhow::Result<Self> {
        let has = |target| args.target.0.contains(&target);
        let connectors = match (has(Target::Session), secret_key) {
            (true, Some(key)) => {
                Some(connectors(args, public_url.map(str::to_owned), state_db, key).await?)
            }
            _ => None,
        };
        Ok(Self {
            session: match (connectors, secret_key) {
                (Some(connectors), Some(key)) => Some(whatsnap_session::Application::build(
                    store.clone(),
                    db.clone(),
                    whatsnap_session::SessionConfig {
                        secret_key: key.clone(),
                        connectors,
                        max_accounts_per_location: args.max_accounts_per_location,
                        tag_prefix: args.tag_prefix.clone(),
                        media: media.cloned().zip(public_url.map(str::to_owned)),
                        alert_webhook_url: args.alert_webhook_url.clone(),
                        receipt_patience: args.receipt_patience,
                        send_patience: args.send_patience,
                    },
                )),
                _ => None,
            },
            contacts: has(Target::Contacts).then(|| {
                whatsnap_contacts::Application::build(store.clone(), db.clone()).with_parts(
                    match args.backend.database_url {
                        Some(_) => args.contact_parts,
                        None => 1,
                    },
                )
            }),
            assignment: has(Target::Assignment).then(|| {
                whatsnap_assignment::Application::build(store.clone(), db.clone())
                    .max_simulate_window(Duration::from_secs(
                        u64::from(args.limits.max_simulate_days) * 86_400,
                    ))
            }),
            ghl_sync: match (has(Target::GhlSync), secret_key) {
                (true, Some(key)) => Some(
                    whatsnap_ghl_sync::Application::build(
                        store.clone(),
                        db.clone(),
                        Some(ghl_worker(&args.ghl, key, public_url)),
                    )
                    .with_installs_without_state(args.ghl.ghl_installs_without_state),
                ),
                _ => None,
            },
            gateway: has(Target::Gateway).then(|| {
                whatsnap_gateway::Application::with_limits(
                    store.clone(),
                    db.clone(),
                    whatsnap_gateway::ApiLimits {
                        max_page: args.limits.max_page as usize,
                        max_tails: args.limits.max_tails as usize,
                    },
                )
            }),
        })
    }

    /// Every read model of the services, in the order they are prepared.
    fn projections(&self) -> Vec<Arc<dyn Projection<sqlx::Any>>> {
        [
            self.session.as_ref().map(|s| s.projections()),
            self.contacts.as_ref().map(|s| s.projections()),
            self.assignment.as_ref().map(|s| s.projections()),
            self.ghl_sync.as_ref().map(|s| s.projections()),
            self.gateway.as_ref().map(|s| s.projections()),
            // Listed where the API's front door is.
            self.gateway.as_ref().map(|_| {
                vec![Arc::new(crate::tokens::TokensProjection) as Arc<dyn Projection<sqlx::Any>>]
            }),
        ]
        .into_iter()
        .flatten()
        .flatten()
        .collect()
    }

    /// Where the gateway forwards the APIs of the services not run here; a warning for each
    /// it cannot answer.
    fn remotes(&self, args: &ServeArgs, service_token: &ApiToken) -> anyhow::Result<Remotes> {
        let mut remotes = Remotes::default();
        if self.gateway.is_none() {
            return Ok(remotes);
        }
        if self.session.is_none() {
            remotes.session = remote(&args.session_url, "session", service_token)?;
        }
        if self.contacts.is_none() {
            remotes.contacts = remote(&args.contacts_url, "contacts", service_token)?;
        }
        if self.assignment.is_none() {
            remotes.assignment = remote(&args.assignment_url, "assignment", service_token)?;
        }
        if self.ghl_sync.is_none() {
            remotes.ghl_sync = remote(&args.ghl_sync_url, "ghl-sync", service_token)?;
        }
        for (target, local, remote) in [
            (
                Target::Session,
                self.session.is_some(),
                remotes.session.is_some(),
            ),
            (
                Target::Contacts,
                self.contacts.is_some(),
                remotes.contacts.is_some(),
            ),
            (
                Target::Assignment,
                self.assignment.is_some(),
                remotes.assignment.is_some(),
            ),
            (
                Target::GhlSync,
                self.ghl_sync.is_some(),
                remotes.ghl_sync.is_some(),
            ),
        ] {
            if !local && !remote {
                warn!(%target, "not run here and no --{target}-url given: the gateway will not answer its API");
            }
        }
        Ok(remotes)
    }

    /// The process's gRPC server: the APIs of the services run here and of those forwarded
    /// to, with health, reflection and the operator API; and the same services behind the same
    /// layers for this process's own calls.
    async fn grpc_router(
        &self,
        remotes: Remotes,
        store: Arc<dyn EventStore>,
        db: ReadDb,
        limits: ApiLimits<'_>,
        authorization: whatsnap_auth::Authorization,
        tls: Option<&Tls>,
    ) -> anyhow::Result<(tonic::transport::server::Router<GrpcLayers>, Transport)> {
        let (health_reporter, health_service) = tonic_health::server::health_reporter();
        let reflection = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(whatsnap_proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .build_v1()?;
        if self.session.is_some() || remotes.session.is_some() {
            health_reporter
                .set_serving::<SessionServiceServer<whatsnap_session::Session>>()
                .await;
        }
        if self.contacts.is_some() || remotes.contacts.is_some() {
            health_reporter
                .set_serving::<ContactsServiceServer<whatsnap_contacts::Contacts>>()
                .await;
        }
        if self.assignment.is_some() || remotes.assignment.is_some() {
            health_reporter
                .set_serving::<AssignmentServiceServer<whatsnap_assignment::Assignment>>()
                .await;
        }
        if self.ghl_sync.is_some() || remotes.ghl_sync.is_some() {
            health_reporter
                .set_serving::<GhlSyncServiceServer<whatsnap_ghl_sync::GhlSync>>()
                .await;
        }
        let ApiLimits {
            args: limits,
            quotas,
        } = limits;
        let mut routes = tonic::service::Routes::builder();
        routes
            .add_service(health_service)
            .add_service(reflection)
            .add_service(crate::tokens::Tokens::new(store.clone(), db.clone()).grpc())
            .add_service(crate::operations::Operations::new(store, db).grpc());
        if let Some(session) = &self.session {
            routes.add_service(session.grpc());
        }
        if let Some(remote) = remotes.session {
            routes.add_service(SessionServiceServer::new(remote));
        }
        if let Some(contacts) = &self.contacts {
            routes.add_service(contacts.grpc());
        }
        if let Some(remote) = remotes.contacts {
            routes.add_service(ContactsServiceServer::new(remote));
        }
        if let Some(assignment) = &self.assignment {
            routes.add_service(assignment.grpc());
        }
        if let Some(remote) = remotes.assignment {
            routes.add_service(AssignmentServiceServer::new(remote));
        }
        if let Some(ghl_sync) = &self.ghl_sync {
            routes.add_service(ghl_sync.grpc());
        }
        if let Some(remote) = remotes.ghl_sync {
            routes.add_service(GhlSyncServiceServer::new(remote));
        }
        if let Some(gateway) = &self.gateway {
            routes.add_service(gateway.events_grpc());
        }
        let routes = routes.routes();
        let layers = tower::ServiceBuilder::new()
            .layer(tower::limit::GlobalConcurrencyLimitLayer::new(
                limits.grpc_concurrency as usize,
            ))
            .layer(authorization)
            .layer(quotas)
            .into_inner();
        let in_process = in_process(
            layers.clone(),
            routes.clone().prepare(),
            limits.grpc_timeout,
        );
        let mut server = Server::builder();
        if let Some(tls) = tls {
            server = server.tls_config(tls.grpc_server())?;
        }
        let router = server
            .timeout(limits.grpc_timeout)
            .layer(layers)
            .trace_fn(whatsnap_telemetry::grpc_span)
            .add_routes(routes);
        Ok((router, in_process))
    }

    /// Runs each service's workers in a task of `tasks` until `shutdown`; the gateway, whose
    /// HTTP server starts once the gRPC server listens.
    /// With `leases`, each service's workers run on one replica at a time; the followers that
    /// keep the session's accounts and the contacts stage's contacts current run on every
    /// replica, beside them.
    fn run_until_stopped(
        self,
        tasks: &mut JoinSet<anyhow::Result<()>>,
        leases: Option<&Arc<Leases<sqlx::Any>>>,
        ghl_parts: u32,
        shutdown: &CancellationToken,
    ) -> Option<whatsnap_gateway::Application> {
        if let Some(assignment) = self.assignment {
            let assignment = Arc::new(assignment);
            tasks.spawn(under_lease(
                leases,
                "workers:assignment",
                shutdown,
                move |stop| {
                    let assignment = assignment.clone();
                    async move { assignment.run_until_stopped(stop).await }
                },
            ));
        }
        if let Some(session) = self.session {
            let session = Arc::new(session);
            let follower = session.clone();
            let stop = shutdown.clone();
            tasks.spawn(async move {
                follower.follow_accounts(stop).await;
                Ok(())
            });
            tasks.spawn(under_lease(
                leases,
                "workers:session",
                shutdown,
                move |stop| {
                    let session = session.clone();
                    async move { session.run_until_stopped(stop).await }
                },
            ));
        }
        if let Some(contacts) = self.contacts {
            let stop = shutdown.clone();
            tasks.spawn(async move {
                contacts.follow_contacts(stop).await;
                Ok(())
            });
        }
        if let Some(ghl_sync) = self.ghl_sync {
            // The GHL work split by location: each part on one replica at a time, and never
            // beside replicas that split it otherwise (a change of `--ghl-parts`, an upgrade
            // from the work whole), which could talk to GHL for the same location at once.
            let ghl_sync = Arc::new(ghl_sync);
            for part in Part::all(ghl_parts) {
                let (ghl_sync, gate) = (ghl_sync.clone(), leases.cloned());
                let split = (part.count() > 1).then(|| GHL_WORK.to_owned());
                tasks.spawn(under_fenced_lease(
                    leases,
                    split,
                    part.name(GHL_WORK),
                    shutdown,
                    move |_, stop| {
                        let (ghl_sync, gate) = (ghl_sync.clone(), gate.clone());
                        async move {
                            if let Some(gate) = gate
                                && !gate.wait_for_other_counts(GHL_WORK, part, &stop).await
                            {
                                return;
                            }
                            ghl_sync.run_until_stopped(part, stop).await
                        }
                    },
                ));
            }
        }
        self.gateway
    }
}

/// Prepares every read model of the process (their tables exist before the first query can
/// arrive) and runs each projection in its own task until `shutdown`; the position each has
/// reached, by name, for `/readyz`.
async fn run_projections(
    store: &Arc<dyn EventStore>,
    db: &ReadDb,
    projections: Vec<Arc<dyn Projection<sqlx::Any>>>,
    attempts: u32,
    leases: Option<&Arc<Leases<sqlx::Any>>>,
    shutdown: &CancellationToken,
    tasks: &mut JoinSet<anyhow::Result<()>>,
) -> anyhow::Result<Vec<Follower>> {
    // Every read model prepared before any runs: a projection that starts where others are
    // (`Projection::starts_where`) sees their checkpoints as the last run left them.
    let mut runners = Vec::new();
    for projection in projections {
        let name = projection.name().to_owned();
        let runner = ProjectionRunner::new(store.clone(), db.clone(), projection)
            .attempts(attempts)
            .instrument(whatsnap_telemetry::event_span);
        // Read-model tables exist before the first query can arrive. Services starting together
        // on one PostgreSQL may race to create the shared checkpoint table: try again.
        let mut attempt = 1;
        while let Err(err) = runner.prepare().await {
            if attempt == 5 {
                return Err(err).with_context(|| format!("migrating the read model of {name}"));
            }
            warn!(projection = %name, attempt, error = %err, "read model migration failed; retrying");
            tokio::time::sleep(Duration::from_millis(200 * attempt)).await;
            attempt += 1;
        }
        runners.push((name, runner));
    }
    let mut progress = Vec::new();
    for (name, runner) in runners {
        let lease = format!("projection:{name}");
        let split = Part::split_of(&name).map(|split| format!("projection:{split}"));
        progress.push(Follower {
            name: name.clone(),
            lease: lease.clone(),
            position: runner.progress(),
        });
        let runner = Arc::new(runner);
        let ttl = leases.map(|l| l.ttl());
        // A projection that ends, by an error or a panic, leaves its read model behind the log
        // (/readyz shows its lag grow) but must not take the gateway and the other services
        // with it.
        tasks.spawn(under_fenced_lease(leases, split, lease, shutdown, move |fence, stop| {
            let (runner, name) = (runner.clone(), name.clone());
            async move {
                if let (Some(fence), Some(ttl)) = (fence, ttl) {
                    runner.fence(fence, ttl);
                }
                let run = tokio::spawn(async move { runner.run_until(stop.cancelled_owned()).await });
                match run.await {
                    Ok(Ok(())) => {}
                    Ok(Err(err)) => error!(
                        projection = %name,
                        error = %err,
                        "projection stopped for good: its read model no longer follows the log; the other services keep running"
                    ),
                    Err(err) => error!(
                        projection = %name,
                        error = %err,
                        "projection panicked: its read model no longer follows the log; the other services keep running"
                    ),
                }
            }
        }));
    }

    Ok(progress)
}

/// Runs `work` until `shutdown` — on this replica only while it holds the lease `name`, when
/// replicas share the work through `leases`.
fn under_lease<F, Fut>(
    leases: Option<&Arc<Leases<sqlx::Any>>>,
    name: &str,
    shutdown: &CancellationToken,
    work: F,
) -> impl Future<Output = anyhow::Result<()>> + Send + 'static
where
    F: Fn(CancellationToken) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    under_fenced_lease(leases, None, name.to_owned(), shutdown, move |_, stop| {
        work(stop)
    })
}

/// As [`under_lease`], giving `work` the lease's fence when there is one; a part of the split
/// `split` is spread over the replicas with the split's other parts.
fn under_fenced_lease<F, Fut>(
    leases: Option<&Arc<Leases<sqlx::Any>>>,
    split: Option<String>,
    name: String,
    shutdown: &CancellationToken,
    work: F,
) -> impl Future<Output = anyhow::Result<()>> + Send + 'static
where
    F: Fn(Option<Fence>, CancellationToken) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let leases = leases.cloned();
    let shutdown = shutdown.clone();
    async move {
        match leases {
            Some(leases) => {
                leases
                    .hold_part(split, name, shutdown, move |fence, stop| {
                        work(Some(fence), stop)
                    })
                    .await
            }
            None => work(None, shutdown).await,
        }
        Ok(())
    }
}

/// The GHL work's lease, or the name its parts' leases are made from (see `--ghl-parts`).
const GHL_WORK: &str = "workers:ghl-sync";

/// The targets a process serves, as one name: replicas with the same share their work.
fn names_of<'a>(targets: impl IntoIterator<Item = &'a Target>) -> String {
    targets
        .into_iter()
        .map(|t| t.name())
        .collect::<Vec<_>>()
        .join(",")
}

/// This replica's name in the leases.
fn replica_id(args: &ServeArgs) -> String {
    args.replica_id.clone().unwrap_or_else(|| {
        let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "whatsnap".to_owned());
        let suffix = uuid::Uuid::new_v4().simple().to_string();
        format!("{host}-{}-{}", std::process::id(), &suffix[..6])
    })
}

/// Puts which leases this replica holds on `/metrics`.
fn export_lease_metrics(leases: Arc<Leases<sqlx::Any>>) {
    whatsnap_telemetry::metrics::collect(move || {
        let held = leases.held();
        std::future::ready(
            held.into_iter()
                .map(|lease| {
                    whatsnap_telemetry::metrics::Sample::gauge(
                        "whatsnap_lease_held",
                        "The work this replica does now: each lease it holds (a projection or a service's workers).",
                        vec![("lease", lease)],
                        1.0,
                    )
                })
                .collect::<Vec<_>>(),
        )
    });
}

/// The ghl-sync worker's configuration: the GHL client, and what seals tokens.
fn ghl_worker(
    ghl: &GhlArgs,
    key: &whatsnap_secrets::SecretKey,
    public_url: Option<&str>,
) -> whatsnap_ghl_sync::WorkerConfig {
    let client = whatsnap_ghl::client::GhlClient::new(
        whatsnap_ghl::client::GhlConfig {
            api_base: ghl.ghl_api_url.trim_end_matches('/').to_owned(),
            marketplace_base: ghl.ghl_marketplace_url.trim_end_matches('/').to_owned(),
            client_id: ghl.ghl_client_id.clone(),
            client_secret: ghl.ghl_client_secret.clone(),
            redirect_uri: ghl
                .ghl_redirect_uri
                .clone()
                .or_else(|| public_url.map(|u| format!("{u}/oauth/callback"))),
            ..whatsnap_ghl::client::GhlConfig::default()
        },
        ghl_limiter(),
    );
    let mut worker = whatsnap_ghl_sync::WorkerConfig::new(client, key.clone());
    worker.conversation_provider_id = ghl.ghl_conversation_provider_id.clone();
    worker.app_id = ghl.ghl_app_id.clone();
    worker.max_backoff = ghl.ghl_max_backoff;
    worker.users_refresh = ghl.ghl_users_refresh;
    worker
}

async fn wait_for_signal() {
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(err) => {
                warn!(error = %err, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        () = terminate => {}
    }
}

/// Every read model, by the name its checkpoint is kept under.
fn every_projection(
    store: &Arc<dyn EventStore>,
    db: &ReadDb,
) -> Vec<Arc<dyn Projection<sqlx::Any>>> {
    let mut every: Vec<Arc<dyn Projection<sqlx::Any>>> = vec![
        Arc::new(whatsnap_session::AccountsProjection),
        // Both queues rebuild to what they held: a reply or an alert already sent left its
        // queue by an event, and one in flight is reconciled by the outbox before it is sent
        // again; alerts older than an hour alert nobody.
        Arc::new(whatsnap_session::OutboundQueue),
        Arc::new(whatsnap_session::AlertQueue),
        whatsnap_contacts::Contacts::new(store.clone(), db.clone()).projection(),
        whatsnap_assignment::Assignment::new(store.clone(), db.clone()).projection(),
        whatsnap_ghl_sync::GhlSync::new(store.clone(), db.clone()).projection(),
    ];
    every.extend(whatsnap_gateway::Gateway::new(store.clone(), db.clone()).projections());
    every.push(Arc::new(crate::tokens::TokensProjection));
    every
}

#[derive(Debug, Args)]
pub struct RebuildArgs {
    /// The read model to rebuild (session_accounts, outbound_queue, session_alerts, contacts,
    /// assignment, ghl_pending, contact_timeline, traffic, api_tokens), or `all`.
    projection: String,
    #[command(flatten)]
    backend: BackendArgs,
}

/// `whatsnap rebuild`: empties a read model and its checkpoint, so that the service replays the
/// whole log into it when it next starts. Stop the service that owns it first.
#[allow(clippy::print_stdout)]
pub async fn rebuild(args: RebuildArgs) -> anyhow::Result<()> {
    let backend = backend(&args.backend).await?;
    let all = every_projection(&backend.store, &backend.db);
    let names: Vec<String> = all.iter().map(|p| p.name().to_owned()).collect();
    let chosen: Vec<_> = all
        .into_iter()
        .filter(|p| args.projection == "all" || p.name() == args.projection)
        .collect();
    if chosen.is_empty() {
        bail!(
            "no read model named {:?}: use all or one of {}",
            args.projection,
            names.join(", ")
        );
    }
    for projection in chosen {
        let name = projection.name().to_owned();
        ProjectionRunner::new(
            backend.store.clone(),
            backend.projections_db.clone(),
            projection,
        )
        .rebuild()
        .await
        .with_context(|| format!("rebuilding {name}"))?;
        println!("{name}: emptied; it replays the whole log when its service next starts");
    }
    backend.projections_db.close().await;
    backend.db.close().await;
    Ok(())
}

/// The account kinds this deployment connects, each through its connector.
async fn connectors(
    args: &ServeArgs,
    public_url: Option<String>,
    db: &ReadDb,
    secret_key: &whatsnap_secrets::SecretKey,
) -> anyhow::Result<whatsnap_connector::Connectors> {
    let twilio = whatsnap_twilio::TwilioConnector::new(
        whatsnap_twilio::TwilioClient::with_timeout(&args.twilio_base_url, args.twilio_timeout)?,
        public_url.clone(),
    );
    // WhatsApp in process: its linked devices live with what cannot be rebuilt, sealed.
    let embedded = whatsnap_whatsapp::EmbeddedConnector::new(
        db.clone(),
        secret_key.clone(),
        whatsnap_whatsapp::EmbeddedConfig::default(),
    )
    .await
    .context("starting the embedded WhatsApp engine")?;
    // The official WhatsApp Cloud API: a second engine of WhatsApp accounts, never the default.
    let cloud = whatsnap_cloudapi::CloudConnector::new(
        whatsnap_cloudapi::CloudConfig {
            graph_url: args.cloud_graph_url.clone(),
            version: args.cloud_graph_version.clone(),
            timeout: args.cloud_timeout,
        },
        public_url.clone(),
    )
    .map_err(|e| anyhow!("the Graph API at {}: {e}", args.cloud_graph_url))?;
    let mut connectors = whatsnap_connector::Connectors::default()
        .with(std::sync::Arc::new(twilio))
        .with(std::sync::Arc::new(embedded))
        .with(std::sync::Arc::new(cloud));
    if let Some(url) = &args.evolution_url {
        let Some(key) = &args.evolution_api_key else {
            bail!("--evolution-url needs --evolution-api-key (WHATSNAP_EVOLUTION_API_KEY)");
        };
        let Some(public) = &public_url else {
            bail!("--evolution-url needs --public-url: Evolution posts its webhooks there");
        };
        let mut config = whatsnap_evolution::EvolutionConfig::new(url, key, public);
        config.webhook_jwt_key = args.evolution_webhook_jwt_key.clone();
        let evolution = whatsnap_evolution::EvolutionConnector::new(config)
            .map_err(|e| anyhow!("the Evolution API at {url}: {e}"))?;
        connectors = connectors.with(std::sync::Arc::new(evolution));
    }
    if let Some(public) = &public_url {
        let mut config = whatsnap_smsgate::SmsGateConfig::new(public);
        config.cloud_url = args.smsgate_cloud_url.clone();
        config.patience = args.smsgate_patience;
        config.poll_interval = args.smsgate_poll;
        config.request_timeout = args.smsgate_timeout;
        connectors = connectors.with(std::sync::Arc::new(
            whatsnap_smsgate::SmsGateConnector::new(config),
        ));
    }
    // iMessage through the user's Mac: the Mac posts its webhooks to the public URL.
    if let Some(public) = &public_url {
        let mut config = whatsnap_bluebubbles::BlueBubblesConfig::new(public);
        config.request_timeout = args.bluebubbles_timeout;
        config.ping_interval = args.bluebubbles_ping_interval;
        config.catch_up = args.bluebubbles_catch_up;
        connectors = connectors.with(std::sync::Arc::new(
            whatsnap_bluebubbles::BlueBubblesConnector::new(config),
        ));
    }
    connectors = connectors
        .default_engine(&args.whatsapp_engine)
        .map_err(|e| anyhow!("--whatsapp-engine: {e}"))?;
    Ok(connectors)
}

/// GHL's pacing, with what each location has used of its allowance on `/metrics`.
fn ghl_limiter() -> Arc<whatsnap_ghl::ratelimit::RateLimiter> {
    use whatsnap_telemetry::metrics::Sample;
    let limiter = Arc::new(whatsnap_ghl::ratelimit::RateLimiter::new(
        whatsnap_ghl::ratelimit::Limits::default(),
    ));
    let watched = limiter.clone();
    whatsnap_telemetry::metrics::collect(move || {
        let limits = watched.limits();
        let mut samples = vec![
            Sample::gauge(
                "whatsnap_ghl_burst_limit",
                "Requests GHL allows one location in a burst window.",
                vec![],
                f64::from(limits.burst_max),
            ),
            Sample::gauge(
                "whatsnap_ghl_daily_limit",
                "Requests GHL allows one location in a day.",
                vec![],
                f64::from(limits.daily_max),
            ),
        ];
        for (location, window, today) in watched.usage() {
            let location = location.as_str().to_owned();
            samples.push(Sample::gauge(
                "whatsnap_ghl_burst_used",
                "Requests a location has made to GHL in the current burst window (10 s).",
                vec![("location", location.clone())],
                f64::from(window),
            ));
            samples.push(Sample::gauge(
                "whatsnap_ghl_daily_used",
                "Requests a location has made to GHL today (as GHL's headers last said).",
                vec![("location", location)],
                f64::from(today),
            ));
        }
        std::future::ready(samples)
    });
    limiter
}

/// Puts the events each projection parked, and that are not dealt with yet, on `/metrics`.
fn export_parked_metrics(db: whatsnap_rpc::ReadDb) {
    use sqlx::Row;
    use whatsnap_telemetry::metrics::Sample;
    whatsnap_telemetry::metrics::collect(move || {
        let db = db.clone();
        async move {
            let rows = sqlx::query(
                "SELECT projection, COUNT(*) AS n FROM projection_parked \
                 WHERE status IN ('parked', 'retry_requested') GROUP BY projection",
            )
            .fetch_all(&db)
            .await
            .unwrap_or_default();
            rows.iter()
                .map(|row| {
                    Sample::gauge(
                        "whatsnap_parked_events",
                        "Events a projection set aside after failing on them, not yet retried or skipped (see `whatsnap parked`).",
                        vec![("projection", row.get::<String, _>("projection"))],
                        row.get::<i64, _>("n") as f64,
                    )
                })
                .collect::<Vec<_>>()
        }
    });
}

#[cfg(test)]
mod tests {
    use super::PoolSizes;

    /// The names of the tables in an SQLite file.
    async fn tables_in(file: &std::path::Path) -> Vec<String> {
        let url = format!("sqlite://{}?mode=ro", file.display());
        let pool = sqlx::SqlitePool::connect(&url).await.unwrap();
        let names = sqlx::query_scalar("SELECT name FROM sqlite_master WHERE type = 'table'")
            .fetch_all(&pool)
            .await
            .unwrap();
        pool.close().await;
        names
    }

    #[tokio::test]
    async fn embedded_read_models_have_a_file_of_their_own_and_what_cannot_be_rebuilt_stays_with_the_log()
     {
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            backend: super::BackendArgs,
        }
        sqlx::any::install_default_drivers();
        let dir = tempfile::tempdir().unwrap();
        let data_dir = dir.path().to_str().unwrap();
        let cli = <Cli as clap::Parser>::parse_from(["whatsnap", "--data-dir", data_dir]);
        let backend = super::backend(&cli.backend).await.unwrap();
        for (db, table) in [
            (&backend.state_db, "lasting"),
            (&backend.keys_db, "keys"),
            (&backend.projections_db, "projected"),
            (&backend.db, "read"),
        ] {
            sqlx::query(&format!("CREATE TABLE {table} (x INTEGER)"))
                .execute(db)
                .await
                .unwrap();
        }
        let log = tables_in(&dir.path().join(super::EMBEDDED_LOG)).await;
        let read_models = tables_in(&dir.path().join(super::EMBEDDED_READ_MODELS)).await;
        for table in ["events", "lasting", "keys"] {
            assert!(
                log.contains(&table.to_owned()),
                "{table} not in the log's file: {log:?}"
            );
        }
        for table in ["projected", "read"] {
            assert!(
                read_models.contains(&table.to_owned()) && !log.contains(&table.to_owned()),
                "{table} not in the read models' file alone: {read_models:?}"
            );
        }
        assert!(!read_models.contains(&"lasting".to_owned()));
    }

    #[test]
    fn a_process_opens_no_more_connections_than_asked_for_and_every_pool_gets_one() {
        let sizes = |db, projections, keys, quotas| PoolSizes {
            db,
            projections,
            keys,
            quotas,
        };
        assert_eq!(PoolSizes::of(28), sizes(9, 10, 4, 4));
        assert_eq!(PoolSizes::of(14), sizes(4, 5, 2, 2));
        assert_eq!(PoolSizes::of(5), sizes(1, 1, 1, 1));
        for total in 5..500 {
            let pools = PoolSizes::of(total);
            let opened =
                pools.db + pools.projections + pools.keys + pools.quotas + PoolSizes::LISTENER;
            assert!(opened <= total, "{total}: {pools:?}");
            assert!(pools.db > 0 && pools.projections > 0, "{total}: {pools:?}");
        }
    }
}
