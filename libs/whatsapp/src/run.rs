//! One run of an account's session: what the client says, reported in order until something
//! ends the run. Apart from the client itself, so tests drive it with the crate's events.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use whatsapp_rust::types::events::Event;
use whatsapp_rust::waproto::whatsapp as wa;
use whatsnap_connector::{ConnectorEvent, DisconnectReason, Ended, ObservedMessage};
use whatsnap_events::Attachment;

use crate::translate::{OwnIdentity, Translator, text_of};

/// How long the last words of a client that stopped by itself may take to arrive.
const LAST_WORDS: Duration = Duration::from_millis(500);

/// What the session asks the client beyond its events.
#[async_trait::async_trait]
pub(crate) trait Lookups: Send + Sync {
    /// The file of `message` as an attachment; `None` when it has none or it cannot be had
    /// (the message then says what came instead).
    async fn attachment(&self, message: &wa::Message) -> Option<Attachment>;

    /// The number (E.164) behind a LID (`…@lid`), when the client has learned it.
    async fn phone_of(&self, lid: &str) -> Option<String>;
}

/// How a run ended.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Outcome {
    pub ended: Ended,
    /// The client stopped by itself (otherwise it is still running and must be stopped).
    pub client_stopped: bool,
    /// The device was logged out: its keys are useless and the next link needs a new device.
    pub forget_device: bool,
}

struct Run<'f, O> {
    translator: Translator,
    lookups: &'f dyn Lookups,
    /// Linking by pairing code: the QR codes the server issues meanwhile are not shown, and
    /// their running out does not end the run.
    by_pairing_code: bool,
    own: O,
    events: mpsc::Sender<ConnectorEvent>,
    forget_device: bool,
    /// The last loss of the connection: the client recovers from it by itself, unless it stops.
    last_loss: Option<Ended>,
}

impl<O: Fn() -> OwnIdentity> Run<'_, O> {
    /// Gives a message the file it carries, in place of the note saying what came, and a
    /// sender named only by LID the number the client knows for it.
    async fn completed(&self, event: &Event, mut message: ObservedMessage) -> ObservedMessage {
        if message.peer.phone.is_none()
            && let Some(lid) = &message.peer.lid
        {
            message.peer.phone = self.lookups.phone_of(lid).await;
        }
        let Event::Messages(batch) = event else {
            return message;
        };
        let Some(inbound) = batch
            .iter()
            .find(|inbound| inbound.info.id == message.provider_message_id)
        else {
            return message;
        };
        if let Some(file) = self.lookups.attachment(&inbound.message).await {
            if text_of(&inbound.message).is_none() {
                message.body.clear();
            }
            message.attachments.push(file);
        }
        message
    }

    /// Reports an event of the client; `Some` when it ends the run.
    async fn report(&mut self, event: &Event) -> Option<Ended> {
        if self.by_pairing_code
            && matches!(
                event,
                Event::PairingQrCode(_) | Event::PairingQrCodesExhausted(_)
            )
        {
            return None;
        }
        if matches!(event, Event::Connected(_) | Event::PairSuccess(_)) {
            self.translator.set_own((self.own)());
        }
        if matches!(event, Event::LoggedOut(_)) {
            self.forget_device = true;
        }
        for out in self.translator.translate(event) {
            let out = match out {
                ConnectorEvent::Message(message) => {
                    ConnectorEvent::Message(self.completed(event, message).await)
                }
                other => other,
            };
            let mut ends = None;
            if let ConnectorEvent::Disconnected { reason, detail } = &out {
                let ended = Ended {
                    reason: *reason,
                    detail: detail.clone(),
                };
                if reason.reconnects() {
                    self.last_loss = Some(ended);
                } else {
                    ends = Some(ended);
                }
            }
            if self.events.send(out).await.is_err() {
                return Some(Ended {
                    reason: DisconnectReason::Stopped,
                    detail: "nobody listens to the session any more".into(),
                });
            }
            if ends.is_some() {
                return ends;
            }
        }
        None
    }
}

/// Reports what the client says (`from_client`) on `events` until the run ends: `stop` is
/// cancelled, the link ends for a reason the client does not recover from, or the client
/// stops (`client_done`). `own` reads the account's own number and name from the client,
/// `lookups` asks it for what messages carry and whose LIDs are whose; `by_pairing_code` when the link is made with a
/// pairing code rather than a QR code.
pub(crate) async fn drive<D, O>(
    mut from_client: mpsc::UnboundedReceiver<Arc<Event>>,
    mut client_done: D,
    own: O,
    lookups: &dyn Lookups,
    by_pairing_code: bool,
    events: mpsc::Sender<ConnectorEvent>,
    stop: CancellationToken,
) -> Outcome
where
    D: Future<Output = ()> + Unpin,
    O: Fn() -> OwnIdentity,
{
    let mut run = Run {
        translator: Translator::new(own()),
        lookups,
        by_pairing_code,
        own,
        events,
        forget_device: false,
        last_loss: None,
    };
    let mut client_stopped = false;
    let ended = loop {
        tokio::select! {
            biased;
            _ = stop.cancelled() => break Ended {
                reason: DisconnectReason::Stopped,
                detail: "whatsnap stopped the connection".into(),
            },
            Some(event) = from_client.recv() => {
                if let Some(ended) = run.report(&event).await {
                    break ended;
                }
            }
            _ = &mut client_done => {
                client_stopped = true;
                // What the client said last may still be on its way.
                let mut ended = None;
                while ended.is_none()
                    && let Ok(Some(event)) = tokio::time::timeout(LAST_WORDS, from_client.recv()).await
                {
                    ended = run.report(&event).await;
                }
                break ended.or(run.last_loss.take()).unwrap_or(Ended {
                    reason: DisconnectReason::ConnectionLost,
                    detail: "the whatsapp client stopped".into(),
                });
            }
        }
    };
    Outcome {
        ended,
        client_stopped,
        forget_device: run.forget_device,
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use whatsapp_rust::Jid;
    use whatsapp_rust::types::events::{
        BatchOrigin, ConnectFailureReason, InboundMessage, MessageBatch, TemporaryBan,
    };
    use whatsapp_rust::types::events::{
        Connected, Disconnected, LoggedOut, PairSuccess, PairingCode, PairingQrCode,
        PairingQrCodesExhausted, StreamReplaced,
    };
    use whatsapp_rust::types::message::{MessageInfo, MessageSource};
    use whatsapp_rust::wacore::net::DisconnectReason as TransportReason;
    use whatsnap_connector::LinkCode;

    use super::*;

    fn qr(code: &str) -> Event {
        Event::PairingQrCode(
            PairingQrCode::builder()
                .code(code.to_owned())
                .timeout(Duration::from_secs(60))
                .build(),
        )
    }

    fn paired() -> Event {
        let id: Jid = "15551234567:4@s.whatsapp.net".parse().unwrap();
        Event::PairSuccess(
            PairSuccess::builder()
                .id(id)
                .lid("100000012345678:4@lid".parse().unwrap())
                .business_name(String::new())
                .platform("android".to_owned())
                .build(),
        )
    }

    fn lost() -> Event {
        Event::Disconnected(
            Disconnected::builder()
                .reason(TransportReason::StreamEnded)
                .build(),
        )
    }

    fn logged_out() -> Event {
        Event::LoggedOut(
            LoggedOut::builder()
                .on_connect(false)
                .reason(ConnectFailureReason::LoggedOut)
                .build(),
        )
    }

    /// Downloads photos, and nothing else; knows one LID's number.
    struct PhotosOnly;

    #[async_trait::async_trait]
    impl Lookups for PhotosOnly {
        async fn attachment(&self, message: &wa::Message) -> Option<Attachment> {
            let file = crate::translate::file_of(message)?;
            (file.content_type == "image/jpeg").then(|| file.attachment(b"jpeg bytes"))
        }

        async fn phone_of(&self, lid: &str) -> Option<String> {
            (lid == "100000099887766@lid").then(|| "+15557654321".to_owned())
        }
    }

    fn inbound(id: &str, message: wa::Message) -> Event {
        inbound_from("15557654321@s.whatsapp.net", id, message)
    }

    fn inbound_from(sender: &str, id: &str, message: wa::Message) -> Event {
        let sender: Jid = sender.parse().unwrap();
        let info = MessageInfo {
            source: MessageSource {
                chat: sender.clone(),
                sender,
                ..Default::default()
            },
            id: id.into(),
            ..Default::default()
        };
        Event::Messages(
            MessageBatch::builder()
                .messages(Arc::from(vec![
                    InboundMessage::builder()
                        .message(Arc::new(message))
                        .info(Arc::new(info))
                        .build(),
                ]))
                .origin(BatchOrigin::Live)
                .build(),
        )
    }

    struct Rig {
        to_session: mpsc::UnboundedSender<Arc<Event>>,
        heard: mpsc::Receiver<ConnectorEvent>,
        stop: CancellationToken,
        client_stops: Option<tokio::sync::oneshot::Sender<()>>,
        outcome: tokio::task::JoinHandle<Outcome>,
    }

    /// A run whose client is this test: it says what the test feeds it, and stops when told.
    fn rig() -> Rig {
        rig_linking(false)
    }

    fn rig_linking(by_pairing_code: bool) -> Rig {
        let (to_session, from_client) = mpsc::unbounded_channel();
        let (events, heard) = mpsc::channel(64);
        let stop = CancellationToken::new();
        let (client_stops, stopped) = tokio::sync::oneshot::channel::<()>();
        let done = Box::pin(async move {
            let _ = stopped.await;
        });
        let own = || OwnIdentity {
            phone_number: Some("+15551234567".into()),
            display_name: Some("Ana".into()),
        };
        let stopping = stop.clone();
        let outcome = tokio::spawn(async move {
            drive(
                from_client,
                done,
                own,
                &PhotosOnly,
                by_pairing_code,
                events,
                stopping,
            )
            .await
        });
        Rig {
            to_session,
            heard,
            stop,
            client_stops: Some(client_stops),
            outcome,
        }
    }

    impl Rig {
        fn say(&self, event: Event) {
            self.to_session.send(Arc::new(event)).unwrap();
        }

        async fn hear(&mut self) -> ConnectorEvent {
            tokio::time::timeout(Duration::from_secs(5), self.heard.recv())
                .await
                .expect("the session reports in time")
                .expect("the session reports")
        }

        async fn end(self) -> Outcome {
            tokio::time::timeout(Duration::from_secs(5), self.outcome)
                .await
                .expect("the run ends in time")
                .unwrap()
        }
    }

    #[tokio::test]
    async fn a_scan_then_a_logout_ends_the_run_and_forgets_the_device() {
        let mut rig = rig();
        rig.say(qr("2@one"));
        rig.say(paired());
        rig.say(Event::Connected(Connected::builder().build()));
        rig.say(logged_out());
        assert!(matches!(
            rig.hear().await,
            ConnectorEvent::Linking(LinkCode::Qr { .. })
        ));
        assert_eq!(
            rig.hear().await,
            ConnectorEvent::Connected {
                phone_number: Some("+15551234567".into()),
                display_name: Some("Ana".into()),
            }
        );
        assert!(matches!(
            rig.hear().await,
            ConnectorEvent::Disconnected {
                reason: DisconnectReason::LoggedOut,
                ..
            }
        ));
        let outcome = rig.end().await;
        assert_eq!(outcome.ended.reason, DisconnectReason::LoggedOut);
        assert!(outcome.forget_device);
        assert!(!outcome.client_stopped, "the session stops the client");
    }

    #[tokio::test]
    async fn a_lost_connection_is_reported_and_the_run_goes_on_until_stopped() {
        let mut rig = rig();
        rig.say(Event::Connected(Connected::builder().build()));
        rig.say(lost());
        rig.say(Event::Connected(Connected::builder().build()));
        assert!(matches!(rig.hear().await, ConnectorEvent::Connected { .. }));
        assert!(matches!(
            rig.hear().await,
            ConnectorEvent::Disconnected {
                reason: DisconnectReason::ConnectionLost,
                ..
            }
        ));
        assert!(matches!(rig.hear().await, ConnectorEvent::Connected { .. }));
        rig.stop.cancel();
        let outcome = rig.end().await;
        assert_eq!(outcome.ended.reason, DisconnectReason::Stopped);
        assert!(!outcome.forget_device && !outcome.client_stopped);
    }

    #[tokio::test]
    async fn a_client_that_stops_after_being_replaced_ends_the_run_with_why() {
        let mut rig = rig();
        rig.say(Event::StreamReplaced(StreamReplaced::builder().build()));
        assert!(matches!(
            rig.hear().await,
            ConnectorEvent::Disconnected {
                reason: DisconnectReason::ConnectionLost,
                ..
            }
        ));
        rig.client_stops.take().unwrap().send(()).unwrap();
        let outcome = rig.end().await;
        assert!(outcome.client_stopped);
        assert_eq!(outcome.ended.reason, DisconnectReason::ConnectionLost);
        assert!(
            outcome.ended.detail.contains("replaced"),
            "{:?}",
            outcome.ended
        );
    }

    #[tokio::test]
    async fn the_last_words_of_a_stopping_client_decide_how_the_run_ends() {
        let mut rig = rig();
        rig.client_stops.take().unwrap().send(()).unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        rig.say(Event::TemporaryBan(
            TemporaryBan::builder()
                .code(whatsapp_rust::types::events::TempBanReason::BlockedByUsers)
                .expire(chrono::Duration::hours(1))
                .build(),
        ));
        assert!(matches!(
            rig.hear().await,
            ConnectorEvent::Disconnected {
                reason: DisconnectReason::Banned,
                ..
            }
        ));
        let outcome = rig.end().await;
        assert_eq!(outcome.ended.reason, DisconnectReason::Banned);
        assert!(outcome.client_stopped);
    }

    #[tokio::test]
    async fn linking_by_pairing_code_shows_the_code_not_the_qr_codes() {
        let mut rig = rig_linking(true);
        rig.say(qr("2@one"));
        rig.say(Event::PairingQrCodesExhausted(
            PairingQrCodesExhausted::builder()
                .disconnected(false)
                .build(),
        ));
        rig.say(Event::PairingCode(
            PairingCode::builder()
                .code("ABCD-EFGH".to_owned())
                .timeout(Duration::from_secs(180))
                .build(),
        ));
        assert!(matches!(
            rig.hear().await,
            ConnectorEvent::Linking(LinkCode::Pairing { .. })
        ));
        rig.stop.cancel();
        assert_eq!(rig.end().await.ended.reason, DisconnectReason::Stopped);
    }

    #[tokio::test]
    async fn a_photo_arrives_as_its_file_and_what_cannot_be_had_as_a_note() {
        use whatsapp_rust::buffa::MessageField;
        let mut rig = rig();
        let photo = |caption: Option<&str>| wa::Message {
            image_message: MessageField::some(wa::message::ImageMessage {
                mimetype: Some("image/jpeg".into()),
                caption: caption.map(str::to_owned),
                ..Default::default()
            }),
            ..Default::default()
        };
        rig.say(inbound("P1", photo(None)));
        rig.say(inbound("P2", photo(Some("the cake"))));
        rig.say(inbound(
            "D1",
            wa::Message {
                document_message: MessageField::some(wa::message::DocumentMessage {
                    file_name: Some("menu.pdf".into()),
                    ..Default::default()
                }),
                ..Default::default()
            },
        ));
        let mut heard = Vec::new();
        for _ in 0..3 {
            match rig.hear().await {
                ConnectorEvent::Message(message) => heard.push(message),
                other => panic!("not a message: {other:?}"),
            }
        }
        assert_eq!(heard[0].body, "", "the photo itself, no note");
        assert_eq!(
            heard[0].attachments[0].url,
            "data:image/jpeg;base64,anBlZyBieXRlcw=="
        );
        assert_eq!(heard[1].body, "the cake");
        assert_eq!(heard[1].attachments.len(), 1);
        assert_eq!(heard[2].body, "[document: menu.pdf]");
        assert!(heard[2].attachments.is_empty());
        rig.stop.cancel();
        rig.end().await;
    }

    #[tokio::test]
    async fn a_sender_named_by_lid_alone_gets_the_number_the_client_learned() {
        let mut rig = rig();
        let text = || wa::Message {
            conversation: Some("hi".into()),
            ..Default::default()
        };
        rig.say(inbound_from("100000099887766@lid", "L1", text()));
        rig.say(inbound_from("100000011111111@lid", "L2", text()));
        let mut peers = Vec::new();
        for _ in 0..2 {
            match rig.hear().await {
                ConnectorEvent::Message(message) => peers.push(message.peer),
                other => panic!("not a message: {other:?}"),
            }
        }
        assert_eq!(peers[0].phone.as_deref(), Some("+15557654321"));
        assert_eq!(peers[0].lid.as_deref(), Some("100000099887766@lid"));
        assert_eq!(peers[1].phone, None, "an unknown LID stays a LID");
        rig.stop.cancel();
        rig.end().await;
    }

    #[tokio::test]
    async fn nobody_listening_ends_the_run() {
        let rig = rig();
        let Rig {
            to_session,
            heard,
            outcome,
            ..
        } = rig;
        drop(heard);
        to_session.send(Arc::new(qr("2@one"))).unwrap();
        let outcome = outcome.await.unwrap();
        assert_eq!(outcome.ended.reason, DisconnectReason::Stopped);
    }
}
