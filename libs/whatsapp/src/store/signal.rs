//! Signal's identities, sessions, pre-keys and sender keys.

use std::sync::Arc;

use async_trait::async_trait;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use whatsapp_rust::bytes::Bytes;
use whatsapp_rust::store::traits::SignalStore;
use whatsapp_rust::wacore::store::error::{Result, StoreError};

use super::{SealedDeviceStore, array32, db_error, decode, kind};

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
        let mut tx = whatsnap_eventstore::transaction::begin(&self.db, None)
            .await
            .map_err(db_error)?;
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
