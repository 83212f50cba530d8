//! `whatsnap serve --demo`: the round trip on one machine with nothing else running. A fake GHL,
//! a fake Twilio and a fake Evolution API (the ones the tests use) start on loopback and
//! whatsnap is pointed at them; then a customer texts the demo Twilio number, the contact and
//! message appear in the fake GHL, a GHL user replies, Twilio delivers it and GHL hears so. Then
//! a WhatsApp account is linked: its QR code is printed in the terminal, the fake phone
//! "scans" it, and a message goes both ways — each step printed as it happens. whatsnap keeps
//! serving afterwards, so the CLI (`whatsnap trace …`) can look around.
#![allow(clippy::print_stdout)] // the demo tells its story on stdout

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context, bail};
use tonic::transport::Channel;
use whatsnap_fakes::evolution::{FakeEvolution, FakeEvolutionIncoming};
use whatsnap_fakes::{FakeGhl, FakeTwilio, FakeTwilioAccount};
use whatsnap_proto::ghlsync::v1 as ghlsync;
use whatsnap_proto::session::v1 as session;

pub const LOCATION: &str = "demoLocation";
const SID: &str = "ACdemo0000000000000000000000000000";
const TOKEN: &str = "demo-twilio-auth-token";
const NUMBER: &str = "+15005550006";
const CUSTOMER: &str = "+14155550123";
const WHATSAPP_NUMBER: &str = "+5511912345678";
const WHATSAPP_CUSTOMER: &str = "+5511987654321";

/// The fakes a demo runs against; they stop when this is dropped.
pub struct Demo {
    pub ghl: FakeGhl,
    pub twilio: FakeTwilio,
    pub evolution: FakeEvolution,
}

impl Demo {
    pub async fn start() -> anyhow::Result<Self> {
        let ghl = FakeGhl::start().await.context("starting the fake GHL")?;
        let twilio = FakeTwilio::start()
            .await
            .context("starting the fake Twilio")?;
        twilio.add_account(FakeTwilioAccount {
            sid: SID.into(),
            auth_token: TOKEN.into(),
            status: "active".into(),
            numbers: vec![(NUMBER.into(), true)],
        });
        ghl.set_downstream_delay(Duration::from_millis(500));
        let evolution = FakeEvolution::start()
            .await
            .context("starting the fake Evolution API")?;
        Ok(Self {
            ghl,
            twilio,
            evolution,
        })
    }

    /// Plays the round trip against this whatsnap, printing each step.
    pub async fn play(
        &self,
        grpc: SocketAddr,
        http: SocketAddr,
        token: &whatsnap_auth::ApiToken,
    ) -> anyhow::Result<()> {
        let channel = Channel::from_shared(format!("http://{grpc}"))?
            .connect()
            .await?;
        let channel = whatsnap_auth::authed(channel, Some(token.expose()));
        let pit = "pit-demo-0000-0000-0000";
        self.ghl.add_private_token(LOCATION, pit);
        ghlsync::ghl_sync_service_client::GhlSyncServiceClient::new(channel.clone())
            .connect_private_token(ghlsync::ConnectPrivateTokenRequest {
                location_id: LOCATION.into(),
                token: pit.into(),
                company_id: FakeGhl::COMPANY_ID.into(),
            })
            .await?;
        println!("demo: GHL location {LOCATION} connected with a Private Integration Token");
        let account = session::session_service_client::SessionServiceClient::new(channel.clone())
            .add_account(session::AddAccountRequest {
                location_id: LOCATION.into(),
                kind: session::AccountKind::Twilio as i32,
                name: "Demo line".into(),
                phone_number: NUMBER.into(),
                twilio: Some(session::TwilioCredentials {
                    account_sid: SID.into(),
                    auth_token: TOKEN.into(),
                }),
                ..Default::default()
            })
            .await?
            .into_inner();
        println!(
            "demo: Twilio number {NUMBER} added as account {} (tag {})",
            account.name, account.tag
        );

        let path = format!("/webhooks/twilio/{LOCATION}/{}/inbound", account.account_id);
        let url = format!("http://{http}{path}");
        let params: Vec<(String, String)> = [
            ("MessageSid", "SMdemo00000000000000000000000001"),
            ("AccountSid", SID),
            ("From", CUSTOMER),
            ("To", NUMBER),
            ("Body", "Hi! Are you open today?"),
            ("NumMedia", "0"),
        ]
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
        let signature = whatsnap_twilio::signature::sign(TOKEN, &url, &params);
        let status = reqwest::Client::new()
            .post(&url)
            .header("X-Twilio-Signature", signature)
            .form(&params)
            .send()
            .await?
            .status();
        if !status.is_success() {
            bail!("the signed Twilio webhook was answered {status}");
        }
        println!("demo: {CUSTOMER} texted {NUMBER}: \"Hi! Are you open today?\"");

        let contact = wait("the contact in GHL", || async {
            let contact = self.ghl.contact_by_phone(LOCATION, CUSTOMER)?;
            (!self.ghl.messages(&contact.id).is_empty()).then_some(contact)
        })
        .await?;
        println!(
            "demo: GHL has contact {} ({CUSTOMER}) tagged {:?}, with the message in its conversation",
            contact.id, contact.tags
        );

        let delivery = format!("http://{http}/webhooks/ghl/delivery");
        let (ghl_message, status) = self
            .ghl
            .send_provider_outbound(
                &delivery,
                LOCATION,
                &contact.id,
                "Yes, until 6pm!",
                Some("demoUser"),
            )
            .await?;
        if status != 200 {
            bail!("the Delivery URL answered {status}");
        }
        println!("demo: a GHL user replied \"Yes, until 6pm!\"");
        let sent = wait("the reply through Twilio", || async {
            self.twilio.sent().into_iter().find(|m| m.to == CUSTOMER)
        })
        .await?;
        println!(
            "demo: Twilio sent it from {} to {} ({})",
            sent.from, sent.to, sent.sid
        );
        self.twilio
            .report_status(&sent.sid, "delivered", None)
            .await?;
        wait("the delivery status in GHL", || async {
            self.ghl
                .status_updates(&ghl_message)
                .into_iter()
                .find(|u| u.http_status == 200)
        })
        .await?;
        println!("demo: GHL was told the reply was delivered");
        self.whatsapp(channel, &delivery).await?;
        println!(
            "demo: done. Look around: `whatsnap trace {CUSTOMER} --location {LOCATION}`, \
             `whatsnap ghl status --location {LOCATION}`; Ctrl-C stops"
        );
        Ok(())
    }
}

impl Demo {
    /// A WhatsApp account through the fake Evolution API: linked by QR code (printed here),
    /// then a message each way.
    async fn whatsapp(
        &self,
        channel: whatsnap_auth::AuthedChannel,
        delivery: &str,
    ) -> anyhow::Result<()> {
        let mut accounts = session::session_service_client::SessionServiceClient::new(channel);
        let account = accounts
            .add_account(session::AddAccountRequest {
                location_id: LOCATION.into(),
                kind: session::AccountKind::Whatsapp as i32,
                name: "Demo WhatsApp".into(),
                engine: "evolution".into(),
                ..Default::default()
            })
            .await?
            .into_inner();
        println!(
            "demo: WhatsApp account {} added through Evolution (tag {})",
            account.name, account.tag
        );
        accounts
            .set_pacing(session::SetPacingRequest {
                location_id: LOCATION.into(),
                account_id: account.account_id.clone(),
                ..Default::default()
            })
            .await?;
        accounts
            .connect_account(session::ConnectAccountRequest {
                location_id: LOCATION.into(),
                account_id: account.account_id.clone(),
                pairing_phone_number: String::new(),
            })
            .await?;
        let instance = format!("whatsnap-{}", account.account_id.replace('-', ""));
        let code = wait("a QR code", || async {
            self.evolution.instance(&instance)?.qr_code
        })
        .await?;
        println!("demo: scan this with WhatsApp (Linked devices > Link a device):");
        println!("{}", crate::cli::render_qr(&code)?);
        self.evolution
            .scan(&instance, WHATSAPP_NUMBER, "Demo WhatsApp")
            .await?;
        let connected = wait("the account connected", || {
            let mut accounts = accounts.clone();
            let account_id = account.account_id.clone();
            async move {
                let account = accounts
                    .get_account(session::GetAccountRequest {
                        location_id: LOCATION.into(),
                        account_id,
                    })
                    .await
                    .ok()?
                    .into_inner();
                (account.status == "connected").then_some(account)
            }
        })
        .await?;
        println!(
            "demo: the fake phone scanned it: connected as {}",
            connected.phone_number
        );
        self.evolution
            .receive(
                &instance,
                FakeEvolutionIncoming::text(WHATSAPP_CUSTOMER, "Oi! Vocês entregam?")
                    .push_name("Bia"),
            )
            .await?;
        println!("demo: Bia ({WHATSAPP_CUSTOMER}) wrote on WhatsApp: \"Oi! Vocês entregam?\"");
        let contact = wait("Bia in GHL", || async {
            let contact = self.ghl.contact_by_phone(LOCATION, WHATSAPP_CUSTOMER)?;
            (!self.ghl.messages(&contact.id).is_empty()).then_some(contact)
        })
        .await?;
        println!(
            "demo: GHL has contact {} (Bia) tagged {:?}",
            contact.id, contact.tags
        );
        let (ghl_message, status) = self
            .ghl
            .send_provider_outbound(
                delivery,
                LOCATION,
                &contact.id,
                "Sim, até as 22h!",
                Some("demoUser"),
            )
            .await?;
        if status != 200 {
            bail!("the Delivery URL answered {status}");
        }
        let sent = wait("the reply through WhatsApp", || async {
            self.evolution
                .sent()
                .into_iter()
                .find(|m| m.text() == Some("Sim, até as 22h!"))
        })
        .await?;
        println!("demo: a GHL user replied \"Sim, até as 22h!\"; it left through WhatsApp");
        // Evolution reports the read; whatsnap answers 503 (and Evolution tries again) until the
        // send is recorded.
        wait("the read receipt in GHL", || async {
            let answered = self.evolution.mark_read(&sent.id).await.ok()??;
            (answered == 200).then_some(())?;
            self.ghl
                .status_updates(&ghl_message)
                .into_iter()
                .find(|u| u.http_status == 200 && u.status == "read")
        })
        .await?;
        println!("demo: Bia read it, and GHL was told so");
        Ok(())
    }
}

async fn wait<T, F: Future<Output = Option<T>>>(
    what: &str,
    mut attempt: impl FnMut() -> F,
) -> anyhow::Result<T> {
    for _ in 0..600 {
        if let Some(value) = attempt().await {
            return Ok(value);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    bail!("the demo waited 30 s for {what}")
}
