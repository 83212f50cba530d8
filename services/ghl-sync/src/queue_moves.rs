//! The GHL queue's moves, heard by every replica. The queue's read model (`ghl_pending`) runs on
//! one replica at a time, and the GHL work is split into parts that other replicas may hold: on
//! PostgreSQL the read model notifies a channel as each batch commits, and the GHL work of every
//! replica listens to it, so that a part looks at its queue as soon as it moved, wherever the
//! read model runs, instead of at its next poll. (The embedded backend is one process, whose
//! GHL work the read model's own progress wakes.)

use std::sync::LazyLock;
use std::time::Duration;

use sqlx::AnyConnection;
use sqlx::postgres::PgListener;
use tokio::sync::watch;
use tracing::{info, warn};
use whatsnap_eventstore::projection::Backoff;

/// The channel's name, followed by `:<schema>`: deployments that share a database in schemas of
/// their own do not wake each other.
const CHANNEL: &str = "whatsnap_ghl_pending";

/// Tells the listeners that the queue moved, when the transaction `conn` is in commits (nothing
/// on SQLite).
pub(crate) async fn notify(conn: &mut AnyConnection) -> sqlx::Result<()> {
    if conn.backend_name() != "PostgreSQL" {
        return Ok(());
    }
    // A statement that returns no row (the Any driver decodes no `void`).
    static NOTIFY: LazyLock<String> = LazyLock::new(|| {
        format!("DO $$ BEGIN PERFORM pg_notify('{CHANNEL}:' || current_schema(), ''); END $$")
    });
    sqlx::query(&NOTIFY).execute(conn).await?;
    Ok(())
}

/// A watch that ticks each time the GHL queue's read model in the PostgreSQL database at `url`
/// commits a batch, whichever replica runs it (and once more after a lost connection comes
/// back, for what it missed). Listens until the last receiver is dropped.
pub fn queue_moves(url: &str) -> watch::Receiver<u64> {
    let (moved, receiver) = watch::channel(0);
    tokio::spawn(listen(url.to_owned(), moved));
    receiver
}

async fn listen(url: String, moved: watch::Sender<u64>) {
    let tick = || moved.send_modify(|ticks| *ticks += 1);
    let mut failures = 0;
    loop {
        let mut listener = match subscribe(&url).await {
            Ok(listener) => listener,
            Err(err) => {
                failures += 1;
                let delay = Backoff::default().delay(failures);
                warn!(error = %err, retry_in_ms = delay.as_millis() as u64, "cannot listen for the GHL queue's moves; the GHL work polls it meanwhile");
                tokio::select! {
                    () = moved.closed() => return,
                    () = tokio::time::sleep(delay) => continue,
                }
            }
        };
        if failures > 0 {
            info!("listening for the GHL queue's moves again");
            failures = 0;
        }
        // What moved while nobody listened is looked at now.
        tick();
        loop {
            let received = tokio::select! {
                () = moved.closed() => return,
                received = listener.try_recv() => received,
            };
            match received {
                // A notification; or `None`: the connection was lost, and the next call opens
                // a new one and listens again (what moved meanwhile is looked at now).
                Ok(_) => tick(),
                Err(err) => {
                    warn!(error = %err, "lost the GHL queue's notifications; listening again");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    break;
                }
            }
        }
    }
}

/// A connection listening on this database's channel, in the schema its URL works in.
async fn subscribe(url: &str) -> sqlx::Result<PgListener> {
    let mut listener = PgListener::connect(url).await?;
    let schema: String = sqlx::query_scalar("SELECT current_schema()")
        .fetch_one(&mut listener)
        .await?;
    listener.listen(&format!("{CHANNEL}:{schema}")).await?;
    Ok(listener)
}
