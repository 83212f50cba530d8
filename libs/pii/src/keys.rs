//! `contact_keys`: one key per contact, sealed under the deployment's personal data key, in the read
//! database (SQLite embedded, PostgreSQL distributed). Unlike a read model it is not rebuilt
//! from the log: it is the only copy of the keys, and backed up with the database.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use sqlx::{AnyPool, Row};
use uuid::Uuid;
use whatsnap_events::LocationId;
use whatsnap_secrets::{Sealed, SecretError, SecretKey};

use crate::fields::{sealed_field, split};

/// How long a process trusts a key it read: another process's erasure takes effect here within
/// this time (this process's own at once).
const KEY_TTL: Duration = Duration::from_secs(30);

const SCHEMA: &str = "CREATE TABLE IF NOT EXISTS contact_keys (location_id TEXT NOT NULL, \
    contact_id TEXT NOT NULL, sealed_key TEXT, erased_at TEXT, \
    PRIMARY KEY (location_id, contact_id))";

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("contact keys: {0}")]
    Database(#[from] sqlx::Error),
    #[error(
        "the key of contact {contact_id} is not in contact_keys (was the read database replaced \
         without its contact_keys table?)"
    )]
    Missing { contact_id: Uuid },
    #[error("the key of contact {contact_id} does not open: {source}")]
    Unopenable {
        contact_id: Uuid,
        #[source]
        source: SecretError,
    },
}

/// A contact's key as it stands.
#[derive(Clone)]
pub enum KeyState {
    Live(SecretKey),
    /// Destroyed by an erasure: what it sealed stays sealed for ever.
    Erased,
}

/// The contacts' keys, with a short-lived cache in front of the table.
pub struct ContactKeys {
    db: AnyPool,
    key: SecretKey,
    cache: Mutex<HashMap<(String, Uuid), (KeyState, Instant)>>,
}

impl std::fmt::Debug for ContactKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ContactKeys(..)")
    }
}

impl ContactKeys {
    /// The keys in `db` (the table is created when missing), sealed under `key` (the personal
    /// data key).
    pub async fn open(db: AnyPool, key: SecretKey) -> Result<Self, KeyError> {
        sqlx::query(SCHEMA).execute(&db).await?;
        Ok(Self {
            db,
            key,
            cache: Mutex::new(HashMap::new()),
        })
    }

    /// Re-seals under this store's key the contacts' keys that `legacy` (the secret key) sealed
    /// before whatsnap had a personal data key; how many.
    pub async fn reseal_from(&self, legacy: &SecretKey) -> Result<u64, crate::reseal::ResealError> {
        let column = crate::reseal::SealedColumn {
            table: "contact_keys",
            keys: &["location_id", "contact_id"],
            column: "sealed_key",
        };
        crate::reseal::reseal_column(&self.db, column, legacy, &self.key).await
    }

    /// The key to seal a contact's data with, made on first use.
    pub async fn for_sealing(
        &self,
        location: &LocationId,
        contact_id: Uuid,
    ) -> Result<KeyState, KeyError> {
        if let Some(state) = self.lookup(location, contact_id).await? {
            return Ok(state);
        }
        let made = SecretKey::generate_base64();
        // Two writers may make one at once: the first stored wins; the other reads it back.
        let stored = sqlx::query(
            "INSERT INTO contact_keys (location_id, contact_id, sealed_key) VALUES ($1, $2, $3) \
             ON CONFLICT (location_id, contact_id) DO NOTHING RETURNING contact_id",
        )
        .bind(location.as_str())
        .bind(contact_id.to_string())
        .bind(self.key.seal(&made).as_str())
        .fetch_optional(&self.db)
        .await?;
        if stored.is_none() {
            return self
                .lookup(location, contact_id)
                .await?
                .ok_or(KeyError::Missing { contact_id });
        }
        let unopenable = |source| KeyError::Unopenable { contact_id, source };
        let state = KeyState::Live(SecretKey::from_base64(&made).map_err(unopenable)?);
        self.remember(location, contact_id, &state);
        Ok(state)
    }

    /// The key to open a contact's data with; `None` when the contact never had one.
    pub async fn for_opening(
        &self,
        location: &LocationId,
        contact_id: Uuid,
    ) -> Result<Option<KeyState>, KeyError> {
        self.lookup(location, contact_id).await
    }

    /// `text` sealed for a read model with the contact's key (`pii1:<id>:<sealed>`), or
    /// `[erased]` when its key is destroyed; as it is when the contact has no key (its events
    /// were written before sealing existed). Never makes a key: read models are written inside
    /// a transaction that a new key's insert would wait on.
    pub async fn seal_text(
        &self,
        location: &LocationId,
        contact_id: Uuid,
        text: &str,
    ) -> Result<String, KeyError> {
        Ok(match self.lookup(location, contact_id).await? {
            Some(KeyState::Live(key)) => sealed_field(contact_id, key.seal(text).as_str()),
            Some(KeyState::Erased) => crate::ERASED.to_owned(),
            None => text.to_owned(),
        })
    }

    /// A value a read model keeps, opened: sealed ones with their contact's key (`[erased]`
    /// once it is destroyed), others as they are.
    pub async fn open_text(&self, location: &LocationId, text: &str) -> Result<String, KeyError> {
        let Some((contact_id, sealed)) = split(text) else {
            return Ok(text.to_owned());
        };
        match self.lookup(location, contact_id).await? {
            Some(KeyState::Live(key)) => key
                .open(&Sealed::from_stored(sealed.to_owned()))
                .map(|opened| opened.expose().to_owned())
                .map_err(|source| KeyError::Unopenable { contact_id, source }),
            Some(KeyState::Erased) => Ok(crate::ERASED.to_owned()),
            None => Err(KeyError::Missing { contact_id }),
        }
    }

    /// Destroys the contact's key (and keeps a contact that had none from getting one).
    pub async fn erase(&self, location: &LocationId, contact_id: Uuid) -> Result<(), KeyError> {
        sqlx::query(
            "INSERT INTO contact_keys (location_id, contact_id, sealed_key, erased_at) \
             VALUES ($1, $2, NULL, $3) ON CONFLICT (location_id, contact_id) \
             DO UPDATE SET sealed_key = NULL, erased_at = excluded.erased_at",
        )
        .bind(location.as_str())
        .bind(contact_id.to_string())
        .bind(chrono::Utc::now().to_rfc3339())
        .execute(&self.db)
        .await?;
        self.cache
            .lock()
            .expect("the key cache is never poisoned")
            .insert(
                (location.to_string(), contact_id),
                (KeyState::Erased, Instant::now()),
            );
        Ok(())
    }

    async fn lookup(
        &self,
        location: &LocationId,
        contact_id: Uuid,
    ) -> Result<Option<KeyState>, KeyError> {
        let cache_key = (location.to_string(), contact_id);
        if let Some((state, at)) = self
            .cache
            .lock()
            .expect("the key cache is never poisoned")
            .get(&cache_key)
            && (matches!(state, KeyState::Erased) || at.elapsed() < KEY_TTL)
        {
            return Ok(Some(state.clone()));
        }
        let Some(row) = sqlx::query(
            "SELECT sealed_key FROM contact_keys WHERE location_id = $1 AND contact_id = $2",
        )
        .bind(location.as_str())
        .bind(contact_id.to_string())
        .fetch_optional(&self.db)
        .await?
        else {
            return Ok(None);
        };
        let state = match row.get::<Option<String>, _>("sealed_key") {
            None => KeyState::Erased,
            Some(sealed) => {
                let unopenable = |source| KeyError::Unopenable { contact_id, source };
                let opened = self
                    .key
                    .open(&Sealed::from_stored(sealed))
                    .map_err(unopenable)?;
                KeyState::Live(SecretKey::from_base64(opened.expose()).map_err(unopenable)?)
            }
        };
        self.remember(location, contact_id, &state);
        Ok(Some(state))
    }

    fn remember(&self, location: &LocationId, contact_id: Uuid, state: &KeyState) {
        self.cache
            .lock()
            .expect("the key cache is never poisoned")
            .insert(
                (location.to_string(), contact_id),
                (state.clone(), Instant::now()),
            );
    }
}
