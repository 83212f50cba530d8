//! Test-only faults, compiled with the `failpoints` feature (the end-to-end tests build the
//! binary with it) and switched on by environment variables read once at start:
//!
//! - `WHATSNAP_FAILPOINT_POISON=<projection>:<marker>` makes the projection named fail to react
//!   to and apply every event whose payload contains `<marker>`, as a bug would: such an event
//!   gets parked.
//! - `WHATSNAP_FAILPOINT_POISON_CURED=<file>`: once this file exists the projection applies
//!   those events again, as a fixed release would (for `whatsnap parked retry`).

use std::path::PathBuf;
use std::sync::Arc;

use sqlx::{Any, AnyConnection};
use whatsnap_events::RecordedEvent;
use whatsnap_eventstore::projection::{ApplyError, Projection};

const POISON: &str = "WHATSNAP_FAILPOINT_POISON";
const CURED: &str = "WHATSNAP_FAILPOINT_POISON_CURED";

/// The projections, the one `WHATSNAP_FAILPOINT_POISON` names wrapped to fail.
pub fn poison_projections(
    projections: Vec<Arc<dyn Projection<Any>>>,
) -> Vec<Arc<dyn Projection<Any>>> {
    let Some((target, marker)) = std::env::var(POISON).ok().and_then(|value| {
        value
            .split_once(':')
            .map(|(name, marker)| (name.to_owned(), marker.to_owned()))
    }) else {
        return projections;
    };
    let cured = std::env::var_os(CURED).map(PathBuf::from);
    projections
        .into_iter()
        .map(|inner| -> Arc<dyn Projection<Any>> {
            if inner.name() == target {
                tracing::warn!(projection = %target, "failpoint: events with the poison marker fail");
                Arc::new(Poisoned {
                    inner,
                    marker: marker.clone(),
                    cured: cured.clone(),
                })
            } else {
                inner
            }
        })
        .collect()
}

struct Poisoned {
    inner: Arc<dyn Projection<Any>>,
    marker: String,
    cured: Option<PathBuf>,
}

impl Poisoned {
    /// Fails for an event with the marker, until the cure is there.
    fn poison(&self, event: &RecordedEvent) -> Result<(), ApplyError> {
        let poisoned = String::from_utf8_lossy(&event.payload).contains(&self.marker);
        let cured = self.cured.as_ref().is_some_and(|file| file.exists());
        match poisoned && !cured {
            true => Err("failpoint: this event is poison to the projection".into()),
            false => Ok(()),
        }
    }
}

#[tonic::async_trait]
impl Projection<Any> for Poisoned {
    fn name(&self) -> &str {
        self.inner.name()
    }

    fn migrations(&self) -> &'static [&'static str] {
        self.inner.migrations()
    }

    fn reads(&self) -> Option<&'static [&'static str]> {
        self.inner.reads()
    }

    fn reacts_to(&self, event: &RecordedEvent) -> bool {
        self.inner.reacts_to(event)
    }

    fn starts_where(&self) -> Vec<String> {
        self.inner.starts_where()
    }

    fn react_key(&self, event: &RecordedEvent) -> Option<String> {
        self.inner.react_key(event)
    }

    async fn react(&self, event: &RecordedEvent) -> Result<(), ApplyError> {
        self.poison(event)?;
        self.inner.react(event).await
    }

    async fn apply(
        &self,
        conn: &mut AnyConnection,
        event: &RecordedEvent,
    ) -> Result<(), ApplyError> {
        self.poison(event)?;
        self.inner.apply(conn, event).await
    }

    async fn reset(&self, conn: &mut AnyConnection) -> sqlx::Result<()> {
        self.inner.reset(conn).await
    }
}
