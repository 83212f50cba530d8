//! WhatsApp's app state: sync keys, collection versions, mutation MACs.

use async_trait::async_trait;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use whatsapp_rust::store::traits::{AppStateSyncKey, AppSyncStore};
use whatsapp_rust::wacore::appstate::hash::HashState;
use whatsapp_rust::wacore::appstate::processor::AppStateMutationMAC;
use whatsapp_rust::wacore::store::error::Result;

use super::{SealedDeviceStore, db_error, from_json, hex, join, kind, now_micros, to_json, unhex};

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
