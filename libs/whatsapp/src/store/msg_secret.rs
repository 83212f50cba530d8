//! Message secrets of sent messages (for replies, reactions, edits that refer to them).

use std::collections::HashMap;

use async_trait::async_trait;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use sqlx::Row;
use whatsapp_rust::store::traits::{
    MsgSecretEntry, MsgSecretStore, merge_msg_secret_expiry, merge_msg_secret_message_ts,
};
use whatsapp_rust::wacore::store::error::Result;

use super::{SealedDeviceStore, db_error, decode, from_json, join, kind, to_json};

#[derive(serde::Serialize, serde::Deserialize)]
struct StoredMsgSecret {
    secret: String,
    message_ts: i64,
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
