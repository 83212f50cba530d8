//! The two ways a `whatsnap` process under test keeps its data, and the arguments that say so.

use crate::{TestNats, TestPostgres};

/// Where a `whatsnap serve` under test keeps its events and read models; kept for as long as
/// the test lives, so that a restarted process finds its data.
#[allow(clippy::large_enum_variant, reason = "one per test, never moved about")]
pub enum TestBackend {
    /// One SQLite file in a temporary directory.
    Embedded(tempfile::TempDir),
    /// An isolated JetStream stream and PostgreSQL schema.
    Distributed(TestNats, TestPostgres),
}

impl TestBackend {
    pub async fn embedded() -> Self {
        Self::Embedded(tempfile::tempdir().expect("a temporary directory"))
    }

    pub async fn distributed() -> Self {
        Self::Distributed(
            TestNats::new().await.expect("a test NATS stream"),
            TestPostgres::new().await.expect("a test PostgreSQL schema"),
        )
    }

    /// The distributed backend, its processes' read models catching up on shared pages of
    /// `page` events from any backlog (see [`TestNats::paged`]).
    pub async fn distributed_paged(page: u64) -> Self {
        Self::Distributed(
            TestNats::paged(page).await.expect("a test NATS stream"),
            TestPostgres::new().await.expect("a test PostgreSQL schema"),
        )
    }

    pub async fn new(distributed: bool) -> Self {
        if distributed {
            Self::distributed().await
        } else {
            Self::embedded().await
        }
    }

    /// The `whatsnap serve` arguments that choose this backend.
    pub fn args(&self) -> Vec<String> {
        let args: Vec<&str> = match self {
            Self::Embedded(dir) => vec!["--data-dir", dir.path().to_str().expect("a UTF-8 path")],
            Self::Distributed(nats, pg) => return distributed_args(nats, pg),
        };
        args.iter().map(|s| (*s).to_owned()).collect()
    }
}

/// The `whatsnap serve` arguments of the distributed backend on `nats`'s stream and `pg`'s
/// schema, catching up as `nats` is set to.
pub fn distributed_args(nats: &TestNats, pg: &TestPostgres) -> Vec<String> {
    [
        "--nats-url",
        &nats.config.url,
        "--stream-name",
        &nats.config.stream_name,
        "--subject-prefix",
        &nats.config.subject_prefix,
        "--database-url",
        &pg.url_with_schema(),
        "--catch-up-after",
        &nats.config.catch_up.after.to_string(),
        "--catch-up-page",
        &nats.config.catch_up.page.to_string(),
        "--tail-events",
        &nats.config.catch_up.tail.to_string(),
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect()
}
