//! OAuth `state`: an install whatsnap starts carries a random value GHL hands back on the
//! redirect, and only a redirect with a value whatsnap issued, unused and unexpired, connects a
//! location. The value is issued to an authenticated caller (an agency admin's token, or a
//! dashboard viewer through the service credential) and kept hashed in the read database
//! (`ghl_oauth_states`), so any replica can redeem it, once. A stranger who sends a victim's
//! browser to `/oauth/callback` with their own code has no state to send with it (CSRF).

use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, Utc};
use rand::RngCore as _;
use sha2::{Digest, Sha256};
use sqlx::Row;
use whatsnap_rpc::ReadDb;

/// How long an install may take between whatsnap sending the browser to GHL and GHL sending it
/// back.
pub const LIFETIME: Duration = Duration::from_secs(30 * 60);

const SCHEMA: &str = "CREATE TABLE IF NOT EXISTS ghl_oauth_states (state_hash TEXT PRIMARY KEY, \
    started_by TEXT NOT NULL, expires_ms BIGINT NOT NULL, used_ms BIGINT)";

/// Why a redirect's state connects nothing.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error(
        "this install was not started by whatsnap or was already completed, or took longer than \
         {} minutes: start it again (`whatsnap ghl install-url`, or Install in the dashboard)",
        LIFETIME.as_secs() / 60
    )]
    Unknown,
    #[error("OAuth states in the read database: {0}")]
    Database(#[from] sqlx::Error),
}

/// The states of installs in progress.
#[derive(Clone)]
pub struct OAuthStates {
    db: ReadDb,
}

fn hash(state: &str) -> String {
    Sha256::digest(state.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

impl OAuthStates {
    pub fn new(db: ReadDb) -> Self {
        Self { db }
    }

    async fn migrate(&self) -> Result<(), sqlx::Error> {
        sqlx::query(SCHEMA).execute(&self.db).await.map(drop)
    }

    /// A new state for an install `started_by` starts now; expired ones are forgotten.
    pub async fn issue(&self, started_by: &str, now: DateTime<Utc>) -> Result<String, StateError> {
        self.migrate().await?;
        let mut bytes = [0u8; 32];
        rand::rng().fill_bytes(&mut bytes);
        let state = URL_SAFE_NO_PAD.encode(bytes);
        let now_ms = now.timestamp_millis();
        let lifetime_ms = i64::try_from(LIFETIME.as_millis()).expect("the lifetime fits");
        sqlx::query("DELETE FROM ghl_oauth_states WHERE expires_ms < $1")
            .bind(now_ms)
            .execute(&self.db)
            .await?;
        sqlx::query(
            "INSERT INTO ghl_oauth_states (state_hash, started_by, expires_ms) VALUES ($1, $2, $3)",
        )
        .bind(hash(&state))
        .bind(started_by)
        .bind(now_ms + lifetime_ms)
        .execute(&self.db)
        .await?;
        Ok(state)
    }

    /// Uses up `state`: who started the install, when it is one whatsnap issued, not used and
    /// not expired. Two replicas given the same redirect: one redeems it, the other is refused.
    pub async fn redeem(&self, state: &str, now: DateTime<Utc>) -> Result<String, StateError> {
        self.migrate().await?;
        let now_ms = now.timestamp_millis();
        let hashed = hash(state.trim());
        let used = sqlx::query(
            "UPDATE ghl_oauth_states SET used_ms = $1 \
             WHERE state_hash = $2 AND used_ms IS NULL AND expires_ms >= $1",
        )
        .bind(now_ms)
        .bind(&hashed)
        .execute(&self.db)
        .await?;
        if used.rows_affected() != 1 {
            return Err(StateError::Unknown);
        }
        let row = sqlx::query("SELECT started_by FROM ghl_oauth_states WHERE state_hash = $1")
            .bind(&hashed)
            .fetch_one(&self.db)
            .await?;
        Ok(row.get("started_by"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn states() -> OAuthStates {
        sqlx::any::install_default_drivers();
        let db = sqlx::any::AnyPoolOptions::new()
            .max_connections(1)
            .connect("sqlite::memory:")
            .await
            .unwrap();
        OAuthStates::new(db)
    }

    #[tokio::test]
    async fn a_state_is_redeemed_once_by_whoever_started_the_install() {
        let states = states().await;
        let now = Utc::now();
        let state = states.issue("token 7f3a", now).await.unwrap();
        assert_eq!(state.len(), 43, "256 random bits, URL-safe");
        assert_eq!(states.redeem(&state, now).await.unwrap(), "token 7f3a");
        assert!(matches!(
            states.redeem(&state, now).await,
            Err(StateError::Unknown)
        ));
    }

    #[tokio::test]
    async fn a_made_up_or_expired_state_connects_nothing() {
        let states = states().await;
        let now = Utc::now();
        assert!(matches!(
            states.redeem("made-up", now).await,
            Err(StateError::Unknown)
        ));
        let state = states.issue("token 7f3a", now).await.unwrap();
        let later =
            now + chrono::Duration::from_std(LIFETIME).unwrap() + chrono::Duration::seconds(1);
        assert!(matches!(
            states.redeem(&state, later).await,
            Err(StateError::Unknown)
        ));
    }
}
