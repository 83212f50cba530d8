//! A reply through a running client: to whom, as which messages, under which ids, and what a
//! failure means to the outbox.

use sha2::{Digest as _, Sha256};
use uuid::Uuid;
use whatsapp_rust::send::SendOptions;
use whatsapp_rust::{Client, Jid};
use whatsnap_connector::{Outgoing, SendError, Sent};

use crate::media;

/// Sends `outgoing` through `client`: see [`Connector::send`] on
/// [`EmbeddedConnector`](crate::EmbeddedConnector).
///
/// [`Connector::send`]: whatsnap_connector::Connector::send
pub(crate) async fn send(
    client: &Client,
    http: &reqwest::Client,
    max_attachment_bytes: usize,
    outgoing: &Outgoing,
) -> Result<Sent, SendError> {
    let to = recipient(&outgoing.to)?;
    let messages = media::messages(client, http, max_attachment_bytes, outgoing).await?;
    if !outgoing.typing.is_zero() {
        // "typing…" for the pacing's while; the message itself ends it. Only a nicety: a
        // failure here does not keep the reply back.
        if let Err(err) = client.chatstate().send_composing(&to).await {
            tracing::debug!(error = %err, "no typing indicator");
        }
        tokio::time::sleep(outgoing.typing).await;
    }
    let mut first: Option<String> = None;
    for (part, message) in messages.into_iter().enumerate() {
        let options = SendOptions::default().with_message_id(message_id(outgoing.message_id, part));
        match client
            .send_message_with_options(to.clone(), message, options)
            .await
        {
            Ok(sent) => {
                first.get_or_insert(sent.message_id);
            }
            Err(err) => {
                let err = send_error(err);
                return Err(match first {
                    // Part of the reply went out: sending it again would repeat that part.
                    Some(id) => SendError::Unknown(format!(
                        "the reply was sent in part (first message {id}): {err}"
                    )),
                    None => err,
                });
            }
        }
    }
    first
        .map(|provider_message_id| Sent {
            provider_message_id,
        })
        .ok_or_else(|| SendError::Refused {
            reason: "the reply has neither text nor attachments".into(),
            code: Some("empty".into()),
        })
}

/// `+15551234567` → the phone-number JID `15551234567@s.whatsapp.net`.
pub fn recipient(e164: &str) -> Result<Jid, SendError> {
    let digits = e164.strip_prefix('+').unwrap_or(e164);
    if digits.len() < 7 || digits.len() > 15 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(SendError::Refused {
            reason: format!("{e164} is not a phone number in E.164"),
            code: Some("invalid_recipient".into()),
        });
    }
    Ok(Jid::pn(digits))
}

/// The WhatsApp message id of part `part` of whatsnap's message `message_id`: WhatsApp Web's
/// form (`3EB0` and 18 upper-case hex digits), derived rather than random, so a reply sent
/// again after an unknown outcome carries the same message key as the first attempt.
pub fn message_id(message_id: Uuid, part: usize) -> String {
    let mut hasher = Sha256::new();
    hasher.update(b"whatsnap message ");
    hasher.update(message_id.as_bytes());
    hasher.update((part as u64).to_be_bytes());
    let digest = hasher.finalize();
    let mut id = String::with_capacity(22);
    id.push_str("3EB0");
    for byte in &digest[..9] {
        id.push_str(&format!("{byte:02X}"));
    }
    id
}

/// The crate's send failure in the outbox's terms.
pub(crate) fn send_error(err: whatsapp_rust::SendError) -> SendError {
    use whatsapp_rust::{ClientError, IqError, SendError as WaSendError};
    match err {
        WaSendError::NotLoggedIn
        | WaSendError::Client(ClientError::NotConnected | ClientError::NotLoggedIn)
        | WaSendError::Iq(IqError::NotConnected) => {
            SendError::NotConnected(format!("the whatsapp link is not open: {err}"))
        }
        WaSendError::Iq(IqError::ServerError { code: 429, .. }) => {
            SendError::RateLimited(format!("whatsapp asked to slow down: {err}"))
        }
        WaSendError::InvalidRequest(reason) => SendError::Refused {
            reason,
            code: Some("invalid_request".into()),
        },
        // Encrypting, writing to the socket, waiting for the server: it may have gone out.
        other => SendError::Unknown(other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use whatsapp_rust::{ClientError, IqError, SendError as WaSendError};

    use super::*;

    #[test]
    fn a_reply_s_message_ids_are_whatsapp_web_s_form_and_the_same_every_attempt() {
        let reply = Uuid::now_v7();
        let first = message_id(reply, 0);
        assert_eq!(first.len(), 22);
        assert!(first.starts_with("3EB0"));
        assert!(
            first[4..]
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'A'..=b'F').contains(&b))
        );
        assert_eq!(message_id(reply, 0), first, "the same on a second attempt");
        assert_ne!(message_id(reply, 1), first, "each part its own");
        assert_ne!(message_id(Uuid::now_v7(), 0), first);
    }

    #[test]
    fn the_crate_s_send_failures_tell_the_outbox_whether_to_retry() {
        for unsent in [
            WaSendError::NotLoggedIn,
            WaSendError::Client(ClientError::NotConnected),
            WaSendError::Iq(IqError::NotConnected),
        ] {
            let err = send_error(unsent);
            assert!(matches!(err, SendError::NotConnected(_)), "{err:?}");
            assert!(err.certainly_unsent() && err.is_retryable());
        }
        let slow_down = send_error(WaSendError::Iq(IqError::ServerError {
            code: 429,
            text: "rate-overlimit".into(),
            error_type: None,
            backoff: Some(30),
        }));
        assert!(
            matches!(slow_down, SendError::RateLimited(_)),
            "{slow_down:?}"
        );
        let refused = send_error(WaSendError::InvalidRequest("bad jid".into()));
        assert_eq!(
            refused,
            SendError::Refused {
                reason: "bad jid".into(),
                code: Some("invalid_request".into()),
            }
        );
        assert!(!refused.is_retryable());
        // A failure after the message may have left: look before sending again.
        for maybe_sent in [
            WaSendError::Iq(IqError::Timeout),
            WaSendError::Internal(whatsapp_rust::anyhow::anyhow!("encrypt failed")),
        ] {
            let err = send_error(maybe_sent);
            assert!(matches!(err, SendError::Unknown(_)), "{err:?}");
            assert!(!err.certainly_unsent());
        }
    }
}
