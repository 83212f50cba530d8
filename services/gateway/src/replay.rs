//! Replay protection for GHL webhooks (`ghl-api.md` §6.3): a signed webhook is refused when its
//! `timestamp` is outside a window around now, and one whose `webhookId` was seen within the
//! window is acknowledged without acting on it again. The memory is per process; what a
//! webhook changes is idempotent anyway, so a restart that forgets ids repeats no effect.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::time::Instant;

#[derive(Clone, Debug)]
pub struct ReplayGuard {
    window: Duration,
    seen: Arc<Mutex<HashMap<String, Instant>>>,
}

/// What the guard made of a webhook.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    Fresh,
    /// This webhookId was handled already.
    Duplicate,
    /// The timestamp is outside the window; the reason says by how much.
    Stale(String),
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
            return Verdict::Fresh;
        };
        let now = Instant::now();
        let mut seen = self.seen.lock().expect("replay guard lock");
        seen.retain(|_, at| now.duration_since(*at) <= self.window);
        if seen.contains_key(id) {
            return Verdict::Duplicate;
        }
        seen.insert(id.to_owned(), now);
        Verdict::Fresh
    }

    /// Forgets an id, for a webhook whose handling failed and that GHL will send again.
    pub fn forget(&self, webhook_id: &str) {
        self.seen
            .lock()
            .expect("replay guard lock")
            .remove(webhook_id);
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

    #[test]
    fn a_repeated_webhook_id_is_a_duplicate() {
        let guard = ReplayGuard::new(Duration::from_secs(300));
        let now = json!(Utc::now().to_rfc3339());
        assert_eq!(guard.check(Some("w1"), Some(&now)), Verdict::Fresh);
        assert_eq!(guard.check(Some("w1"), Some(&now)), Verdict::Duplicate);
        assert_eq!(guard.check(Some("w2"), Some(&now)), Verdict::Fresh);
        guard.forget("w2");
        assert_eq!(guard.check(Some("w2"), Some(&now)), Verdict::Fresh);
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
        assert_eq!(guard.check(None, None), Verdict::Fresh);
    }
}
