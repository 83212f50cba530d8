//! The operator CLI: each command is a gRPC call to a running `whatsnap serve` (the gateway in a
//! split deployment), printed for people.
#![allow(clippy::print_stdout)] // printing results is what the CLI is for

use anyhow::Context;
use clap::{Args, Subcommand, ValueEnum};
use futures::StreamExt;
use tonic::transport::Channel;
use whatsnap_proto::assignment::v1 as assignment;
use whatsnap_proto::contacts::v1 as contacts;
use whatsnap_proto::display::{minutes, short, user_or_unassigned};
use whatsnap_proto::events::v1 as events;
use whatsnap_proto::operations::v1 as operations;
use whatsnap_proto::session::v1 as session;

#[derive(Debug, Args)]
pub struct Server {
    /// The gRPC address of a running whatsnap (its gateway); https://… for a server started
    /// with --tls-cert.
    #[arg(
        long,
        env = "WHATSNAP_SERVER",
        default_value = "http://127.0.0.1:50051",
        global = true
    )]
    server: String,
    /// The API token to call with (`whatsnap tokens create` issues them). Without it (and
    /// without WHATSNAP_TOKEN), the token in --token-file is used when that file is readable:
    /// the first admin token a fresh embedded `whatsnap serve` wrote there.
    #[arg(long, env = "WHATSNAP_TOKEN", hide_env_values = true, global = true)]
    token: Option<String>,
    /// Where to read the token when none is given: the admin token of an embedded `whatsnap
    /// serve` run in this directory.
    #[arg(
        long,
        env = "WHATSNAP_TOKEN_FILE",
        default_value = "whatsnap-data/admin-token",
        global = true
    )]
    token_file: std::path::PathBuf,
    /// The certificate (PEM) of the authority that signed the server's, for --server
    /// https://… with a private or self-signed certificate; the system's roots otherwise.
    #[arg(long, env = "WHATSNAP_CA_CERT", global = true)]
    ca_cert: Option<std::path::PathBuf>,
}

impl Server {
    async fn channel(&self) -> anyhow::Result<whatsnap_auth::AuthedChannel> {
        let mut endpoint = Channel::from_shared(self.server.clone())
            .with_context(|| format!("--server {}", self.server))?;
        if self.server.starts_with("https://") {
            let mut tls = tonic::transport::ClientTlsConfig::new().with_native_roots();
            if let Some(path) = &self.ca_cert {
                let pem =
                    std::fs::read(path).with_context(|| format!("--ca-cert {}", path.display()))?;
                tls = tls.ca_certificate(tonic::transport::Certificate::from_pem(pem));
            }
            endpoint = endpoint.tls_config(tls).context("--server https://…")?;
        }
        let channel = endpoint.connect().await.with_context(|| {
            format!(
                "cannot reach whatsnap at {} (is `whatsnap serve` running?)",
                self.server
            )
        })?;
        Ok(whatsnap_auth::authed(channel, self.token().as_deref()))
    }

    /// --token, else the token file's.
    fn token(&self) -> Option<String> {
        self.token.clone().or_else(|| {
            std::fs::read_to_string(&self.token_file)
                .ok()
                .map(|t| t.trim().to_owned())
        })
    }
}

fn status(err: tonic::Status) -> anyhow::Error {
    anyhow::anyhow!("{}: {}", err.code(), err.message())
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Kind {
    Whatsapp,
    /// SMS through an Android phone running SMSGate.
    #[value(alias = "android")]
    AndroidSms,
    /// iMessage (and SMS) through a Mac running BlueBubbles Server.
    #[value(alias = "mac")]
    Imessage,
    Twilio,
}

#[derive(Debug, Subcommand)]
pub enum AccountsCommand {
    /// List accounts, of one location or of all.
    List {
        #[arg(long)]
        location: Option<String>,
        #[command(flatten)]
        server: Server,
    },
    /// Add an account; prints its id and tag.
    Add {
        #[arg(long)]
        location: String,
        #[arg(long, value_enum)]
        kind: Kind,
        #[arg(long)]
        name: String,
        /// The account's own number, with country code.
        #[arg(long)]
        phone: Option<String>,
        /// A Twilio account's Account SID.
        #[arg(long, env = "TWILIO_ACCOUNT_SID")]
        twilio_account_sid: Option<String>,
        /// A Twilio account's Auth Token (better given in TWILIO_AUTH_TOKEN than on the command
        /// line).
        #[arg(long, env = "TWILIO_AUTH_TOKEN", hide_env_values = true)]
        twilio_auth_token: Option<String>,
        /// The engine that drives the account (WhatsApp: `embedded`, `evolution` or `cloud`,
        /// the official Cloud API); the
        /// deployment's default for the kind when not given.
        #[arg(long)]
        engine: Option<String>,
        /// An engine setting, NAME=VALUE, repeatable (Evolution: `instance_name=acme-1`,
        /// `api_key=...`; Cloud API: `phone_number_id=...`, `access_token=...`,
        /// `app_secret=...`).
        #[arg(long = "setting", value_name = "NAME=VALUE")]
        settings: Vec<String>,
        /// A device account (Android phone, Mac): print how to pair it and return, without
        /// waiting until the device is seen.
        #[arg(long)]
        no_wait: bool,
        /// A device account: give up waiting for the device after this many seconds (it stays
        /// added, and connects when the device is seen).
        #[arg(long, default_value = "600")]
        timeout: u64,
        #[command(flatten)]
        server: Server,
    },
    /// Show one account: its engine, status and why, and how fast it sends.
    Show {
        #[arg(long)]
        location: String,
        account_id: String,
        #[command(flatten)]
        server: Server,
    },
    /// Set how fast an account sends, against WhatsApp bans: replies from the number leave at
    /// least INTERVAL seconds apart plus up to JITTER seconds at random, each after TYPING
    /// seconds of "typing…" (WhatsApp).
    Pacing {
        #[arg(long)]
        location: String,
        account_id: String,
        #[arg(long, value_name = "SECONDS")]
        interval: f64,
        #[arg(long, value_name = "SECONDS", default_value = "0")]
        jitter: f64,
        #[arg(long, value_name = "SECONDS", default_value = "0")]
        typing: f64,
        #[command(flatten)]
        server: Server,
    },
    /// Link a WhatsApp account's device: shows the QR code to scan with the phone (WhatsApp >
    /// Linked devices > Link a device), replaced as it rotates, until the account is connected
    /// or the codes run out.
    Connect {
        #[arg(long)]
        location: String,
        account_id: String,
        /// Link with a pairing code typed on the phone with this number instead of a QR code.
        #[arg(long)]
        pairing_phone: Option<String>,
        /// Give up waiting after this many seconds.
        #[arg(long, default_value = "300")]
        timeout: u64,
        #[command(flatten)]
        server: Server,
    },
    /// Disconnect a linked account (WhatsApp, an Android phone, a Mac) without removing it: its
    /// device is logged out and nothing reconnects it until `accounts connect` links it again
    /// (a new QR code). Its tag, contacts and history stay.
    Disconnect {
        #[arg(long)]
        location: String,
        account_id: String,
        #[command(flatten)]
        server: Server,
    },
    /// Move a WhatsApp account to another engine of the deployment (embedded, evolution),
    /// keeping its id, tag and contacts; then `accounts connect` links it there (a new QR code).
    /// Disconnect it first if it is linked.
    SetEngine {
        #[arg(long)]
        location: String,
        account_id: String,
        engine: String,
        #[command(flatten)]
        server: Server,
    },
    /// Remove an account; its tag stays on its contacts.
    Remove {
        #[arg(long)]
        location: String,
        account_id: String,
        #[arg(long, default_value = "")]
        reason: String,
        #[command(flatten)]
        server: Server,
    },
    /// Give a Twilio account a new Auth Token, checked with Twilio first; the account keeps its
    /// id, tag and contacts. The token is read from TWILIO_AUTH_TOKEN, or from the first line of
    /// standard input when neither it nor --auth-token is given, so it stays out of the shell's
    /// history.
    RotateCredentials {
        #[arg(long)]
        location: String,
        #[arg(long)]
        account: String,
        /// The new Auth Token (better given in TWILIO_AUTH_TOKEN or on standard input).
        #[arg(long, env = "TWILIO_AUTH_TOKEN", hide_env_values = true)]
        auth_token: Option<String>,
        #[command(flatten)]
        server: Server,
    },
}

fn print_account_details(account: &session::Account) {
    let kind = kind_name(account);
    let or_none = |text: &str| {
        if text.is_empty() {
            "-".to_owned()
        } else {
            text.to_owned()
        }
    };
    println!("account   {}", account.account_id);
    println!("location  {}", account.location_id);
    println!("name      {}", account.name);
    println!("kind      {kind} ({})", or_none(&account.engine));
    println!("tag       {}", account.tag);
    println!("number    {}", or_none(&account.phone_number));
    println!("status    {}", account.status);
    println!("why       {}", or_none(&account.status_reason));
    println!("pacing    {}", or_none(&account.pacing));
}

/// Asks to link the account, then shows each code and state as it is recorded, until the
/// account is connected (Ok) or stops without connecting (an error that says why and what to
/// do).
async fn connect_account(
    channel: whatsnap_auth::AuthedChannel,
    location: String,
    account_id: String,
    pairing_phone: Option<String>,
) -> anyhow::Result<()> {
    let mut client = session::session_service_client::SessionServiceClient::new(channel);
    let requested = client
        .connect_account(session::ConnectAccountRequest {
            location_id: location.clone(),
            account_id: account_id.clone(),
            pairing_phone_number: pairing_phone.unwrap_or_default(),
        })
        .await;
    if let Err(refused) = &requested
        && refused.message().contains("already connected")
    {
        println!("{}", refused.message());
        return Ok(());
    }
    requested.map_err(status)?;
    let mut updates = client
        .watch_account(session::WatchAccountRequest {
            location_id: location,
            account_id,
        })
        .await
        .map_err(status)?
        .into_inner();
    println!("waiting for the engine to issue a code…");
    while let Some(update) = updates.message().await.map_err(status)? {
        let Some(account) = update.account else {
            continue;
        };
        let expires = chrono::DateTime::from_timestamp_millis(update.code_expires_at_ms)
            .map(|at| (at - chrono::Utc::now()).num_seconds().max(0))
            .unwrap_or_default();
        if !update.qr_code.is_empty() {
            // Clear the screen, so that the new code replaces the old one.
            print!("\x1b[2J\x1b[H");
            println!("{}", render_qr(&update.qr_code)?);
            println!(
                "Scan with WhatsApp on the phone: Settings > Linked devices > Link a device. This code works for {expires} s; a new one replaces it."
            );
            println!("qr: {}", update.qr_code);
        } else if !update.pairing_code.is_empty() {
            println!(
                "On the phone: WhatsApp > Linked devices > Link a device > Link with phone number instead, then type {} (valid {expires} s)",
                update.pairing_code
            );
        }
        match account.status.as_str() {
            "connected" => {
                println!(
                    "connected{}",
                    Some(account.phone_number.as_str())
                        .filter(|n| !n.is_empty())
                        .map(|n| format!(" as {n}"))
                        .unwrap_or_default()
                );
                return Ok(());
            }
            "disconnected" | "logged_out" if !account.status_reason.is_empty() => {
                anyhow::bail!("not connected: {}", account.status_reason);
            }
            "removed" => anyhow::bail!("the account was removed"),
            _ => {}
        }
    }
    anyhow::bail!("the server stopped sending updates; run `whatsnap accounts connect` again")
}

/// How to pair a device account, step by step.
fn print_pairing(pairing: &session::DevicePairing) {
    println!();
    println!("To pair the device:");
    for (number, step) in pairing.steps.iter().enumerate() {
        println!("  {}. {step}", number + 1);
    }
    if !pairing.webhook_url.is_empty() {
        println!("webhook URL  {}", pairing.webhook_url);
    }
    if !pairing.secret.is_empty() {
        println!("secret       {}", pairing.secret);
    }
}

/// Waits until the device of a newly added account is seen (Ok), or the account stops
/// without connecting (an error that says why).
async fn wait_for_device(
    mut client: session::session_service_client::SessionServiceClient<whatsnap_auth::AuthedChannel>,
    location: String,
    account_id: String,
) -> anyhow::Result<()> {
    let mut updates = client
        .watch_account(session::WatchAccountRequest {
            location_id: location,
            account_id,
        })
        .await
        .map_err(status)?
        .into_inner();
    println!("waiting for the device…");
    let mut last_reason = String::new();
    while let Some(update) = updates.message().await.map_err(status)? {
        let Some(account) = update.account else {
            continue;
        };
        match account.status.as_str() {
            "connected" => {
                println!("connected: the device was seen");
                return Ok(());
            }
            "removed" => anyhow::bail!("the account was removed"),
            _ if !account.status_reason.is_empty() && account.status_reason != last_reason => {
                println!("not yet: {}", account.status_reason);
                last_reason = account.status_reason;
            }
            _ => {}
        }
    }
    anyhow::bail!(
        "the server stopped sending updates; `whatsnap accounts show` tells the account's state"
    )
}

/// A QR code for a terminal: two rows of modules per line of text.
pub(crate) fn render_qr(data: &str) -> anyhow::Result<String> {
    let code = qrcode::QrCode::new(data.as_bytes()).context("making the QR code")?;
    Ok(code
        .render::<qrcode::render::unicode::Dense1x2>()
        .dark_color(qrcode::render::unicode::Dense1x2::Light)
        .light_color(qrcode::render::unicode::Dense1x2::Dark)
        .quiet_zone(true)
        .build())
}

/// The first line of standard input, for a secret that should not be an argument.
fn secret_from_stdin(what: &str) -> anyhow::Result<String> {
    let mut line = String::new();
    std::io::stdin()
        .read_line(&mut line)
        .with_context(|| format!("reading the {what} from standard input"))?;
    let secret = line.trim().to_owned();
    anyhow::ensure!(
        !secret.is_empty(),
        "no {what}: give it in TWILIO_AUTH_TOKEN, with --auth-token, or on standard input"
    );
    Ok(secret)
}

/// The account's kind as the CLI names it: `whatsapp`, `twilio`, …
fn kind_name(account: &session::Account) -> String {
    session::AccountKind::try_from(account.kind)
        .map(|k| {
            k.as_str_name()
                .trim_start_matches("ACCOUNT_KIND_")
                .to_lowercase()
        })
        .unwrap_or_default()
}

fn print_account(account: &session::Account) {
    let kind = kind_name(account);
    let reason = Some(account.status_reason.as_str())
        .filter(|r| !r.is_empty())
        .map(|r| format!(" ({r})"))
        .unwrap_or_default();
    println!(
        "{}  {:<12} {:<11} {:<24} {:<36} {}{reason}",
        account.account_id, account.location_id, kind, account.name, account.tag, account.status
    );
}

pub async fn accounts(command: AccountsCommand) -> anyhow::Result<()> {
    match command {
        AccountsCommand::List { location, server } => {
            let mut client =
                session::session_service_client::SessionServiceClient::new(server.channel().await?);
            let accounts = client
                .list_accounts(session::ListAccountsRequest {
                    location_id: location.unwrap_or_default(),
                })
                .await
                .map_err(status)?
                .into_inner()
                .accounts;
            if accounts.is_empty() {
                println!("no accounts");
            }
            accounts.iter().for_each(print_account);
        }
        AccountsCommand::Add {
            location,
            kind,
            name,
            phone,
            twilio_account_sid,
            twilio_auth_token,
            engine,
            settings,
            no_wait,
            timeout,
            server,
        } => {
            let mut settings_json = serde_json::Map::new();
            for setting in settings {
                let Some((name, value)) = setting.split_once('=') else {
                    anyhow::bail!("--setting {setting:?} is not NAME=VALUE");
                };
                settings_json.insert(name.trim().to_owned(), value.into());
            }
            let mut client =
                session::session_service_client::SessionServiceClient::new(server.channel().await?);
            let kind = match kind {
                Kind::Whatsapp => session::AccountKind::Whatsapp,
                Kind::AndroidSms => session::AccountKind::AndroidSms,
                Kind::Imessage => session::AccountKind::Imessage,
                Kind::Twilio => session::AccountKind::Twilio,
            };
            let account = client
                .add_account(session::AddAccountRequest {
                    location_id: location,
                    kind: kind as i32,
                    name,
                    phone_number: phone.unwrap_or_default(),
                    twilio: match (twilio_account_sid, twilio_auth_token) {
                        (Some(account_sid), Some(auth_token)) => Some(session::TwilioCredentials {
                            account_sid,
                            auth_token,
                        }),
                        _ => None,
                    },
                    engine: engine.unwrap_or_default(),
                    settings_json: if settings_json.is_empty() {
                        String::new()
                    } else {
                        serde_json::Value::Object(settings_json).to_string()
                    },
                })
                .await
                .map_err(status)?
                .into_inner();
            print_account(&account);
            let pairing = client
                .get_pairing(session::GetAccountRequest {
                    location_id: account.location_id.clone(),
                    account_id: account.account_id.clone(),
                })
                .await;
            match pairing {
                Ok(pairing) => {
                    print_pairing(&pairing.into_inner());
                    // An account reached through an API alone is connected already.
                    if !no_wait && account.status != "connected" {
                        tokio::time::timeout(
                            std::time::Duration::from_secs(timeout),
                            wait_for_device(client, account.location_id, account.account_id),
                        )
                        .await
                        .map_err(|_| {
                            anyhow::anyhow!(
                                "the device was not seen within {timeout} s; the account stays added and connects when it is (`whatsnap accounts show` tells)"
                            )
                        })??;
                    }
                }
                Err(refused) if refused.code() == tonic::Code::FailedPrecondition => {}
                Err(refused) => return Err(status(refused)),
            }
        }
        AccountsCommand::Show {
            location,
            account_id,
            server,
        } => {
            let account =
                session::session_service_client::SessionServiceClient::new(server.channel().await?)
                    .get_account(session::GetAccountRequest {
                        location_id: location,
                        account_id,
                    })
                    .await
                    .map_err(status)?
                    .into_inner();
            print_account_details(&account);
        }
        AccountsCommand::Pacing {
            location,
            account_id,
            interval,
            jitter,
            typing,
            server,
        } => {
            let millis = |what: &str, seconds: f64| -> anyhow::Result<u32> {
                anyhow::ensure!(
                    (0.0..=600.0).contains(&seconds),
                    "--{what} is between 0 and 600 seconds"
                );
                Ok((seconds * 1000.0).round() as u32)
            };
            let account =
                session::session_service_client::SessionServiceClient::new(server.channel().await?)
                    .set_pacing(session::SetPacingRequest {
                        location_id: location,
                        account_id,
                        interval_ms: millis("interval", interval)?,
                        jitter_ms: millis("jitter", jitter)?,
                        typing_ms: millis("typing", typing)?,
                    })
                    .await
                    .map_err(status)?
                    .into_inner();
            print_account_details(&account);
        }
        AccountsCommand::Connect {
            location,
            account_id,
            pairing_phone,
            timeout,
            server,
        } => {
            let channel = server.channel().await?;
            let watch = tokio::time::timeout(
                std::time::Duration::from_secs(timeout),
                connect_account(channel, location, account_id, pairing_phone),
            );
            match watch.await {
                Ok(result) => result?,
                Err(_) => anyhow::bail!(
                    "the account did not connect within {timeout} s; run `whatsnap accounts connect` again"
                ),
            }
        }
        AccountsCommand::Disconnect {
            location,
            account_id,
            server,
        } => {
            let mut client =
                session::session_service_client::SessionServiceClient::new(server.channel().await?);
            let account = client
                .disconnect_account(session::DisconnectAccountRequest {
                    location_id: location,
                    account_id,
                })
                .await
                .map_err(status)?
                .into_inner();
            print_account(&account);
        }
        AccountsCommand::SetEngine {
            location,
            account_id,
            engine,
            server,
        } => {
            let mut client =
                session::session_service_client::SessionServiceClient::new(server.channel().await?);
            let account = client
                .set_engine(session::SetEngineRequest {
                    location_id: location,
                    account_id,
                    engine,
                })
                .await
                .map_err(status)?
                .into_inner();
            print_account(&account);
        }
        AccountsCommand::Remove {
            location,
            account_id,
            reason,
            server,
        } => {
            let mut client =
                session::session_service_client::SessionServiceClient::new(server.channel().await?);
            let account = client
                .remove_account(session::RemoveAccountRequest {
                    location_id: location,
                    account_id,
                    reason,
                })
                .await
                .map_err(status)?
                .into_inner();
            print_account(&account);
        }
        AccountsCommand::RotateCredentials {
            location,
            account,
            auth_token,
            server,
        } => {
            let auth_token = match auth_token {
                Some(token) => token,
                None => secret_from_stdin("new Twilio Auth Token")?,
            };
            let mut client =
                session::session_service_client::SessionServiceClient::new(server.channel().await?);
            let account = client
                .update_account_credentials(session::UpdateAccountCredentialsRequest {
                    location_id: location,
                    account_id: account,
                    auth_token,
                })
                .await
                .map_err(status)?
                .into_inner();
            println!("twilio credentials rotated");
            print_account(&account);
        }
    }
    Ok(())
}

#[derive(Debug, Subcommand)]
pub enum ContactsCommand {
    /// Show the contact with this phone number, its tags and its owner.
    Show {
        phone: String,
        #[arg(long)]
        location: String,
        #[command(flatten)]
        server: Server,
    },
    /// Add a tag to a contact by hand (or remove it): another account's tag moves its replies.
    Tag {
        phone: String,
        tag: String,
        #[arg(long)]
        location: String,
        #[arg(long)]
        remove: bool,
        #[command(flatten)]
        server: Server,
    },
    /// The account a reply to this contact would leave from, and why.
    Route {
        phone: String,
        #[arg(long)]
        location: String,
        #[command(flatten)]
        server: Server,
    },
    /// Erase a contact's personal data for good: its phone, name and messages show as
    /// [erased] from now on (log, trace, replays, read models) and nothing more of it goes to
    /// GHL. Takes the phone or the contact id.
    Erase {
        contact: String,
        #[arg(long)]
        location: String,
        /// Who asks, recorded with the erasure.
        #[arg(long, default_value = "cli")]
        requested_by: String,
        #[command(flatten)]
        server: Server,
    },
}

pub async fn contacts(command: ContactsCommand) -> anyhow::Result<()> {
    let (phone, location, server) = match command {
        ContactsCommand::Show {
            phone,
            location,
            server,
        } => (phone, location, server),
        ContactsCommand::Tag {
            phone,
            tag,
            location,
            remove,
            server,
        } => {
            let contact = contacts::contacts_service_client::ContactsServiceClient::new(
                server.channel().await?,
            )
            .tag_contact(contacts::TagContactRequest {
                location_id: location,
                phone,
                tag,
                remove,
            })
            .await
            .map_err(status)?
            .into_inner();
            println!("tags      {}", contact.tags.join(", "));
            return Ok(());
        }
        ContactsCommand::Erase {
            contact,
            location,
            requested_by,
            server,
        } => {
            let erased = contacts::contacts_service_client::ContactsServiceClient::new(
                server.channel().await?,
            )
            .erase_contact(contacts::EraseContactRequest {
                location_id: location,
                contact,
                requested_by,
            })
            .await
            .map_err(status)?
            .into_inner();
            match erased.erased_now {
                true => println!("contact {} erased", erased.contact_id),
                false => println!("contact {} was already erased", erased.contact_id),
            }
            return Ok(());
        }
        ContactsCommand::Route {
            phone,
            location,
            server,
        } => {
            let route = contacts::contacts_service_client::ContactsServiceClient::new(
                server.channel().await?,
            )
            .resolve_route(contacts::ResolveRouteRequest {
                location_id: location,
                phone,
            })
            .await
            .map_err(status)?
            .into_inner();
            println!("account   {} ({})", route.account_id, route.tag);
            println!("because   {}", route.reason);
            return Ok(());
        }
    };
    let channel = server.channel().await?;
    let contact = contacts::contacts_service_client::ContactsServiceClient::new(channel.clone())
        .get_contact(contacts::GetContactRequest {
            location_id: location.clone(),
            phone,
        })
        .await
        .map_err(status)?
        .into_inner();
    println!("contact   {}", contact.contact_id);
    println!("phone     {}", contact.phone);
    println!(
        "name      {}",
        if contact.name.is_empty() {
            "-"
        } else {
            &contact.name
        }
    );
    println!("tags      {}", contact.tags.join(", "));
    let owner = assignment::assignment_service_client::AssignmentServiceClient::new(channel)
        .get_assignment(assignment::GetAssignmentRequest {
            location_id: location,
            contact_id: contact.contact_id,
        })
        .await;
    match owner {
        Ok(decision) => {
            let decision = decision.into_inner();
            if decision.user_id.is_empty() {
                println!("owner     unassigned ({})", decision.reason);
            } else {
                println!(
                    "owner     {} (rule {}: {})",
                    decision.user_id, decision.rule, decision.reason
                );
            }
        }
        Err(err) => println!("owner     unknown ({})", err.message()),
    }
    Ok(())
}

#[derive(Debug, Subcommand)]
pub enum EventsCommand {
    /// Print events as they are appended (from the beginning with --after 0).
    Tail {
        /// Start after this position (0: from the first event); by default, only new events.
        #[arg(long)]
        after: Option<u64>,
        #[command(flatten)]
        server: Server,
    },
}

pub async fn events(command: EventsCommand) -> anyhow::Result<()> {
    let EventsCommand::Tail { after, server } = command;
    let mut client =
        events::events_service_client::EventsServiceClient::new(server.channel().await?);
    let mut stream = client
        .tail(events::TailRequest {
            after_position: after.unwrap_or(0),
            from_now: after.is_none(),
        })
        .await
        .map_err(status)?
        .into_inner();
    while let Some(event) = stream.next().await {
        let event = event.map_err(status)?;
        println!(
            "{:>8}  {}  {:<24} {}  {}",
            event.position,
            event.occurred_at,
            event.event_type,
            event.stream_id,
            event.payload_json
        );
    }
    Ok(())
}

#[derive(Debug, Subcommand)]
pub enum MessagesCommand {
    /// Record a message received by an account, as its provider would deliver it.
    Receive {
        #[arg(long)]
        location: String,
        #[arg(long)]
        account: String,
        /// The sender's phone number, with country code.
        #[arg(long)]
        from: String,
        #[arg(long)]
        body: String,
        /// The sender's name as the platform shows it.
        #[arg(long, default_value = "")]
        name: String,
        /// The provider's message id; the same id twice is recorded once. Default: a new one.
        #[arg(long)]
        provider_message_id: Option<String>,
        #[command(flatten)]
        server: Server,
    },
}

pub async fn messages(command: MessagesCommand) -> anyhow::Result<()> {
    let MessagesCommand::Receive {
        location,
        account,
        from,
        body,
        name,
        provider_message_id,
        server,
    } = command;
    let mut client =
        session::session_service_client::SessionServiceClient::new(server.channel().await?);
    // A provider's id is unique per message: without one, make one up that is.
    let provider_message_id =
        provider_message_id.unwrap_or_else(|| format!("cli-{}", uuid::Uuid::now_v7().simple()));
    let response = client
        .record_inbound_message(session::RecordInboundMessageRequest {
            location_id: location,
            account_id: account,
            provider_message_id,
            from,
            body,
            sender_name: name,
            attachments: Vec::new(),
        })
        .await
        .map_err(status)?
        .into_inner();
    println!(
        "message {}{}",
        response.message_id,
        if response.duplicate {
            " (already recorded)"
        } else {
            ""
        }
    );
    Ok(())
}

#[derive(Debug, Args)]
pub struct TraceArgs {
    /// The contact's phone number, with country code.
    phone: String,
    #[arg(long)]
    location: String,
    #[command(flatten)]
    server: Server,
}

pub async fn trace(args: TraceArgs) -> anyhow::Result<()> {
    let mut client =
        events::events_service_client::EventsServiceClient::new(args.server.channel().await?);
    let history = client
        .contact_history(events::ContactHistoryRequest {
            location_id: args.location,
            phone: args.phone,
        })
        .await
        .map_err(status)?
        .into_inner();
    println!("contact {}", history.contact_id);
    for entry in history.entries {
        let Some(event) = entry.event else { continue };
        println!(
            "{:>8}  {}  {:<24} {}  (correlation {})",
            event.position,
            event.occurred_at,
            event.event_type,
            entry.summary,
            short(&event.correlation_id)
        );
    }
    Ok(())
}

#[derive(Debug, Subcommand)]
pub enum GhlCommand {
    /// Connect a location with a Private Integration Token (GHL: Settings > Private
    /// Integrations). The token is sealed before it is stored.
    Connect {
        #[arg(long)]
        location: String,
        /// The token; better passed through the environment than on the command line.
        #[arg(long, env = "WHATSNAP_GHL_TOKEN", hide_env_values = true)]
        token: String,
        /// The company (agency) id of the location, which GHL requires for listing its users;
        /// without it the location's users are not synced (messages still flow). An OAuth
        /// install brings it by itself.
        #[arg(long)]
        company_id: Option<String>,
        #[command(flatten)]
        server: Server,
    },
    /// The page to send an agency user to for installing whatsnap on a location (OAuth).
    InstallUrl {
        #[command(flatten)]
        server: Server,
    },
    /// What is waiting to cross to GHL for a location, and why; what was set aside.
    Status {
        #[arg(long)]
        location: String,
        #[command(flatten)]
        server: Server,
    },
    /// Put work that was set aside (GHL refused it: a 403, a 4xx, a message GHL did not add)
    /// back in the location's queue, after fixing its cause. Without --subject, every item set
    /// aside for the location (of --kind, when given).
    Retry {
        #[arg(long)]
        location: String,
        /// contact_upsert, message, status or assign, as `ghl status` lists them.
        #[arg(long)]
        kind: Option<String>,
        /// The contact or message id, as `ghl status` lists it.
        #[arg(long)]
        subject: Option<String>,
        #[command(flatten)]
        server: Server,
    },
}

pub async fn ghl(command: GhlCommand) -> anyhow::Result<()> {
    use whatsnap_proto::ghlsync::v1 as ghlsync;
    let client = |channel| ghlsync::ghl_sync_service_client::GhlSyncServiceClient::new(channel);
    match command {
        GhlCommand::Connect {
            location,
            token,
            company_id,
            server,
        } => {
            let connected = client(server.channel().await?)
                .connect_private_token(ghlsync::ConnectPrivateTokenRequest {
                    location_id: location,
                    token,
                    company_id: company_id.unwrap_or_default(),
                })
                .await
                .map_err(status)?
                .into_inner();
            println!(
                "location {} connected to GHL ({})",
                connected.location_id, connected.kind
            );
        }
        GhlCommand::InstallUrl { server } => {
            let started = client(server.channel().await?)
                .begin_o_auth(ghlsync::BeginOAuthRequest::default())
                .await
                .map_err(status)?
                .into_inner();
            println!("{}", started.authorize_url);
            eprintln!(
                "Open it in a browser within {} minutes and choose the location; the link works once.",
                started.expires_in_seconds / 60
            );
        }
        GhlCommand::Status { location, server } => {
            let sync = client(server.channel().await?)
                .sync_status(ghlsync::SyncStatusRequest {
                    location_id: location,
                })
                .await
                .map_err(status)?
                .into_inner();
            println!("connection         {}", sync.connection_text());
            println!("contacts to sync   {}", sync.pending_contact_upserts);
            println!("messages to post   {}", sync.pending_messages);
            println!("statuses to report {}", sync.pending_statuses);
            println!("owners to set      {}", sync.pending_assignments);
            if !sync.waiting_because.is_empty() {
                println!("waiting because    {}", sync.waiting_because);
            }
            println!("requests left today {}", sync.daily_requests_left);
            if !sync.allowance_warning.is_empty() {
                println!("allowance          {}", sync.allowance_warning);
            }
            if sync.set_aside.is_empty() {
                println!("set aside          nothing");
            } else {
                println!(
                    "set aside          {} (`whatsnap ghl retry --location …` puts them back)",
                    sync.set_aside.len()
                );
                for item in &sync.set_aside {
                    println!(
                        "  {} {}{}: {}",
                        item.kind,
                        item.subject_id,
                        item.http_text(),
                        item.reason
                    );
                }
            }
        }
        GhlCommand::Retry {
            location,
            kind,
            subject,
            server,
        } => {
            let retried = client(server.channel().await?)
                .retry_set_aside(ghlsync::RetrySetAsideRequest {
                    location_id: location,
                    kind: kind.unwrap_or_default(),
                    subject_id: subject.unwrap_or_default(),
                })
                .await
                .map_err(status)?
                .into_inner();
            println!("{} item(s) back in the GHL queue", retried.requeued);
        }
    }
    Ok(())
}

#[derive(Debug, Subcommand)]
pub enum AssignmentCommand {
    /// Set the rules of an account (or the location's default rules) from a JSON file.
    SetRules {
        #[arg(long)]
        location: String,
        /// The account; leave out for the location's default rules.
        #[arg(long)]
        account: Option<String>,
        /// The rules document (see the README's assignment section).
        #[arg(long)]
        rules: std::path::PathBuf,
        #[command(flatten)]
        server: Server,
    },
    /// Print the rules of an account (or the location's default rules).
    GetRules {
        #[arg(long)]
        location: String,
        #[arg(long)]
        account: Option<String>,
        #[command(flatten)]
        server: Server,
    },
    /// The location's GHL users and whether each can be assigned.
    Users {
        #[arg(long)]
        location: String,
        #[command(flatten)]
        server: Server,
    },
    /// Set when a user can take new contacts; replaces what was set before.
    Availability {
        #[arg(long)]
        location: String,
        #[arg(long)]
        user: String,
        /// IANA time zone of --hours, e.g. Europe/Madrid.
        #[arg(long, default_value = "")]
        time_zone: String,
        /// Working hours as JSON, e.g. '{"mon":["09:00-17:00"],"tue":["09:00-17:00"]}'.
        #[arg(long, default_value = "")]
        hours: String,
        /// Out of office from (RFC 3339), with --away-until.
        #[arg(long, default_value = "")]
        away_from: String,
        #[arg(long, default_value = "")]
        away_until: String,
        /// Never assign this user until set active again.
        #[arg(long)]
        inactive: bool,
        #[command(flatten)]
        server: Server,
    },
    /// Why a contact is owned by whom: every decision with the candidates considered.
    Explain {
        /// The contact's phone number.
        phone: String,
        #[arg(long)]
        location: String,
        #[command(flatten)]
        server: Server,
    },
    /// Replay recorded history against new rules and print the decisions that would change,
    /// with counts per user. Changes nothing.
    Simulate {
        #[arg(long)]
        location: String,
        /// The account the new rules are for; leave out for the location's default rules.
        #[arg(long)]
        account: Option<String>,
        #[arg(long)]
        rules: std::path::PathBuf,
        /// How far back to decide again: 90s, 30m, 12h, 7d (default: all history).
        #[arg(long, value_parser = since)]
        since: Option<u64>,
        #[command(flatten)]
        server: Server,
    },
    /// How assignment is performing: first-response time per user and account, open contacts
    /// per user, reassignments and their causes, unassigned contacts and why.
    Report {
        #[arg(long)]
        location: String,
        /// The window: 90s, 30m, 12h, 7d (default: all history).
        #[arg(long, value_parser = since)]
        since: Option<u64>,
        /// Print JSON instead of tables.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        server: Server,
    },
}

/// Prints an assignment report as tables, or as one JSON document.
fn print_report(report: &assignment::ReportResponse, json: bool) {
    let times = |list: &[assignment::ResponseTimes]| {
        list.iter()
            .map(|t| {
                serde_json::json!({
                    "id": t.id, "first_responses": t.first_responses,
                    "average_first_response_seconds": t.average_seconds,
                })
            })
            .collect::<Vec<_>>()
    };
    let counts = |list: &[assignment::Count]| {
        list.iter()
            .map(|c| (c.key.clone(), serde_json::json!(c.count)))
            .collect::<serde_json::Map<_, _>>()
    };
    if json {
        let document = serde_json::json!({
            "first_response_by_user": times(&report.users),
            "first_response_by_account": times(&report.accounts),
            "open_contacts_by_user": counts(&report.open_contacts),
            "reassignments_by_cause": counts(&report.reassignments),
            "unassigned_by_reason": counts(&report.unassigned),
        });
        println!("{document:#}");
        return;
    }
    for (title, list) in [("user", &report.users), ("account", &report.accounts)] {
        println!("first response by {title}");
        for t in list.iter() {
            println!(
                "  {:<38} {:>5} replies  average {}",
                t.id,
                t.first_responses,
                minutes(t.average_seconds)
            );
        }
    }
    for (title, list) in [
        ("open contacts by user", &report.open_contacts),
        ("reassignments by cause", &report.reassignments),
        ("unassigned by reason", &report.unassigned),
    ] {
        println!("{title}");
        for c in list.iter() {
            println!("  {:>5}  {}", c.count, c.key);
        }
    }
}

/// `7d`, `12h`, `30m`, `90s` or plain seconds.
fn since(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let (number, unit) = match text.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => (&text[..i], c),
        _ => (text, 's'),
    };
    let number: u64 = number
        .parse()
        .map_err(|_| format!("{text:?}: use a number with s, m, h or d (e.g. 7d)"))?;
    let unit = match unit {
        's' => 1,
        'm' => 60,
        'h' => 3600,
        'd' => 86_400,
        _ => return Err(format!("{text:?}: the unit is s, m, h or d")),
    };
    Ok(number.saturating_mul(unit))
}

pub async fn assignment(command: AssignmentCommand) -> anyhow::Result<()> {
    let client =
        |channel| assignment::assignment_service_client::AssignmentServiceClient::new(channel);
    let read = |path: &std::path::Path| {
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))
    };
    match command {
        AssignmentCommand::SetRules {
            location,
            account,
            rules,
            server,
        } => {
            let set = client(server.channel().await?)
                .set_rules(assignment::SetRulesRequest {
                    location_id: location,
                    account_id: account.unwrap_or_default(),
                    rules_json: read(&rules)?,
                })
                .await
                .map_err(status)?
                .into_inner();
            println!("rules version {} set", set.version);
        }
        AssignmentCommand::GetRules {
            location,
            account,
            server,
        } => {
            let rules = client(server.channel().await?)
                .get_rules(assignment::GetRulesRequest {
                    location_id: location,
                    account_id: account.unwrap_or_default(),
                })
                .await
                .map_err(status)?
                .into_inner();
            match rules.version {
                0 => println!("no rules set"),
                version => println!("version {version}\n{}", rules.rules_json),
            }
        }
        AssignmentCommand::Users { location, server } => {
            let users = client(server.channel().await?)
                .list_users(assignment::ListUsersRequest {
                    location_id: location,
                })
                .await
                .map_err(status)?
                .into_inner();
            for user in users.users {
                println!(
                    "{:<24} {:<24} {:<8} {}",
                    user.user_id,
                    user.name,
                    user.role,
                    user.availability()
                );
            }
        }
        AssignmentCommand::Availability {
            location,
            user,
            time_zone,
            hours,
            away_from,
            away_until,
            inactive,
            server,
        } => {
            client(server.channel().await?)
                .set_availability(assignment::SetAvailabilityRequest {
                    location_id: location,
                    user_id: user.clone(),
                    time_zone,
                    working_hours_json: hours,
                    out_of_office_from: away_from,
                    out_of_office_until: away_until,
                    active: !inactive,
                })
                .await
                .map_err(status)?;
            println!("availability of {user} set");
        }
        AssignmentCommand::Explain {
            phone,
            location,
            server,
        } => {
            let explained = client(server.channel().await?)
                .explain(assignment::ExplainRequest {
                    location_id: location,
                    phone,
                })
                .await
                .map_err(status)?
                .into_inner();
            println!("contact {}", explained.contact_id);
            for decision in explained.decisions {
                println!(
                    "{}{}  {} by {}: {}",
                    decision.at,
                    decision.on_trigger(),
                    decision.outcome(),
                    decision.rule,
                    decision.reason
                );
                for candidate in decision.candidates {
                    println!("    {:<24} {}", candidate.user_id, candidate.verdict());
                }
            }
        }
        AssignmentCommand::Report {
            location,
            since,
            json,
            server,
        } => {
            let report = client(server.channel().await?)
                .report(assignment::ReportRequest {
                    location_id: location,
                    since_seconds: since.unwrap_or(0),
                })
                .await
                .map_err(status)?
                .into_inner();
            print_report(&report, json);
        }
        AssignmentCommand::Simulate {
            location,
            account,
            rules,
            since,
            server,
        } => {
            let simulated = client(server.channel().await?)
                .simulate(assignment::SimulateRequest {
                    location_id: location,
                    account_id: account.unwrap_or_default(),
                    rules_json: read(&rules)?,
                    since_seconds: since.unwrap_or(0),
                })
                .await
                .map_err(status)?
                .into_inner();
            let name = user_or_unassigned;
            println!(
                "{} decisions replayed, {} would change",
                simulated.decisions,
                simulated.changes.len()
            );
            for change in &simulated.changes {
                println!(
                    "{}  contact {}  {} -> {} ({}: {})",
                    change.at,
                    short(&change.contact_id),
                    name(&change.recorded_user_id),
                    name(&change.simulated_user_id),
                    change.simulated_rule,
                    change.simulated_reason
                );
            }
            println!("{:<24} {:>9} {:>9}", "user", "recorded", "simulated");
            for count in simulated.per_user {
                println!(
                    "{:<24} {:>9} {:>9}",
                    name(&count.user_id),
                    count.recorded,
                    count.simulated
                );
            }
        }
    }
    Ok(())
}

#[derive(Debug, Subcommand)]
pub enum ParkedCommand {
    /// List the parked events: projection, position in the log, event type, status, tries
    /// and the last failure.
    List {
        /// Show resolved (retried or skipped) events too.
        #[arg(long)]
        all: bool,
        #[command(flatten)]
        server: Server,
    },
    /// Have the projection apply a parked event again; waits for the outcome. The event is
    /// resolved if it applies, else it stays parked with the new reason.
    Retry {
        #[command(flatten)]
        event: ParkedEventArgs,
        /// How long to wait for the projection to try, in seconds.
        #[arg(long, default_value_t = 30)]
        wait: u32,
        #[command(flatten)]
        server: Server,
    },
    /// Leave a parked event unapplied for good; it is marked skipped.
    Skip {
        #[command(flatten)]
        event: ParkedEventArgs,
        #[command(flatten)]
        server: Server,
    },
}

#[derive(Debug, Args)]
pub struct ParkedEventArgs {
    /// The projection that parked it (first column of `whatsnap parked list`), e.g. contacts.
    projection: String,
    /// The event's position in the log (second column of `whatsnap parked list`).
    position: u64,
    /// Who asks, recorded with the resolution.
    #[arg(long, env = "USER")]
    by: Option<String>,
}

impl ParkedEventArgs {
    fn request(self, wait_seconds: u32) -> operations::ParkedEventRequest {
        operations::ParkedEventRequest {
            projection: self.projection,
            position: self.position,
            requested_by: self.by.unwrap_or_default(),
            wait_seconds,
        }
    }
}

fn operations_client(
    channel: whatsnap_auth::AuthedChannel,
) -> operations::operations_service_client::OperationsServiceClient<whatsnap_auth::AuthedChannel> {
    operations::operations_service_client::OperationsServiceClient::new(channel)
}

/// The parked events, and with `include_resolved` those retried or skipped since.
async fn parked_events(
    server: &Server,
    include_resolved: bool,
) -> anyhow::Result<Vec<operations::ParkedEvent>> {
    Ok(operations_client(server.channel().await?)
        .list_parked(operations::ListParkedRequest { include_resolved })
        .await
        .map_err(status)?
        .into_inner()
        .events)
}

pub async fn parked(command: ParkedCommand) -> anyhow::Result<()> {
    match command {
        ParkedCommand::List { all, server } => {
            let events = parked_events(&server, all).await?;
            if events.is_empty() {
                println!("no parked events");
                return Ok(());
            }
            println!(
                "{:<20} {:>9}  {:<28} {:<16} {:>8}  reason",
                "projection", "position", "event type", "status", "attempts"
            );
            for event in events {
                println!(
                    "{:<20} {:>9}  {:<28} {:<16} {:>8}  {}",
                    event.projection,
                    event.position,
                    event.event_type,
                    event.status,
                    event.attempts,
                    event.reason
                );
            }
        }
        ParkedCommand::Retry {
            event,
            wait,
            server,
        } => {
            let parked = operations_client(server.channel().await?)
                .retry_parked(event.request(wait))
                .await
                .map_err(status)?
                .into_inner();
            let at = format!("{} at position {}", parked.projection, parked.position);
            match parked.status.as_str() {
                "retried" => println!("{at}: {} retried and applied", parked.event_type),
                "retry_requested" => println!(
                    "{at}: retry requested; projection {} has not tried it within {wait} s \
                     (is the service that runs it up?)",
                    parked.projection
                ),
                _ => anyhow::bail!(
                    "{at}: {} failed again and stays parked: {}",
                    parked.event_type,
                    parked.reason
                ),
            }
        }
        ParkedCommand::Skip { event, server } => {
            let parked = operations_client(server.channel().await?)
                .skip_parked(event.request(0))
                .await
                .map_err(status)?
                .into_inner();
            println!(
                "{} at position {}: {} skipped; it stays unapplied",
                parked.projection, parked.position, parked.event_type
            );
        }
    }
    Ok(())
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    #[command(flatten)]
    server: Server,
}

/// What needs an operator's attention: today, the parked events.
pub async fn overall_status(args: StatusArgs) -> anyhow::Result<()> {
    let events = parked_events(&args.server, false).await?;
    if events.is_empty() {
        println!("no parked events");
        return Ok(());
    }
    println!(
        "{} parked event(s): their projections went on without them",
        events.len()
    );
    for event in events {
        let state = match event.status.as_str() {
            "retry_requested" => "retry requested".to_owned(),
            _ => format!("parked after {} attempt(s)", event.attempts),
        };
        println!(
            "  {} at position {}: {}, {state}: {}",
            event.projection, event.position, event.event_type, event.reason
        );
        println!(
            "    fix the cause, then `whatsnap parked retry {0} {1}`, or `whatsnap parked skip {0} {1}` to leave it unapplied",
            event.projection, event.position
        );
    }
    Ok(())
}

#[derive(Debug, Subcommand)]
pub enum TokensCommand {
    /// Issue an API token and print it, once: whatsnap keeps only its SHA-256.
    ///
    /// Roles: `admin` (the agency: every location, or those given with --location), `operator`
    /// (one location: --location), `read-only` (reads the --location's given, changes nothing).
    /// Only an admin token of every location may issue, list or revoke tokens.
    Create {
        #[arg(long)]
        role: String,
        /// A location the token may touch; repeatable.
        #[arg(long = "location")]
        locations: Vec<String>,
        /// How long it works: e.g. 90d, 12h, 30m; never expires without it.
        #[arg(long, value_parser = duration)]
        expires_in: Option<std::time::Duration>,
        /// A name for people, e.g. "front desk laptop".
        #[arg(long, default_value = "")]
        name: String,
        #[command(flatten)]
        server: Server,
    },
    /// The tokens issued: id, name, role, locations, expiry, whether revoked.
    List {
        #[command(flatten)]
        server: Server,
    },
    /// Revoke a token by its id: calls with it are refused from then on.
    Revoke {
        token_id: String,
        #[command(flatten)]
        server: Server,
    },
    /// Print a new random token without recording it, for a distributed deployment's first
    /// admin token: put it in the Secret as WHATSNAP_ADMIN_TOKEN, and the services record it
    /// when they start.
    Generate,
}

#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// Print a new random secret key (32 bytes, base64) for WHATSNAP_SECRET_KEY.
    Generate,
    /// Print the personal data key derived from the secret key, for WHATSNAP_PERSONAL_DATA_KEY:
    /// the gateway, contacts and assignment targets are given it instead of the secret key, so
    /// that they read personal data but cannot open a tenant's Twilio or GHL credentials.
    PersonalData {
        /// The secret key, base64.
        #[arg(long, env = "WHATSNAP_SECRET_KEY", hide_env_values = true)]
        secret_key: String,
    },
}

pub fn keys(command: KeysCommand) -> anyhow::Result<()> {
    match command {
        KeysCommand::Generate => println!("{}", whatsnap_secrets::SecretKey::generate_base64()),
        KeysCommand::PersonalData { secret_key } => {
            let key = whatsnap_secrets::SecretKey::from_base64(&secret_key)
                .context("--secret-key (WHATSNAP_SECRET_KEY)")?;
            println!("{}", key.personal_data().to_base64());
        }
    }
    Ok(())
}

/// `90d`, `12h`, `30m`, `45s` (or a number of seconds).
fn duration(text: &str) -> Result<std::time::Duration, String> {
    let text = text.trim();
    let (number, unit) = text.split_at(
        text.find(|c: char| !c.is_ascii_digit())
            .unwrap_or(text.len()),
    );
    let number: u64 = number
        .parse()
        .map_err(|_| format!("{text:?}: use a number and d, h, m or s, e.g. 90d"))?;
    let seconds = match unit {
        "d" => 86_400,
        "h" => 3_600,
        "m" => 60,
        "s" | "" => 1,
        _ => return Err(format!("{text:?}: use a number and d, h, m or s, e.g. 90d")),
    };
    Ok(std::time::Duration::from_secs(number * seconds))
}

pub async fn tokens(command: TokensCommand) -> anyhow::Result<()> {
    use whatsnap_proto::tokens::v1 as pb;
    let client = pb::tokens_service_client::TokensServiceClient::new;
    match command {
        TokensCommand::Generate => {
            println!("{}", whatsnap_auth::ApiToken::generate().expose());
        }
        TokensCommand::Create {
            role,
            locations,
            expires_in,
            name,
            server,
        } => {
            let created = client(server.channel().await?)
                .create_token(pb::CreateTokenRequest {
                    role,
                    locations,
                    expires_in_seconds: expires_in.map_or(0, |d| d.as_secs()),
                    name,
                })
                .await
                .map_err(status)?
                .into_inner();
            let token = created.token.unwrap_or_default();
            println!("{}", created.secret);
            eprintln!(
                "token {} ({}) issued; it is shown this once: keep it in a secret store",
                token.token_id, token.role
            );
        }
        TokensCommand::List { server } => {
            let tokens = client(server.channel().await?)
                .list_tokens(pb::ListTokensRequest {})
                .await
                .map_err(status)?
                .into_inner()
                .tokens;
            println!(
                "{:<24}  {:<9}  {:<20}  {:<25}  {:<7}  name",
                "id", "role", "locations", "expires", "revoked"
            );
            for token in tokens {
                let locations = match token.locations.is_empty() {
                    true => "all".to_owned(),
                    false => token.locations.join(","),
                };
                let expires = match token.expires_at.as_str() {
                    "" => "never",
                    at => at,
                };
                println!(
                    "{:<24}  {:<9}  {:<20}  {:<25}  {:<7}  {}",
                    token.token_id,
                    token.role,
                    locations,
                    expires,
                    if token.revoked { "yes" } else { "no" },
                    token.name
                );
            }
        }
        TokensCommand::Revoke { token_id, server } => {
            client(server.channel().await?)
                .revoke_token(pb::RevokeTokenRequest {
                    token_id: token_id.clone(),
                })
                .await
                .map_err(status)?;
            println!("token {token_id} revoked");
        }
    }
    Ok(())
}
