//! Replay protection for GHL webhooks (`ghl-api.md` §6.3): a signed webhook is refused when its
//! `timestamp` is outside a window around now, and one whose `webhookId` was seen within the
//! window is acknowledged without acting on it again. An id counts as seen only once its webhook
//! was acted on and acknowledged: one refused with 429 (so that GHL sends it again) or whose
//! request was dropped half way is not, or its retry would be dropped as a duplicate. The
//! memory is per process; what a webhook changes is idempotent anyway, so a restart that
//! forgets ids repeats no effect.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::time::Instant;

#[derive(Clone, Debug)]
pub struct ReplayGuard {
    window: Duration,
    seen: Arc<Mutex<HashMap<String, Seen>>>,
}

/// What the guard knows of a webhookId.
#[derive(Clone, Copy, Debug)]
enum Seen {
    /// A request with this id is being handled now.
    InFlight(Instant),
    /// A request with this id was handled (acknowledged with a 2xx).
    Handled(Instant),
}

impl Seen {
    fn at(self) -> Instant {
        match self {
            Seen::InFlight(at) | Seen::Handled(at) => at,
        }
    }
}

/// What the guard made of a webhook.
#[derive(Debug)]
pub enum Verdict {
    /// Not seen: act on it, then say so through the claim (absent when it has no webhookId).
    Fresh(Option<Claim>),
    /// This webhookId was handled already.
    Duplicate,
    /// Another request with this webhookId is being handled right now.
    InFlight,
    /// The timestamp is outside the window; the reason says by how much.
    Stale(String),
}

/// A webhookId being handled. Only [`Claim::handled`] makes it "seen": a claim dropped
/// without it (the webhook was refused, the handler failed or its request was cancelled) lets
/// the sender's retry of the same webhook through.
#[derive(Debug)]
pub struct Claim {
    guard: ReplayGuard,
    id: String,
    handled: bool,
}

impl Claim {
    /// The webhook was acted on and acknowledged: a later delivery of it is a duplicate.
    pub fn handled(mut self) {
        self.handled = true;
        self.guard
            .seen
            .lock()
            .expect("replay guard lock")
            .insert(self.id.clone(), Seen::Handled(Instant::now()));
    }
}

impl Drop for Claim {
    fn drop(&mut self) {
        if self.handled {
            return;
        }
        let mut seen = self.guard.seen.lock().expect("replay guard lock");
        if matches!(seen.get(&self.id), Some(Seen::InFlight(_))) {
            seen.remove(&self.id);
        }
    }
}

impl ReplayGuard {
    pub fn new(window: Duration) -> Self {
        Self {
            window,
            seen: Arc::default(),
        }
    }

    /// Judges a webhook by its `webhookId` and `timestamp` (ISO 8601, or milliseconds since the
    /// epoch); either may be absent, as in webhooks GHL sent before it added them.
    pub fn check(
        &self,
        webhook_id: Option<&str>,
        timestamp: Option<&serde_json::Value>,
    ) -> Verdict {
        if let Some(at) = timestamp.and_then(parse_timestamp) {
            let skew = (Utc::now() - at).abs();
            if skew.to_std().unwrap_or(Duration::MAX) > self.window {
                return Verdict::Stale(format!(
                    "the webhook's timestamp {} is {} s from now, more than the {} s allowed",
                    at.to_rfc3339(),
                    skew.num_seconds(),
                    self.window.as_secs()
                ));
            }
        }
        let Some(id) = webhook_id.filter(|id| !id.is_empty()) else {
            return Verdict::Fresh(None);
        };
        let now = Instant::now();
        let mut seen = self.seen.lock().expect("replay guard lock");
        seen.retain(|_, seen| now.duration_since(seen.at()) <= self.window);
        match seen.get(id) {
            Some(Seen::Handled(_)) => Verdict::Duplicate,
            Some(Seen::InFlight(_)) => Verdict::InFlight,
            None => {
                seen.insert(id.to_owned(), Seen::InFlight(now));
                Verdict::Fresh(Some(Claim {
                    guard: self.clone(),
                    id: id.to_owned(),
                    handled: false,
                }))
            }
        }
    }
}

fn parse_timestamp(value: &serde_json::Value) -> Option<DateTime<Utc>> {
    match value {
        serde_json::Value::String(text) => DateTime::parse_from_rfc3339(text)
            .ok()
            .map(|at| at.with_timezone(&Utc)),
        serde_json::Value::Number(ms) => DateTime::from_timestamp_millis(ms.as_i64()?),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn fresh(verdict: Verdict) -> Claim {
        match verdict {
            Verdict::Fresh(Some(claim)) => claim,
            other => panic!("not fresh with a claim: {other:?}"),
        }
    }

    #[test]
    fn a_handled_webhook_id_is_a_duplicate() {
        let guard = ReplayGuard::new(Duration::from_secs(300));
        let now = json!(Utc::now().to_rfc3339());
        fresh(guard.check(Some("w1"), Some(&now))).handled();
        assert!(matches!(
            guard.check(Some("w1"), Some(&now)),
            Verdict::Duplicate
        ));
        fresh(guard.check(Some("w2"), Some(&now))).handled();
    }

    #[test]
    fn a_webhook_refused_or_cancelled_is_not_seen_and_its_retry_goes_through() {
        let guard = ReplayGuard::new(Duration::from_secs(300));
        let now = json!(Utc::now().to_rfc3339());
        let claim = fresh(guard.check(Some("w1"), Some(&now)));
        // While it is being handled, the same id again is told to come back.
        assert!(matches!(
            guard.check(Some("w1"), Some(&now)),
            Verdict::InFlight
        ));
        // Refused (429) or its request dropped: the claim goes without being handled.
        drop(claim);
        fresh(guard.check(Some("w1"), Some(&now))).handled();
        assert!(matches!(
            guard.check(Some("w1"), Some(&now)),
            Verdict::Duplicate
        ));
    }

    #[tokio::test(start_paused = true)]
    async fn a_handled_id_is_forgotten_after_the_window() {
        let guard = ReplayGuard::new(Duration::from_secs(300));
        fresh(guard.check(Some("w1"), None)).handled();
        tokio::time::advance(Duration::from_secs(301)).await;
        assert!(matches!(
            guard.check(Some("w1"), None),
            Verdict::Fresh(Some(_))
        ));
    }

    #[test]
    fn an_old_or_future_timestamp_is_stale_and_none_is_fine() {
        let guard = ReplayGuard::new(Duration::from_secs(300));
        let old = json!((Utc::now() - chrono::Duration::minutes(10)).to_rfc3339());
        assert!(matches!(
            guard.check(Some("a"), Some(&old)),
            Verdict::Stale(_)
        ));
        let future = json!((Utc::now() + chrono::Duration::minutes(10)).timestamp_millis());
        assert!(matches!(
            guard.check(Some("b"), Some(&future)),
            Verdict::Stale(_)
        ));
        assert!(matches!(guard.check(None, None), Verdict::Fresh(None)));
    }
}
