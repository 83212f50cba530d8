//! The world around a `whatsnap serve` that takes Twilio texts to GHL: a fake GHL, a fake Twilio
//! with the agency's account and number, and the locations connected with their Twilio account.

use std::net::SocketAddr;
use whatsnap_proto::ghlsync::v1 as ghlsync;
use whatsnap_proto::session::v1 as session;

use whatsnap_testkit::{Channel, TwilioText};
use whatsnap_testkit::{FakeGhl, FakeTwilio, FakeTwilioAccount, TestBackend};

pub const SID: &str = "AC0123456789abcdef0123456789abcdef";
pub const TOKEN: &str = "twilio-auth-token-of-the-agency";
pub const NUMBER: &str = "+15005550006";
pub const SECRET_KEY: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";

/// `from` texts the agency's number as Twilio delivers it: the form signed with the account's
/// Auth Token, posted to `path` (an account's inbound webhook) at `http`, with the message id
/// `sid`. The status and body whatsnap answered.
pub async fn text(
    http: SocketAddr,
    path: &str,
    sid: &str,
    from: &str,
    body: &str,
) -> anyhow::Result<(u16, String)> {
    let text = TwilioText {
        account_sid: SID,
        message_sid: sid,
        from,
        to: NUMBER,
        body,
        extra: &[],
    };
    text.post(http, path, TOKEN).await
}

pub struct TwilioRig {
    pub ghl: FakeGhl,
    pub twilio: FakeTwilio,
}

impl TwilioRig {
    pub async fn start() -> Self {
        let ghl = FakeGhl::start().await.expect("the fake GHL");
        let twilio = FakeTwilio::start().await.expect("the fake Twilio");
        twilio.add_account(FakeTwilioAccount {
            sid: SID.into(),
            auth_token: TOKEN.into(),
            status: "active".into(),
            numbers: vec![(NUMBER.into(), true)],
        });
        Self { ghl, twilio }
    }

    /// `whatsnap serve`'s arguments on `backend`, on free ports, against the fakes.
    pub fn serve_args(&self, backend: &TestBackend) -> Vec<String> {
        let mut args = backend.args();
        args.extend(
            [
                "--secret-key",
                SECRET_KEY,
                "--grpc-addr",
                "127.0.0.1:0",
                "--http-addr",
                "127.0.0.1:0",
                "--twilio-base-url",
                &self.twilio.base_url(),
                "--ghl-api-url",
                &self.ghl.base_url(),
                "--ghl-conversation-provider-id",
                "whatsnapProvider0001",
            ]
            .map(str::to_owned),
        );
        args
    }

    /// Connects `location` with a Private Integration Token the fake GHL knows and adds the
    /// agency's Twilio number to it as the account "Sales"; the account's id.
    pub async fn connect(&self, channel: Channel, location: &str) -> String {
        let token = format!("pit-{location}-0000-0000");
        self.ghl.add_private_token(location, &token);
        ghlsync::ghl_sync_service_client::GhlSyncServiceClient::new(channel.clone())
            .connect_private_token(ghlsync::ConnectPrivateTokenRequest {
                location_id: location.into(),
                token,
                company_id: FakeGhl::COMPANY_ID.into(),
            })
            .await
            .expect("the location connects");
        session::session_service_client::SessionServiceClient::new(channel)
            .add_account(session::AddAccountRequest {
                location_id: location.into(),
                kind: session::AccountKind::Twilio as i32,
                name: "Sales".into(),
                phone_number: NUMBER.into(),
                twilio: Some(session::TwilioCredentials {
                    account_sid: SID.into(),
                    auth_token: TOKEN.into(),
                }),
                ..Default::default()
            })
            .await
            .expect("the Twilio account is added")
            .into_inner()
            .account_id
    }

    /// How many messages GHL has in `location`'s conversations.
    pub fn messages_in(&self, location: &str) -> usize {
        self.ghl
            .contacts(location)
            .iter()
            .map(|c| self.ghl.messages(&c.id).len())
            .sum()
    }
}
