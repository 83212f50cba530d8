//! What GHL sends to an app, signed as GHL signs it (ghl-api.md §6.3): `X-GHL-Signature`, the
//! base64 Ed25519 signature of the raw body bytes — here with the fake's own key.

use base64::Engine as _;
use ed25519_dalek::Signer as _;
use ed25519_dalek::pkcs8::EncodePublicKey as _;
use serde_json::{Value, json};
use tokio::time::Instant;

use super::state::{Message, now_iso};
use super::{FakeGhl, FakeGhlMessage, state};

/// The header GHL's Ed25519 signature travels in.
pub const SIGNATURE_HEADER: &str = "X-GHL-Signature";

impl FakeGhl {
    /// The public half of the fake's signing key, as a PEM SubjectPublicKeyInfo — what to
    /// configure instead of GHL's published key.
    pub fn ed25519_public_key_pem(&self) -> String {
        self.signing_key
            .verifying_key()
            .to_public_key_pem(Default::default())
            .expect("an Ed25519 public key encodes as PEM")
    }

    pub fn verifying_key(&self) -> ed25519_dalek::VerifyingKey {
        self.signing_key.verifying_key()
    }

    /// The `X-GHL-Signature` value for `body`.
    pub fn sign(&self, body: &[u8]) -> String {
        base64::engine::general_purpose::STANDARD.encode(self.signing_key.sign(body).to_bytes())
    }

    /// A GHL user sends `message` to a contact whose default SMS provider is the app: the
    /// message joins the contact's conversation and GHL posts the ProviderOutboundMessage
    /// payload (§2.2) to `delivery_url`. Status updates for it are accepted once the
    /// downstream delay has passed. Returns GHL's message id and the HTTP status the
    /// delivery URL answered.
    pub async fn send_provider_outbound(
        &self,
        delivery_url: &str,
        location_id: &str,
        contact_id: &str,
        message: &str,
        user_id: Option<&str>,
    ) -> anyhow::Result<(String, u16)> {
        let (message_id, payload) = self.shared.with(|inner| {
            let contact = inner
                .contact(contact_id)
                .filter(|c| c.location_id == location_id)
                .cloned()
                .ok_or_else(|| {
                    anyhow::anyhow!("no contact {contact_id} in location {location_id}")
                })?;
            let conversation_id = inner.conversation_of(contact_id);
            let id = state::ghl_id();
            inner.messages.push(Message {
                public: FakeGhlMessage {
                    id: id.clone(),
                    conversation_id,
                    contact_id: contact_id.to_owned(),
                    location_id: location_id.to_owned(),
                    message_type: "SMS".to_owned(),
                    direction: "outbound".to_owned(),
                    message: Some(message.to_owned()),
                    attachments: Vec::new(),
                    alt_id: None,
                    conversation_provider_id: None,
                    date: now_iso(),
                    status: None,
                    user_id: user_id.map(str::to_owned),
                },
                sent_to_provider_at: Some(Instant::now()),
            });
            let mut payload = json!({
                "contactId": contact_id,
                "locationId": location_id,
                "messageId": id,
                "type": "SMS",
                "phone": contact.phone,
                "message": message,
                "attachments": [],
            });
            // Absent when no user sent it (a workflow, say).
            if let Some(user_id) = user_id {
                payload["userId"] = json!(user_id);
            }
            anyhow::Ok((id, payload))
        })?;
        let status = self
            .post_signed(delivery_url, &serde_json::to_vec(&payload)?)
            .await?;
        Ok((message_id, status))
    }

    /// Replaces `contact_id`'s tags in GHL, then posts the ContactTagUpdate webhook with the
    /// full list. Returns the HTTP status the webhook answered.
    pub async fn set_tags_and_notify(
        &self,
        webhook_url: &str,
        contact_id: &str,
        tags: &[&str],
    ) -> anyhow::Result<u16> {
        self.set_tags(contact_id, tags)?;
        self.send_contact_tag_update(webhook_url, contact_id).await
    }

    /// Posts the ContactTagUpdate webhook (§6.1) of `contact_id` as it is now: the flat
    /// contact with its full tag list, plus `webhookId` and `timestamp`.
    pub async fn send_contact_tag_update(
        &self,
        webhook_url: &str,
        contact_id: &str,
    ) -> anyhow::Result<u16> {
        self.send_contact_webhook(webhook_url, "ContactTagUpdate", contact_id)
            .await
    }

    /// Reassigns `contact_id` to `user_id` in GHL, as a GHL user editing the contact would,
    /// then posts the ContactUpdate webhook. Returns the HTTP status the webhook answered.
    pub async fn reassign_and_notify(
        &self,
        webhook_url: &str,
        contact_id: &str,
        user_id: Option<&str>,
    ) -> anyhow::Result<u16> {
        self.set_assigned_to(contact_id, user_id)?;
        self.send_contact_webhook(webhook_url, "ContactUpdate", contact_id)
            .await
    }

    /// Posts a contact webhook (§6.1: `ContactCreate`, `ContactUpdate`, `ContactTagUpdate`)
    /// of `contact_id` as it is now: the flat contact with its full tag list, its source and
    /// owner, plus `webhookId` and `timestamp`.
    pub async fn send_contact_webhook(
        &self,
        webhook_url: &str,
        kind: &str,
        contact_id: &str,
    ) -> anyhow::Result<u16> {
        let contact = self
            .shared
            .with(|inner| inner.contact(contact_id).cloned())
            .ok_or_else(|| anyhow::anyhow!("no contact {contact_id}"))?;
        let mut payload = json!({
            "type": kind,
            "locationId": contact.location_id,
            "id": contact.id,
            "dateAdded": contact.date_added,
            "tags": contact.tags,
            "attachments": [],
            "customFields": [],
        });
        let optional = [
            ("name", contact.name.as_deref()),
            ("firstName", contact.first_name.as_deref()),
            ("lastName", contact.last_name.as_deref()),
            ("phone", contact.phone.as_deref()),
            ("email", contact.email.as_deref()),
            ("assignedTo", contact.assigned_to.as_deref()),
        ];
        for (key, value) in optional {
            if let Some(value) = value {
                payload[key] = json!(value);
            }
        }
        for key in [
            "address1",
            "city",
            "state",
            "country",
            "postalCode",
            "companyName",
            "source",
            "dateOfBirth",
            "dnd",
            "website",
        ] {
            if let Some(value) = contact.other.get(key) {
                payload[key] = value.clone();
            }
        }
        self.post_webhook(webhook_url, payload).await
    }

    /// Posts the INSTALL webhook (§6.1 AppInstall) of the app on `location_id` of
    /// `company_id`; an empty `location_id` is an agency-level install (no `locationId`).
    pub async fn send_install(
        &self,
        webhook_url: &str,
        location_id: &str,
        company_id: &str,
    ) -> anyhow::Result<u16> {
        let mut payload = json!({
            "type": "INSTALL",
            "appId": Self::APP_ID,
            "versionId": Self::APP_ID,
            "companyId": company_id,
            "userId": Self::INSTALLER_USER_ID,
            "companyName": "Fake Agency",
            "isWhitelabelCompany": false,
            "whitelabelDetails": { "domain": "", "logoUrl": "" },
            "trial": { "onTrial": false },
        });
        if !location_id.is_empty() {
            payload["locationId"] = json!(location_id);
        }
        self.post_webhook(webhook_url, payload).await
    }

    /// Posts the UNINSTALL webhook (§6.1 AppUninstall): `locationId` for a sub-account, or,
    /// when `location_id` is empty, `companyId` for the agency.
    pub async fn send_uninstall(
        &self,
        webhook_url: &str,
        location_id: &str,
        company_id: &str,
    ) -> anyhow::Result<u16> {
        let mut payload = json!({ "type": "UNINSTALL", "appId": Self::APP_ID });
        if location_id.is_empty() {
            payload["companyId"] = json!(company_id);
        } else {
            payload["locationId"] = json!(location_id);
        }
        self.post_webhook(webhook_url, payload).await
    }

    /// Adds `webhookId` and `timestamp`, as GHL's webhooks carry them since ~2025 (§6), signs
    /// and posts.
    async fn post_webhook(&self, url: &str, mut payload: Value) -> anyhow::Result<u16> {
        payload["webhookId"] = json!(uuid::Uuid::now_v7().to_string());
        payload["timestamp"] = json!(now_iso());
        self.post_signed(url, &serde_json::to_vec(&payload)?).await
    }

    /// Posts `body` as JSON with a valid `X-GHL-Signature`; returns the HTTP status.
    pub async fn post_signed(&self, url: &str, body: &[u8]) -> anyhow::Result<u16> {
        let signature = self.sign(body);
        self.post_with_signature(url, body, Some(&signature)).await
    }

    /// Posts `body` as JSON with `signature` as `X-GHL-Signature` verbatim (or none), for
    /// forged, stale or malformed deliveries; returns the HTTP status.
    pub async fn post_with_signature(
        &self,
        url: &str,
        body: &[u8],
        signature: Option<&str>,
    ) -> anyhow::Result<u16> {
        let mut request = self
            .client
            .post(url)
            .header("content-type", "application/json")
            .body(body.to_vec());
        if let Some(signature) = signature {
            request = request.header(SIGNATURE_HEADER, signature);
        }
        Ok(request.send().await?.status().as_u16())
    }
}
