//! Protocol state: sender-key distribution, LID and number mappings, base keys, device lists,
//! group metadata, trusted-contact tokens, sent messages kept for retries, and the pending
//! inbound buffer.

use async_trait::async_trait;
use whatsapp_rust::store::traits::{
    DeviceListRecord, LidPnMappingEntry, ProtocolStore, TcTokenEntry,
};
use whatsapp_rust::wacore::store::error::{Result, StoreError};

use super::{
    SealedDeviceStore, db_error, decode, from_json, join, kind, now_micros, now_secs, to_json,
};

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
