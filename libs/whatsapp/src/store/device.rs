//! The device itself: identity, keys, linked number.

use std::sync::Arc;

use async_trait::async_trait;
use whatsapp_rust::store::traits::DeviceStore;
use whatsapp_rust::wacore::store::Device;
use whatsapp_rust::wacore::store::device::DEVICE_PROPS;
use whatsapp_rust::wacore::store::error::Result;

use super::{
    DEVICE_ID, DEVICE_ITEM, SealedDeviceStore, db_error, from_json, kind, now_micros, to_json,
};

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
