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

use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use sqlx::{Any, AnyPool, Row, Transaction};
use uuid::Uuid;
use whatsapp_rust::bytes::Bytes;
use whatsapp_rust::store::traits::{
    AppStateSyncKey, AppSyncStore, DeviceListRecord, DeviceStore, LidPnMappingEntry,
    MsgSecretEntry, MsgSecretStore, ProtocolStore, SignalStore, TcTokenEntry,
    merge_msg_secret_expiry, merge_msg_secret_message_ts,
};
use whatsapp_rust::wacore::appstate::hash::HashState;
use whatsapp_rust::wacore::appstate::processor::AppStateMutationMAC;
use whatsapp_rust::wacore::store::Device;
use whatsapp_rust::wacore::store::device::DEVICE_PROPS;
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

/// The stores of the crate's [`Backend`](whatsapp_rust::store::traits::Backend), one linked
/// device per whatsnap account.
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

#[derive(serde::Serialize, serde::Deserialize)]
struct StoredMsgSecret {
    secret: String,
    message_ts: i64,
}

impl SealedDeviceStore {
    /// Creates the table when it is missing. Run once at start, before any account's store is
    /// used; safe to run again.
    pub async fn migrate(db: &AnyPool) -> std::result::Result<(), sqlx::Error> {
        for migration in MIGRATIONS {
            sqlx::query(migration).execute(db).await?;
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
        let mut tx = self.db.begin().await.map_err(db_error)?;
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
        let mut tx = self.db.begin().await.map_err(db_error)?;
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

#[async_trait]
impl SignalStore for SealedDeviceStore {
    async fn put_identity(&self, address: &str, key: [u8; 32]) -> Result<()> {
        self.put_bytes(kind::IDENTITY, address, "", 0, &key).await
    }

    async fn put_identities_batch(&self, identities: &[(Arc<str>, [u8; 32])]) -> Result<()> {
        let rows: Vec<_> = identities
            .iter()
            .map(|(address, key)| (address.to_string(), String::new(), 0, STANDARD.encode(key)))
            .collect();
        self.put_many(kind::IDENTITY, &rows).await
    }

    async fn load_identity(&self, address: &str) -> Result<Option<[u8; 32]>> {
        self.get_bytes(kind::IDENTITY, address)
            .await?
            .map(array32)
            .transpose()
    }

    async fn delete_identity(&self, address: &str) -> Result<()> {
        self.delete(kind::IDENTITY, address).await.map(drop)
    }

    async fn get_session(&self, address: &str) -> Result<Option<Bytes>> {
        Ok(self
            .get_bytes(kind::SESSION, address)
            .await?
            .map(Bytes::from))
    }

    async fn put_session(&self, address: &str, session: &[u8]) -> Result<()> {
        self.put_bytes(kind::SESSION, address, "", 0, session).await
    }

    async fn put_sessions_batch(&self, sessions: &[(Arc<str>, Bytes)]) -> Result<()> {
        let rows: Vec<_> = sessions
            .iter()
            .map(|(address, session)| {
                (
                    address.to_string(),
                    String::new(),
                    0,
                    STANDARD.encode(session),
                )
            })
            .collect();
        self.put_many(kind::SESSION, &rows).await
    }

    async fn delete_session(&self, address: &str) -> Result<()> {
        self.delete(kind::SESSION, address).await.map(drop)
    }

    async fn store_prekey(&self, id: u32, record: &[u8], uploaded: bool) -> Result<()> {
        let grp = if uploaded { "uploaded" } else { "" };
        self.put_bytes(kind::PREKEY, &id.to_string(), grp, id.into(), record)
            .await
    }

    async fn store_prekeys_batch(&self, keys: &[(u32, Bytes)], uploaded: bool) -> Result<()> {
        let grp = if uploaded { "uploaded" } else { "" };
        let rows: Vec<_> = keys
            .iter()
            .map(|(id, record)| {
                (
                    id.to_string(),
                    grp.to_owned(),
                    i64::from(*id),
                    STANDARD.encode(record),
                )
            })
            .collect();
        self.put_many(kind::PREKEY, &rows).await
    }

    async fn load_prekey(&self, id: u32) -> Result<Option<Bytes>> {
        Ok(self
            .get_bytes(kind::PREKEY, &id.to_string())
            .await?
            .map(Bytes::from))
    }

    async fn mark_prekeys_uploaded(&self, ids: &[u32]) -> Result<()> {
        // An update, never an insert: a key consumed since the upload stays deleted.
        let mut tx = self.db.begin().await.map_err(db_error)?;
        for id in ids {
            sqlx::query(
                "UPDATE whatsapp_device_store SET grp = 'uploaded' WHERE account_id = $1 AND kind = $2 AND item = $3",
            )
            .bind(&self.account)
            .bind(kind::PREKEY)
            .bind(id.to_string())
            .execute(&mut *tx)
            .await
            .map_err(db_error)?;
        }
        tx.commit().await.map_err(db_error)
    }

    async fn remove_prekey(&self, id: u32) -> Result<()> {
        self.delete(kind::PREKEY, &id.to_string()).await.map(drop)
    }

    async fn get_max_prekey_id(&self) -> Result<u32> {
        let max: Option<i64> = sqlx::query_scalar(
            "SELECT MAX(num) FROM whatsapp_device_store WHERE account_id = $1 AND kind = $2",
        )
        .bind(&self.account)
        .bind(kind::PREKEY)
        .fetch_one(&self.db)
        .await
        .map_err(db_error)?;
        Ok(max.and_then(|m| u32::try_from(m).ok()).unwrap_or(0))
    }

    async fn store_signed_prekey(&self, id: u32, record: &[u8]) -> Result<()> {
        self.put_bytes(kind::SIGNED_PREKEY, &id.to_string(), "", id.into(), record)
            .await
    }

    async fn load_signed_prekey(&self, id: u32) -> Result<Option<Vec<u8>>> {
        self.get_bytes(kind::SIGNED_PREKEY, &id.to_string()).await
    }

    async fn load_all_signed_prekeys(&self) -> Result<Vec<(u32, Vec<u8>)>> {
        self.list(kind::SIGNED_PREKEY, None)
            .await?
            .into_iter()
            .map(|entry| {
                let id = u32::try_from(entry.num).map_err(|_| {
                    StoreError::Validation(format!("signed pre-key id {}", entry.num))
                })?;
                Ok((id, decode(&entry.value)?))
            })
            .collect()
    }

    async fn remove_signed_prekey(&self, id: u32) -> Result<()> {
        self.delete(kind::SIGNED_PREKEY, &id.to_string())
            .await
            .map(drop)
    }

    async fn put_sender_key(&self, address: &str, record: &[u8]) -> Result<()> {
        self.put_bytes(kind::SENDER_KEY, address, "", 0, record)
            .await
    }

    async fn put_sender_keys_batch(&self, sender_keys: &[(Arc<str>, Bytes)]) -> Result<()> {
        let rows: Vec<_> = sender_keys
            .iter()
            .map(|(address, record)| {
                (
                    address.to_string(),
                    String::new(),
                    0,
                    STANDARD.encode(record),
                )
            })
            .collect();
        self.put_many(kind::SENDER_KEY, &rows).await
    }

    async fn get_sender_key(&self, address: &str) -> Result<Option<Vec<u8>>> {
        self.get_bytes(kind::SENDER_KEY, address).await
    }

    async fn delete_sender_key(&self, address: &str) -> Result<()> {
        self.delete(kind::SENDER_KEY, address).await.map(drop)
    }
}

#[async_trait]
impl AppSyncStore for SealedDeviceStore {
    async fn get_sync_key(&self, key_id: &[u8]) -> Result<Option<AppStateSyncKey>> {
        self.get(kind::SYNC_KEY, &hex(key_id))
            .await?
            .map(|s| from_json(&s))
            .transpose()
    }

    async fn set_sync_key(&self, key_id: &[u8], key: AppStateSyncKey) -> Result<()> {
        // `num` orders the keys by when they were set, strictly: the latest is asked for.
        let last: Option<i64> = sqlx::query_scalar(
            "SELECT MAX(num) FROM whatsapp_device_store WHERE account_id = $1 AND kind = $2",
        )
        .bind(&self.account)
        .bind(kind::SYNC_KEY)
        .fetch_one(&self.db)
        .await
        .map_err(db_error)?;
        let order = now_micros().max(last.unwrap_or(0) + 1);
        self.put(kind::SYNC_KEY, &hex(key_id), "", order, &to_json(&key)?)
            .await
    }

    async fn get_version(&self, name: &str) -> Result<HashState> {
        Ok(match self.get(kind::APP_VERSION, name).await? {
            Some(s) => from_json(&s)?,
            None => HashState::default(),
        })
    }

    async fn set_version(&self, name: &str, state: HashState) -> Result<()> {
        self.put(kind::APP_VERSION, name, "", 0, &to_json(&state)?)
            .await
    }

    async fn put_mutation_macs(
        &self,
        name: &str,
        version: u64,
        mutations: &[AppStateMutationMAC],
    ) -> Result<()> {
        let version = i64::try_from(version).unwrap_or(i64::MAX);
        let rows: Vec<_> = mutations
            .iter()
            .map(|m| {
                (
                    join(&[name, &hex(&m.index_mac)]),
                    name.to_owned(),
                    version,
                    STANDARD.encode(&m.value_mac),
                )
            })
            .collect();
        self.put_many(kind::MUTATION_MAC, &rows).await
    }

    async fn get_mutation_mac(&self, name: &str, index_mac: &[u8]) -> Result<Option<Vec<u8>>> {
        self.get_bytes(kind::MUTATION_MAC, &join(&[name, &hex(index_mac)]))
            .await
    }

    async fn delete_mutation_macs(&self, name: &str, index_macs: &[Vec<u8>]) -> Result<()> {
        let items: Vec<String> = index_macs
            .iter()
            .map(|mac| join(&[name, &hex(mac)]))
            .collect();
        self.delete_many(kind::MUTATION_MAC, items).await
    }

    async fn clear_mutation_macs(&self, name: &str) -> Result<()> {
        self.delete_grp(kind::MUTATION_MAC, name).await
    }

    async fn get_latest_sync_key_id(&self) -> Result<Option<Vec<u8>>> {
        let latest: Option<String> = sqlx::query_scalar(
            "SELECT item FROM whatsapp_device_store WHERE account_id = $1 AND kind = $2 ORDER BY num DESC LIMIT 1",
        )
        .bind(&self.account)
        .bind(kind::SYNC_KEY)
        .fetch_optional(&self.db)
        .await
        .map_err(db_error)?;
        latest.map(|item| unhex(&item)).transpose()
    }
}

#[async_trait]
impl ProtocolStore for SealedDeviceStore {
    async fn get_sender_key_devices(&self, group_jid: &str) -> Result<Vec<(String, bool)>> {
        self.list(kind::SENDER_KEY_DEVICE, Some(group_jid))
            .await?
            .into_iter()
            .map(|entry| {
                let device = entry
                    .item
                    .split_once('|')
                    .map(|(_, device)| device.to_owned())
                    .ok_or_else(|| StoreError::Validation(format!("item {}", entry.item)))?;
                Ok((device, entry.value == "1"))
            })
            .collect()
    }

    async fn set_sender_key_status(&self, group_jid: &str, entries: &[(&str, bool)]) -> Result<()> {
        let rows: Vec<_> = entries
            .iter()
            .map(|(device, has_key)| {
                (
                    join(&[group_jid, device]),
                    group_jid.to_owned(),
                    0,
                    if *has_key { "1" } else { "0" }.to_owned(),
                )
            })
            .collect();
        self.put_many(kind::SENDER_KEY_DEVICE, &rows).await
    }

    async fn clear_sender_key_devices(&self, group_jid: &str) -> Result<()> {
        self.delete_grp(kind::SENDER_KEY_DEVICE, group_jid).await
    }

    async fn delete_sender_key_device_rows(&self, device_jids: &[&str]) -> Result<()> {
        let doomed: Vec<String> = self
            .items(kind::SENDER_KEY_DEVICE)
            .await?
            .into_iter()
            .filter(|item| {
                item.split_once('|')
                    .is_some_and(|(_, device)| device_jids.contains(&device))
            })
            .collect();
        self.delete_many(kind::SENDER_KEY_DEVICE, doomed).await
    }

    async fn clear_all_sender_key_devices(&self) -> Result<()> {
        self.delete_kind(kind::SENDER_KEY_DEVICE).await
    }

    async fn get_lid_mapping(&self, lid: &str) -> Result<Option<LidPnMappingEntry>> {
        self.get(kind::LID, lid)
            .await?
            .map(|s| from_json(&s))
            .transpose()
    }

    async fn get_pn_mapping(&self, phone: &str) -> Result<Option<LidPnMappingEntry>> {
        // The most recently written LID for the number.
        match self.list(kind::LID, Some(phone)).await?.pop() {
            Some(entry) => from_json(&entry.value).map(Some),
            None => Ok(None),
        }
    }

    async fn put_lid_mapping(&self, entry: &LidPnMappingEntry) -> Result<()> {
        self.put(
            kind::LID,
            &entry.lid,
            &entry.phone_number,
            now_micros(),
            &to_json(entry)?,
        )
        .await
    }

    async fn put_lid_mappings(&self, entries: &[LidPnMappingEntry]) -> Result<()> {
        // Later entries of the batch are the more recent.
        let now = now_micros();
        let rows = entries
            .iter()
            .zip(now..)
            .map(|(entry, order)| {
                Ok((
                    entry.lid.clone(),
                    entry.phone_number.clone(),
                    order,
                    to_json(entry)?,
                ))
            })
            .collect::<Result<Vec<_>>>()?;
        self.put_many(kind::LID, &rows).await
    }

    async fn get_all_lid_mappings(&self) -> Result<Vec<LidPnMappingEntry>> {
        self.list(kind::LID, None)
            .await?
            .into_iter()
            .map(|entry| from_json(&entry.value))
            .collect()
    }

    async fn save_base_key(&self, address: &str, message_id: &str, base_key: &[u8]) -> Result<()> {
        self.put_bytes(
            kind::BASE_KEY,
            &join(&[address, message_id]),
            "",
            0,
            base_key,
        )
        .await
    }

    async fn has_same_base_key(
        &self,
        address: &str,
        message_id: &str,
        current_base_key: &[u8],
    ) -> Result<bool> {
        Ok(self
            .get_bytes(kind::BASE_KEY, &join(&[address, message_id]))
            .await?
            .is_some_and(|stored| stored == current_base_key))
    }

    async fn delete_base_key(&self, address: &str, message_id: &str) -> Result<()> {
        self.delete(kind::BASE_KEY, &join(&[address, message_id]))
            .await
            .map(drop)
    }

    async fn update_device_list(&self, record: DeviceListRecord) -> Result<()> {
        self.put(
            kind::DEVICES,
            &record.user,
            "",
            record.timestamp,
            &to_json(&record)?,
        )
        .await
    }

    async fn update_device_lists(&self, records: Vec<DeviceListRecord>) -> Result<()> {
        let rows = records
            .iter()
            .map(|record| {
                Ok((
                    record.user.clone(),
                    String::new(),
                    record.timestamp,
                    to_json(record)?,
                ))
            })
            .collect::<Result<Vec<_>>>()?;
        self.put_many(kind::DEVICES, &rows).await
    }

    async fn get_devices(&self, user: &str) -> Result<Option<DeviceListRecord>> {
        self.get(kind::DEVICES, user)
            .await?
            .map(|s| from_json(&s))
            .transpose()
    }

    async fn delete_devices(&self, user: &str) -> Result<()> {
        self.delete(kind::DEVICES, user).await.map(drop)
    }

    async fn get_group_metadata(&self, group_jid: &str) -> Result<Option<Vec<u8>>> {
        self.get_bytes(kind::GROUP_META, group_jid).await
    }

    async fn put_group_metadata(&self, group_jid: &str, blob: &[u8]) -> Result<()> {
        self.put_bytes(kind::GROUP_META, group_jid, "", 0, blob)
            .await
    }

    async fn delete_group_metadata(&self, group_jid: &str) -> Result<()> {
        self.delete(kind::GROUP_META, group_jid).await.map(drop)
    }

    async fn get_tc_token(&self, jid: &str) -> Result<Option<TcTokenEntry>> {
        self.get(kind::TC_TOKEN, jid)
            .await?
            .map(|s| from_json(&s))
            .transpose()
    }

    async fn put_tc_token(&self, jid: &str, entry: &TcTokenEntry) -> Result<()> {
        self.put(
            kind::TC_TOKEN,
            jid,
            "",
            entry.token_timestamp,
            &to_json(entry)?,
        )
        .await
    }

    async fn delete_tc_token(&self, jid: &str) -> Result<()> {
        self.delete(kind::TC_TOKEN, jid).await.map(drop)
    }

    async fn get_all_tc_token_jids(&self) -> Result<Vec<String>> {
        self.items(kind::TC_TOKEN).await
    }

    async fn delete_expired_tc_tokens(&self, token_cutoff: i64, sender_cutoff: i64) -> Result<u32> {
        let mut doomed = Vec::new();
        for entry in self.list(kind::TC_TOKEN, None).await? {
            let token: TcTokenEntry = from_json(&entry.value)?;
            let token_dead = token.token.is_empty() || token.token_timestamp < token_cutoff;
            let sender_dead = token.sender_timestamp.is_none_or(|at| at < sender_cutoff);
            if token_dead && sender_dead {
                doomed.push(entry.item);
            }
        }
        let count = u32::try_from(doomed.len()).unwrap_or(u32::MAX);
        self.delete_many(kind::TC_TOKEN, doomed).await?;
        Ok(count)
    }

    async fn store_sent_message(
        &self,
        chat_jid: &str,
        message_id: &str,
        payload: &[u8],
    ) -> Result<()> {
        self.put_bytes(
            kind::SENT_MESSAGE,
            &join(&[chat_jid, message_id]),
            "",
            now_secs(),
            payload,
        )
        .await
    }

    async fn take_sent_message(&self, chat_jid: &str, message_id: &str) -> Result<Option<Vec<u8>>> {
        // One statement, so two takers cannot both get it.
        let stored: Option<String> = sqlx::query_scalar(
            "DELETE FROM whatsapp_device_store WHERE account_id = $1 AND kind = $2 AND item = $3 RETURNING value",
        )
        .bind(&self.account)
        .bind(kind::SENT_MESSAGE)
        .bind(join(&[chat_jid, message_id]))
        .fetch_optional(&self.db)
        .await
        .map_err(db_error)?;
        stored
            .map(|s| self.open(s).and_then(|plain| decode(&plain)))
            .transpose()
    }

    async fn delete_expired_sent_messages(&self, cutoff_timestamp: i64) -> Result<u32> {
        self.delete_before(kind::SENT_MESSAGE, cutoff_timestamp, false)
            .await
    }

    async fn store_pending_inbound(
        &self,
        chat: &str,
        sender: &str,
        id: &str,
        message: &[u8],
    ) -> Result<()> {
        self.put_bytes(
            kind::PENDING_INBOUND,
            &join(&[chat, sender, id]),
            "",
            now_secs(),
            message,
        )
        .await
    }

    async fn get_pending_inbound(
        &self,
        chat: &str,
        sender: &str,
        id: &str,
    ) -> Result<Option<Vec<u8>>> {
        self.get_bytes(kind::PENDING_INBOUND, &join(&[chat, sender, id]))
            .await
    }

    async fn delete_pending_inbound(&self, chat: &str, sender: &str, id: &str) -> Result<()> {
        self.delete(kind::PENDING_INBOUND, &join(&[chat, sender, id]))
            .await
            .map(drop)
    }

    async fn delete_expired_pending_inbound(&self, cutoff_timestamp: i64) -> Result<u32> {
        self.delete_before(kind::PENDING_INBOUND, cutoff_timestamp, false)
            .await
    }
}

#[async_trait]
impl MsgSecretStore for SealedDeviceStore {
    async fn put_msg_secrets(&self, entries: Vec<MsgSecretEntry>) -> Result<usize> {
        let count = entries.len();
        // Merge with what is stored (later expiry and message time win), then write at once.
        let mut merged: HashMap<String, (i64, StoredMsgSecret)> = HashMap::new();
        for entry in entries {
            let item = join(&[&entry.chat, &entry.sender, &entry.msg_id]);
            let existing = match merged.remove(&item) {
                Some((expires_at, stored)) => Some((expires_at, stored.message_ts)),
                None => self.stored_msg_secret(&item).await?,
            };
            let (expires_at, message_ts) = match existing {
                Some((expires_at, message_ts)) => (
                    merge_msg_secret_expiry(expires_at, entry.expires_at),
                    merge_msg_secret_message_ts(message_ts, entry.message_ts),
                ),
                None => (entry.expires_at, entry.message_ts),
            };
            let stored = StoredMsgSecret {
                secret: STANDARD.encode(entry.secret),
                message_ts,
            };
            merged.insert(item, (expires_at, stored));
        }
        let rows = merged
            .into_iter()
            .map(|(item, (expires_at, stored))| {
                Ok((item, String::new(), expires_at, to_json(&stored)?))
            })
            .collect::<Result<Vec<_>>>()?;
        self.put_many(kind::MSG_SECRET, &rows).await?;
        Ok(count)
    }

    async fn get_msg_secret(
        &self,
        chat: &str,
        sender: &str,
        msg_id: &str,
    ) -> Result<Option<Vec<u8>>> {
        Ok(self
            .get_msg_secret_with_ts(chat, sender, msg_id)
            .await?
            .map(|(secret, _)| secret))
    }

    async fn get_msg_secret_with_ts(
        &self,
        chat: &str,
        sender: &str,
        msg_id: &str,
    ) -> Result<Option<(Vec<u8>, i64)>> {
        match self
            .get(kind::MSG_SECRET, &join(&[chat, sender, msg_id]))
            .await?
        {
            Some(s) => {
                let stored: StoredMsgSecret = from_json(&s)?;
                Ok(Some((decode(&stored.secret)?, stored.message_ts)))
            }
            None => Ok(None),
        }
    }

    async fn delete_expired_msg_secrets(&self, cutoff_timestamp: i64) -> Result<u32> {
        self.delete_before(kind::MSG_SECRET, cutoff_timestamp, true)
            .await
    }
}

impl SealedDeviceStore {
    /// A stored message secret's expiry and message time.
    async fn stored_msg_secret(&self, item: &str) -> Result<Option<(i64, i64)>> {
        let row = sqlx::query(
            "SELECT num, value FROM whatsapp_device_store WHERE account_id = $1 AND kind = $2 AND item = $3",
        )
        .bind(&self.account)
        .bind(kind::MSG_SECRET)
        .bind(item)
        .fetch_optional(&self.db)
        .await
        .map_err(db_error)?;
        match row {
            Some(row) => {
                let expires_at: i64 = row.try_get("num").map_err(db_error)?;
                let stored: StoredMsgSecret =
                    from_json(&self.open(row.try_get("value").map_err(db_error)?)?)?;
                Ok(Some((expires_at, stored.message_ts)))
            }
            None => Ok(None),
        }
    }
}

#[async_trait]
impl DeviceStore for SealedDeviceStore {
    async fn save(&self, device: &Device) -> Result<()> {
        self.put(
            kind::DEVICE,
            DEVICE_ITEM,
            "",
            now_micros(),
            &to_json(device)?,
        )
        .await
    }

    async fn load(&self) -> Result<Option<Device>> {
        let Some(stored) = self.get(kind::DEVICE, DEVICE_ITEM).await? else {
            return Ok(None);
        };
        let mut device: Device = from_json(&stored)?;
        // Not serialized (the crate treats them as the process's, set at every start): without
        // this a loaded device would register with empty device properties. The builder's
        // `with_device_props` still applies on top.
        device.device_props = Arc::new(DEVICE_PROPS.clone());
        Ok(Some(device))
    }

    async fn exists(&self) -> Result<bool> {
        let found: Option<String> = sqlx::query_scalar(
            "SELECT item FROM whatsapp_device_store WHERE account_id = $1 AND kind = $2 AND item = $3",
        )
        .bind(&self.account)
        .bind(kind::DEVICE)
        .bind(DEVICE_ITEM)
        .fetch_optional(&self.db)
        .await
        .map_err(db_error)?;
        Ok(found.is_some())
    }

    async fn create(&self) -> Result<i32> {
        // A new device with fresh keys; when two replicas race, the first one's stays.
        sqlx::query(
            "INSERT INTO whatsapp_device_store (account_id, kind, item, grp, num, value) VALUES ($1, $2, $3, '', $4, $5) \
             ON CONFLICT (account_id, kind, item) DO NOTHING",
        )
        .bind(&self.account)
        .bind(kind::DEVICE)
        .bind(DEVICE_ITEM)
        .bind(now_micros())
        .bind(self.seal(&to_json(&Device::new())?)?)
        .execute(&self.db)
        .await
        .map_err(db_error)?;
        Ok(DEVICE_ID)
    }
}
