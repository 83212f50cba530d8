//! The linked device's keys, sessions and protocol state, kept in whatsnap's own read database
//! (SQLite embedded, PostgreSQL distributed) instead of a file per pod, so a restart or another
//! replica resumes the link without a new scan.
//!
//! Everything the crate's [`Backend`] stores goes into one table, `whatsapp_device_store`, a row
//! per `(account_id, kind, item)`: `kind` names the store (`identity`, `session`, `prekey`, …),
//! `item` the entry within it (a Signal address, a pre-key id, …). The `value` column holds the
//! entry sealed with whatsnap's [`SecretKey`] (bytes base64-encoded, structures as JSON, then
//! sealed); only what a lookup or a clean-up needs stays in clear: `item`, a `grp` the entry
//! belongs to (a group, a collection, a phone number) and a number `num` (a pre-key id, an
//! expiry or a write time).

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use sqlx::{Any, AnyPool, Row, Transaction};
use uuid::Uuid;
use whatsapp_rust::store::traits::DeviceStore;
use whatsapp_rust::wacore::store::Device;
use whatsapp_rust::wacore::store::error::{Result, StoreError};
use whatsnap_secrets::{Sealed, SecretKey};

/// The table's migrations, in order; each is idempotent, so [`SealedDeviceStore::migrate`] can
/// run them on every start. Portable SQL: `TEXT` and `BIGINT` only.
pub const MIGRATIONS: &[&str] = &[
    "CREATE TABLE IF NOT EXISTS whatsapp_device_store (account_id TEXT NOT NULL, kind TEXT NOT NULL, item TEXT NOT NULL, grp TEXT NOT NULL, num BIGINT NOT NULL, value TEXT NOT NULL, PRIMARY KEY (account_id, kind, item))",
    "CREATE INDEX IF NOT EXISTS whatsapp_device_store_grp ON whatsapp_device_store (account_id, kind, grp)",
];

const UPSERT: &str = "INSERT INTO whatsapp_device_store (account_id, kind, item, grp, num, value) VALUES ($1, $2, $3, $4, $5, $6) \
     ON CONFLICT (account_id, kind, item) DO UPDATE SET grp = excluded.grp, num = excluded.num, value = excluded.value";

mod app_state;
mod device;
mod msg_secret;
mod protocol;
mod signal;

/// The stores of the crate's [`Backend`](whatsapp_rust::store::traits::Backend), as the `kind`
/// column names them.
mod kind {
    pub const DEVICE: &str = "device";
    pub const IDENTITY: &str = "identity";
    pub const SESSION: &str = "session";
    pub const PREKEY: &str = "prekey";
    pub const SIGNED_PREKEY: &str = "signed_prekey";
    pub const SENDER_KEY: &str = "sender_key";
    pub const SYNC_KEY: &str = "sync_key";
    pub const APP_VERSION: &str = "app_version";
    pub const MUTATION_MAC: &str = "mutation_mac";
    pub const SENDER_KEY_DEVICE: &str = "sender_key_device";
    pub const LID: &str = "lid";
    pub const BASE_KEY: &str = "base_key";
    pub const DEVICES: &str = "devices";
    pub const GROUP_META: &str = "group_meta";
    pub const TC_TOKEN: &str = "tc_token";
    pub const SENT_MESSAGE: &str = "sent_message";
    pub const PENDING_INBOUND: &str = "pending_inbound";
    pub const MSG_SECRET: &str = "msg_secret";
}

/// The only device row of an account: whatsnap links one device per account.
const DEVICE_ITEM: &str = "device";
const DEVICE_ID: i32 = 1;

/// One account's linked device, stored sealed in whatsnap's read database. Cheap to clone.
#[derive(Clone)]
pub struct SealedDeviceStore {
    db: AnyPool,
    key: SecretKey,
    account: String,
}

impl std::fmt::Debug for SealedDeviceStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SealedDeviceStore")
            .field("account", &self.account)
            .finish_non_exhaustive()
    }
}

/// A row as a listing returns it, value opened.
struct Entry {
    item: String,
    num: i64,
    value: String,
}

fn db_error(err: sqlx::Error) -> StoreError {
    StoreError::Database(Box::new(err))
}

fn encoding_error(err: impl std::error::Error + Send + Sync + 'static) -> StoreError {
    StoreError::Serialization(Box::new(err))
}

fn decode(text: &str) -> Result<Vec<u8>> {
    STANDARD.decode(text).map_err(encoding_error)
}

fn to_json<T: serde::Serialize>(value: &T) -> Result<String> {
    serde_json::to_string(value).map_err(encoding_error)
}

fn from_json<T: serde::de::DeserializeOwned>(text: &str) -> Result<T> {
    serde_json::from_str(text).map_err(encoding_error)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(text: &str) -> Result<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return Err(StoreError::Validation(format!("odd hex length: {text}")));
    }
    (0..text.len())
        .step_by(2)
        .map(|i| {
            u8::from_str_radix(&text[i..i + 2], 16)
                .map_err(|_| StoreError::Validation(format!("not hex: {text}")))
        })
        .collect()
}

fn array32(bytes: Vec<u8>) -> Result<[u8; 32]> {
    bytes
        .try_into()
        .map_err(|b: Vec<u8>| StoreError::Validation(format!("expected 32 bytes, got {}", b.len())))
}

/// Seconds since the epoch: what the crate's clean-up cut-offs are in.
fn now_secs() -> i64 {
    chrono::Utc::now().timestamp()
}

/// Microseconds since the epoch: orders writes ("the most recent key").
fn now_micros() -> i64 {
    chrono::Utc::now().timestamp_micros()
}

/// The item of a composite key; the parts (JIDs, message ids, collection names) never hold `|`.
fn join(parts: &[&str]) -> String {
    parts.join("|")
}

impl SealedDeviceStore {
    /// Creates the table when it is missing. Run once at start, before any account's store is
    /// used; safe to run again.
    pub async fn migrate(db: &AnyPool) -> std::result::Result<(), sqlx::Error> {
        for migration in MIGRATIONS {
            // Replicas starting together race on PostgreSQL's catalogue even with `IF NOT
            // EXISTS` (a unique violation on the type's name); the loser's retry finds the table.
            let mut attempt = 1;
            loop {
                match sqlx::query(migration).execute(db).await {
                    Ok(_) => break,
                    Err(_) if attempt < 3 => {
                        attempt += 1;
                        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    }
                    Err(err) => return Err(err),
                }
            }
        }
        Ok(())
    }

    /// The store of `account_id`'s device, sealing with `key` (the deployment's secret key: every
    /// replica needs the same one to resume the link).
    pub fn new(db: AnyPool, key: SecretKey, account_id: Uuid) -> Self {
        Self {
            db,
            key,
            account: account_id.to_string(),
        }
    }

    /// Whether the account has a device stored (linked, or being linked).
    pub async fn has_device(&self) -> std::result::Result<bool, StoreError> {
        self.exists().await
    }

    /// The account's device (its identity, keys and linked number), if it has one.
    pub async fn load_device(&self) -> std::result::Result<Option<Device>, StoreError> {
        self.load().await
    }

    /// Creates the account's device (fresh keys) unless it has one.
    pub async fn create_device(&self) -> std::result::Result<(), StoreError> {
        self.create().await.map(drop)
    }

    /// Forgets everything the account's device stored: after a logout, the next link starts
    /// from a new device and a new scan.
    pub async fn forget(&self) -> std::result::Result<(), StoreError> {
        sqlx::query("DELETE FROM whatsapp_device_store WHERE account_id = $1")
            .bind(&self.account)
            .execute(&self.db)
            .await
            .map_err(db_error)?;
        Ok(())
    }

    fn seal(&self, plain: &str) -> Result<String> {
        match serde_json::to_value(self.key.seal(plain)).map_err(encoding_error)? {
            serde_json::Value::String(text) => Ok(text),
            _ => Err(StoreError::Validation("a sealed value is not text".into())),
        }
    }

    fn open(&self, stored: String) -> Result<String> {
        let sealed: Sealed =
            serde_json::from_value(serde_json::Value::String(stored)).map_err(encoding_error)?;
        let opened = self.key.open(&sealed).map_err(encoding_error)?;
        Ok(opened.expose().to_owned())
    }

    async fn put(&self, kind: &str, item: &str, grp: &str, num: i64, plain: &str) -> Result<()> {
        sqlx::query(UPSERT)
            .bind(&self.account)
            .bind(kind)
            .bind(item)
            .bind(grp)
            .bind(num)
            .bind(self.seal(plain)?)
            .execute(&self.db)
            .await
            .map_err(db_error)?;
        Ok(())
    }

    async fn put_in(
        &self,
        tx: &mut Transaction<'_, Any>,
        kind: &str,
        item: &str,
        grp: &str,
        num: i64,
        plain: &str,
    ) -> Result<()> {
        sqlx::query(UPSERT)
            .bind(&self.account)
            .bind(kind)
            .bind(item)
            .bind(grp)
            .bind(num)
            .bind(self.seal(plain)?)
            .execute(&mut **tx)
            .await
            .map_err(db_error)?;
        Ok(())
    }

    /// Writes many entries of one kind in one transaction: `(item, grp, num, plain)`.
    async fn put_many(&self, kind: &str, rows: &[(String, String, i64, String)]) -> Result<()> {
        if rows.is_empty() {
            return Ok(());
        }
        let mut tx = whatsnap_eventstore::transaction::begin(&self.db, None)
            .await
            .map_err(db_error)?;
        for (item, grp, num, plain) in rows {
            self.put_in(&mut tx, kind, item, grp, *num, plain).await?;
        }
        tx.commit().await.map_err(db_error)
    }

    async fn get(&self, kind: &str, item: &str) -> Result<Option<String>> {
        let stored: Option<String> = sqlx::query_scalar(
            "SELECT value FROM whatsapp_device_store WHERE account_id = $1 AND kind = $2 AND item = $3",
        )
        .bind(&self.account)
        .bind(kind)
        .bind(item)
        .fetch_optional(&self.db)
        .await
        .map_err(db_error)?;
        stored.map(|s| self.open(s)).transpose()
    }

    async fn get_bytes(&self, kind: &str, item: &str) -> Result<Option<Vec<u8>>> {
        self.get(kind, item).await?.map(|s| decode(&s)).transpose()
    }

    async fn put_bytes(
        &self,
        kind: &str,
        item: &str,
        grp: &str,
        num: i64,
        bytes: &[u8],
    ) -> Result<()> {
        self.put(kind, item, grp, num, &STANDARD.encode(bytes))
            .await
    }

    async fn delete(&self, kind: &str, item: &str) -> Result<u64> {
        sqlx::query(
            "DELETE FROM whatsapp_device_store WHERE account_id = $1 AND kind = $2 AND item = $3",
        )
        .bind(&self.account)
        .bind(kind)
        .bind(item)
        .execute(&self.db)
        .await
        .map(|done| done.rows_affected())
        .map_err(db_error)
    }

    async fn delete_many(&self, kind: &str, items: Vec<String>) -> Result<()> {
        let mut tx = whatsnap_eventstore::transaction::begin(&self.db, None)
            .await
            .map_err(db_error)?;
        for item in items {
            sqlx::query(
                "DELETE FROM whatsapp_device_store WHERE account_id = $1 AND kind = $2 AND item = $3",
            )
            .bind(&self.account)
            .bind(kind)
            .bind(item)
            .execute(&mut *tx)
            .await
            .map_err(db_error)?;
        }
        tx.commit().await.map_err(db_error)
    }

    async fn delete_kind(&self, kind: &str) -> Result<()> {
        sqlx::query("DELETE FROM whatsapp_device_store WHERE account_id = $1 AND kind = $2")
            .bind(&self.account)
            .bind(kind)
            .execute(&self.db)
            .await
            .map_err(db_error)?;
        Ok(())
    }

    async fn delete_grp(&self, kind: &str, grp: &str) -> Result<()> {
        sqlx::query(
            "DELETE FROM whatsapp_device_store WHERE account_id = $1 AND kind = $2 AND grp = $3",
        )
        .bind(&self.account)
        .bind(kind)
        .bind(grp)
        .execute(&self.db)
        .await
        .map_err(db_error)?;
        Ok(())
    }

    /// Deletes the entries of `kind` whose `num` is before `cutoff`: a write time in seconds, or,
    /// when `expiry`, a deadline at or before the cut-off (0 being never).
    async fn delete_before(&self, kind: &str, cutoff: i64, expiry: bool) -> Result<u32> {
        let sql = if expiry {
            "DELETE FROM whatsapp_device_store WHERE account_id = $1 AND kind = $2 AND num <> 0 AND num <= $3"
        } else {
            "DELETE FROM whatsapp_device_store WHERE account_id = $1 AND kind = $2 AND num < $3"
        };
        let done = sqlx::query(sql)
            .bind(&self.account)
            .bind(kind)
            .bind(cutoff)
            .execute(&self.db)
            .await
            .map_err(db_error)?;
        Ok(u32::try_from(done.rows_affected()).unwrap_or(u32::MAX))
    }

    /// The entries of `kind` (of group `grp`, when given), values opened.
    async fn list(&self, kind: &str, grp: Option<&str>) -> Result<Vec<Entry>> {
        let rows = match grp {
            Some(grp) => sqlx::query(
                "SELECT item, num, value FROM whatsapp_device_store WHERE account_id = $1 AND kind = $2 AND grp = $3 ORDER BY num, item",
            )
            .bind(&self.account)
            .bind(kind)
            .bind(grp)
            .fetch_all(&self.db)
            .await,
            None => sqlx::query(
                "SELECT item, num, value FROM whatsapp_device_store WHERE account_id = $1 AND kind = $2 ORDER BY num, item",
            )
            .bind(&self.account)
            .bind(kind)
            .fetch_all(&self.db)
            .await,
        }
        .map_err(db_error)?;
        rows.into_iter()
            .map(|row| {
                Ok(Entry {
                    item: row.try_get("item").map_err(db_error)?,
                    num: row.try_get("num").map_err(db_error)?,
                    value: self.open(row.try_get("value").map_err(db_error)?)?,
                })
            })
            .collect()
    }

    /// The items of `kind`, without opening their values.
    async fn items(&self, kind: &str) -> Result<Vec<String>> {
        sqlx::query_scalar(
            "SELECT item FROM whatsapp_device_store WHERE account_id = $1 AND kind = $2 ORDER BY item",
        )
        .bind(&self.account)
        .bind(kind)
        .fetch_all(&self.db)
        .await
        .map_err(db_error)
    }
}
