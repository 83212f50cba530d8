//! The phone's side of the fake, driven by tests: QR codes rotating, a scan, the link closing,
//! messages arriving or typed on the phone, receipts; each posted as Evolution posts it.

use base64::Engine as _;
use serde_json::{Value, json};

use super::state::{Instance, LinkState, qr_webhook_data};
use super::{FakeEvolution, FakeEvolutionIncoming, FakeSender};

impl FakeEvolution {
    fn instance_state(&self, name: &str) -> anyhow::Result<LinkState> {
        self.shared
            .with(|inner| inner.instances.get(name).map(|i| i.state))
            .ok_or_else(|| anyhow::anyhow!("no instance {name}"))
    }

    /// The current QR code's time is up: the next one is issued and posted
    /// (`qrcode.updated`); after `QRCODE_LIMIT` codes, the limit message and
    /// `connection.update` `refused` are posted instead and the instance closes. Returns the
    /// new code, or `None` once refused.
    pub async fn rotate_qr(&self, instance: &str) -> anyhow::Result<Option<String>> {
        if self.instance_state(instance)? != LinkState::Connecting {
            anyhow::bail!("instance {instance} is not linking");
        }
        let issued = self.shared.with(|inner| {
            let limit = inner.qrcode_limit;
            let seq = inner.next();
            let i = inner.instances.get_mut(instance).expect("checked above");
            if i.qr_count >= limit {
                i.state = LinkState::Close;
                i.qr_code = None;
                i.pairing_code = None;
                None
            } else {
                i.issue_qr(seq);
                Some((i.qr_code.clone(), i.qr_json()))
            }
        });
        match issued {
            Some((code, qr)) => {
                self.shared
                    .deliver(instance, "qrcode.updated", qr_webhook_data(instance, &qr))
                    .await;
                Ok(code)
            }
            None => {
                self.shared
                    .deliver(
                        instance,
                        "qrcode.updated",
                        json!({ "message": "QR code limit reached, please login again", "statusCode": 500 }),
                    )
                    .await;
                self.shared
                    .deliver(
                        instance,
                        "connection.update",
                        json!({
                            "instance": instance, "state": "refused", "statusReason": 428,
                            "wuid": null, "profileName": null, "profilePictureUrl": null,
                        }),
                    )
                    .await;
                Ok(None)
            }
        }
    }

    /// The phone with `phone` (E.164) scans the current QR code: the link opens and
    /// `connection.update` `open` is posted. Returns what the webhook answered.
    pub async fn scan(
        &self,
        instance: &str,
        phone: &str,
        profile_name: &str,
    ) -> anyhow::Result<Option<u16>> {
        if self.instance_state(instance)? != LinkState::Connecting {
            anyhow::bail!("instance {instance} shows no QR code to scan");
        }
        let wuid = format!("{}@s.whatsapp.net", phone.trim_start_matches('+'));
        self.shared.with(|inner| {
            let i = inner.instances.get_mut(instance).expect("checked above");
            i.state = LinkState::Open;
            i.disconnection_reason = None;
            i.owner_jid = Some(wuid.clone());
            i.profile_name = Some(profile_name.to_owned());
            i.qr_code = None;
            i.pairing_code = None;
            i.qr_count = 0;
        });
        Ok(self
            .shared
            .deliver(
                instance,
                "connection.update",
                json!({
                    "instance": instance, "wuid": wuid, "profileName": profile_name,
                    "profilePictureUrl": null, "state": "open", "statusReason": 200,
                }),
            )
            .await)
    }

    /// WhatsApp closes the link with Baileys' `statusReason`: Evolution posts every
    /// `connection.update`, so `close` with the reason first. For the codes Evolution does not
    /// reconnect after (401 logged out, 403 forbidden, 402, 406) it also posts
    /// `logout.instance`; for the others it reconnects by itself, which shows as `connecting`
    /// (see [`FakeEvolution::reconnect`]).
    pub async fn disconnect(&self, instance: &str, status_reason: u16) -> anyhow::Result<()> {
        if self.instance_state(instance)? != LinkState::Open {
            anyhow::bail!("instance {instance} is not open");
        }
        let terminal = matches!(status_reason, 401 | 402 | 403 | 406);
        self.shared.with(|inner| {
            let i = inner.instances.get_mut(instance).expect("checked above");
            i.state = if terminal {
                i.disconnection_reason = Some(status_reason);
                LinkState::Close
            } else {
                LinkState::Connecting
            };
        });
        if terminal {
            self.shared
                .deliver(instance, "logout.instance", Value::Null)
                .await;
            self.shared
                .deliver(
                    instance,
                    "connection.update",
                    json!({ "instance": instance, "state": "close", "statusReason": status_reason }),
                )
                .await;
        } else {
            self.shared
                .deliver(
                    instance,
                    "connection.update",
                    json!({ "instance": instance, "state": "close", "statusReason": status_reason }),
                )
                .await;
            self.shared
                .deliver(
                    instance,
                    "connection.update",
                    json!({ "instance": instance, "state": "connecting", "statusReason": 200 }),
                )
                .await;
        }
        Ok(())
    }

    /// A link Evolution was reconnecting opens again.
    pub async fn reconnect(&self, instance: &str) -> anyhow::Result<Option<u16>> {
        let (wuid, name) = self
            .shared
            .with(|inner| {
                let i = inner.instances.get_mut(instance)?;
                i.state = LinkState::Open;
                Some((i.owner_jid.clone(), i.profile_name.clone()))
            })
            .ok_or_else(|| anyhow::anyhow!("no instance {instance}"))?;
        Ok(self
            .shared
            .deliver(
                instance,
                "connection.update",
                json!({
                    "instance": instance, "wuid": wuid, "profileName": name,
                    "profilePictureUrl": null, "state": "open", "statusReason": 200,
                }),
            )
            .await)
    }

    /// Evolution closes the link for a moment and reconnects by itself (WhatsApp's "restart
    /// required" after a scan, code 515): the next `connectionState` answers `close`, later
    /// ones the state again. Nothing is posted.
    pub fn blink(&self, instance: &str) -> anyhow::Result<()> {
        self.shared
            .with(|inner| {
                inner
                    .instances
                    .get_mut(instance)
                    .map(|i| i.closed_looks += 1)
            })
            .ok_or_else(|| anyhow::anyhow!("no instance {instance}"))
    }

    /// How many `connectionState` calls the instance answered, and whether a
    /// [`FakeEvolution::blink`] is still waiting for one.
    pub fn state_looks(&self, instance: &str) -> (u64, bool) {
        self.shared.with(|inner| {
            inner
                .instances
                .get(instance)
                .map_or((0, false), |i| (i.state_looks, i.closed_looks > 0))
        })
    }

    /// The device is unlinked from the phone (as a logout through the API does).
    pub async fn logout(&self, instance: &str) -> anyhow::Result<()> {
        self.disconnect(instance, 401).await
    }

    /// A message arrives: `messages.upsert` is posted. Returns its id and what the webhook
    /// answered.
    pub async fn receive(
        &self,
        instance: &str,
        incoming: FakeEvolutionIncoming,
    ) -> anyhow::Result<(String, Option<u16>)> {
        if self.instance_state(instance)? != LinkState::Open {
            anyhow::bail!("instance {instance} is not open");
        }
        let (id, data) = self.shared.with(|inner| {
            let id = inner.message_id();
            let i = inner.instances.get_mut(instance).expect("checked above");
            let base64 = i.webhook.as_ref().is_some_and(|w| w.base64);
            let data = received_message(i, &id, &incoming, base64);
            (id, data)
        });
        Ok((
            id,
            self.shared.deliver(instance, "messages.upsert", data).await,
        ))
    }

    /// The account's owner types `text` to `to` (E.164) on the phone: `messages.upsert` with
    /// `key.fromMe` is posted. Returns its id and what the webhook answered.
    pub async fn type_on_phone(
        &self,
        instance: &str,
        to: &str,
        text: &str,
    ) -> anyhow::Result<(String, Option<u16>)> {
        if self.instance_state(instance)? != LinkState::Open {
            anyhow::bail!("instance {instance} is not open");
        }
        let (id, data) = self.shared.with(|inner| {
            let id = inner.message_id();
            let i = inner.instances.get_mut(instance).expect("checked above");
            let data = typed_message(i, &id, to, text);
            (id, data)
        });
        Ok((
            id,
            self.shared.deliver(instance, "messages.upsert", data).await,
        ))
    }

    /// A sent message reached the recipient's phone: `messages.update` `DELIVERY_ACK`.
    pub async fn mark_delivered(&self, message_id: &str) -> anyhow::Result<Option<u16>> {
        self.update_status(message_id, "DELIVERY_ACK").await
    }

    /// The recipient read a sent message: `messages.update` `READ`.
    pub async fn mark_read(&self, message_id: &str) -> anyhow::Result<Option<u16>> {
        self.update_status(message_id, "READ").await
    }

    /// Posts `messages.update` with `status` (`SERVER_ACK`, `DELIVERY_ACK`, `READ`, `PLAYED`,
    /// `ERROR`) for a message the fake sent.
    pub async fn update_status(
        &self,
        message_id: &str,
        status: &str,
    ) -> anyhow::Result<Option<u16>> {
        let found = self.shared.with(|inner| {
            let sent = inner.sent.iter().find(|s| s.id == message_id)?.clone();
            let instance_id = inner.instances.get(&sent.instance)?.id.clone();
            Some((sent, instance_id))
        });
        let Some((sent, instance_id)) = found else {
            anyhow::bail!("no message {message_id} was sent");
        };
        Ok(self
            .shared
            .deliver(
                &sent.instance,
                "messages.update",
                json!({
                    "keyId": sent.id,
                    "remoteJid": sent.remote_jid,
                    "fromMe": true,
                    "participant": null,
                    "status": status,
                    "instanceId": instance_id,
                    "messageId": format!("cm{}", sent.id.to_lowercase()),
                }),
            )
            .await)
    }

    /// Posts the instance's last webhook body again, as Evolution's retries do.
    pub async fn redeliver_last(&self, instance: &str) -> anyhow::Result<Option<u16>> {
        let last = self.shared.with(|inner| {
            inner
                .deliveries
                .iter()
                .rev()
                .find(|d| d.instance == instance)
                .cloned()
        });
        let Some(last) = last else {
            anyhow::bail!("nothing was delivered for {instance}");
        };
        Ok(self
            .shared
            .post(
                instance,
                &last.event,
                last.url,
                last.body,
                last.authorization,
            )
            .await)
    }
}

fn jid(phone: &str) -> String {
    format!("{}@s.whatsapp.net", phone.trim_start_matches('+'))
}

fn lid_jid(lid: &str) -> String {
    format!("{}@lid", lid.trim_end_matches("@lid"))
}

/// The `key` of a received message, with the sender's other form as Baileys 7 (or 6) writes it.
fn received_key(id: &str, incoming: &FakeEvolutionIncoming) -> Value {
    let (remote, alt, mode) = match &incoming.from {
        FakeSender::Phone { phone, lid } => (jid(phone), lid.as_deref().map(lid_jid), "pn"),
        FakeSender::Lid { lid, phone } => (lid_jid(lid), phone.as_deref().map(jid), "lid"),
    };
    let mut key = json!({ "remoteJid": remote, "fromMe": false, "id": id });
    if let Some(chat) = &incoming.chat {
        key["participant"] = json!(remote);
        key["remoteJid"] = json!(chat);
    }
    match (alt, incoming.baileys6) {
        (Some(alt), false) => {
            key["remoteJidAlt"] = json!(alt);
            key["addressingMode"] = json!(mode);
        }
        (Some(alt), true) if mode == "lid" => key["senderPn"] = json!(alt),
        (Some(alt), true) => key["senderLid"] = json!(alt),
        (None, false) => key["addressingMode"] = json!(mode),
        (None, true) => {}
    }
    key
}

/// `messages.upsert`'s `data` for a received message (Evolution's `prepareMessage`).
fn received_message(
    instance: &mut Instance,
    id: &str,
    incoming: &FakeEvolutionIncoming,
    base64: bool,
) -> Value {
    let key = received_key(id, incoming);
    let (message, message_type) = match &incoming.media {
        None => (
            json!({ "conversation": incoming.text.clone().unwrap_or_default() }),
            "conversation".to_owned(),
        ),
        Some(media) => {
            let kind = format!("{}Message", media.kind);
            let mut fields = json!({
                "url": "https://mmg.whatsapp.net/v/t62.7118-24/fake-incoming.enc",
                "mimetype": media.mimetype,
                "fileLength": media.data.len().to_string(),
                "mediaKey": "ZmFrZS1tZWRpYS1rZXk=",
                "directPath": "/v/t62.7118-24/fake-incoming.enc",
            });
            if let Some(caption) = &incoming.text {
                fields["caption"] = json!(caption);
            }
            if let Some(file_name) = &media.file_name {
                fields["fileName"] = json!(file_name);
            }
            if media.kind == "audio" {
                fields["ptt"] = json!(true);
                fields["seconds"] = json!(3);
            }
            let mut message = json!({ kind.clone(): fields });
            if base64 {
                message["base64"] =
                    json!(base64::engine::general_purpose::STANDARD.encode(&media.data));
            }
            (message, kind)
        }
    };
    let data = json!({
        "key": key,
        "pushName": incoming.push_name.clone().unwrap_or_else(|| {
            key["remoteJid"].as_str().unwrap_or_default().split('@').next().unwrap_or_default().to_owned()
        }),
        "status": "DELIVERY_ACK",
        "message": message,
        "contextInfo": null,
        "messageType": message_type,
        "messageTimestamp": chrono::Utc::now().timestamp(),
        "instanceId": instance.id,
        "source": "android",
    });
    instance.messages.push(data.clone());
    data
}

/// `messages.upsert`'s `data` for a message typed on the account's own phone.
fn typed_message(instance: &mut Instance, id: &str, to: &str, text: &str) -> Value {
    let data = json!({
        "key": { "remoteJid": jid(to), "fromMe": true, "id": id, "addressingMode": "pn" },
        "pushName": instance.profile_name.clone().unwrap_or_else(|| "Você".to_owned()),
        "status": "SERVER_ACK",
        "message": { "conversation": text },
        "contextInfo": null,
        "messageType": "conversation",
        "messageTimestamp": chrono::Utc::now().timestamp(),
        "instanceId": instance.id,
        "source": "android",
    });
    instance.messages.push(data.clone());
    data
}
