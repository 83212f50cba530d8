//! A fake Twilio: the Programmable Messaging REST API on loopback, as `connectors.md` §5
//! describes it — Basic auth with Account SID and Auth Token, the account and incoming-number
//! resources, message creation with Twilio's error codes — recording every message sent, and
//! able to send signed status callbacks like Twilio does.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Form, Json};
use base64::Engine as _;
use serde_json::{Value, json};
use tokio::net::TcpListener;

/// One account of the fake.
#[derive(Debug, Clone)]
pub struct FakeTwilioAccount {
    pub sid: String,
    pub auth_token: String,
    /// `active`, `suspended` or `closed`.
    pub status: String,
    /// Owned numbers (E.164) and whether each can send SMS.
    pub numbers: Vec<(String, bool)>,
}

/// A message the fake accepted.
#[derive(Debug, Clone)]
pub struct SentSms {
    pub sid: String,
    pub account_sid: String,
    pub from: String,
    pub to: String,
    pub body: String,
    pub status_callback: Option<String>,
    pub date_created: chrono::DateTime<chrono::Utc>,
}

/// How the fake misbehaves on one account's sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SendFault {
    /// Never answers, and sends nothing: the client times out.
    Hang,
    /// Takes the message (it is sent), then never answers: the client times out not knowing.
    AcceptThenHang,
}

#[derive(Default)]
struct Inner {
    accounts: HashMap<String, FakeTwilioAccount>,
    sent: Vec<SentSms>,
    /// Recipients who replied STOP (21610).
    opted_out: Vec<String>,
    /// Answer the next sends with HTTP 500.
    fail_next: usize,
    /// Accounts whose sends misbehave.
    faults: HashMap<String, SendFault>,
}

#[derive(Clone, Default)]
struct Shared(Arc<Mutex<Inner>>);

impl Shared {
    fn with<T>(&self, f: impl FnOnce(&mut Inner) -> T) -> T {
        f(&mut self.0.lock().expect("fake twilio lock"))
    }
}

fn error(status: StatusCode, code: u32, message: &str) -> Response {
    (
        status,
        Json(json!({
            "code": code,
            "message": message,
            "more_info": format!("https://www.twilio.com/docs/errors/{code}"),
            "status": status.as_u16(),
        })),
    )
        .into_response()
}

/// Twilio's answer to bad credentials.
fn denied() -> Response {
    error(StatusCode::UNAUTHORIZED, 20003, "Authenticate")
}

/// The account the request's Basic credentials authenticate as.
fn authenticate(shared: &Shared, headers: &HeaderMap, sid: &str) -> Option<FakeTwilioAccount> {
    let header = headers
        .get("authorization")?
        .to_str()
        .ok()?
        .strip_prefix("Basic ")?;
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(header)
        .ok()?;
    let decoded = String::from_utf8(decoded).ok()?;
    let (user, token) = decoded.split_once(':')?;
    shared
        .with(|inner| inner.accounts.get(sid).cloned())
        .filter(|account| user == account.sid && token == account.auth_token)
}

async fn account(
    State(shared): State<Shared>,
    Path(file): Path<String>,
    headers: HeaderMap,
) -> Response {
    let sid = file.trim_end_matches(".json");
    match authenticate(&shared, &headers, sid) {
        Some(account) => Json(json!({
            "sid": account.sid,
            "friendly_name": "whatsnap test account",
            "status": account.status,
            "type": "Full",
            "owner_account_sid": account.sid,
        }))
        .into_response(),
        None => denied(),
    }
}

async fn numbers(
    State(shared): State<Shared>,
    Path(sid): Path<String>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    let Some(account) = authenticate(&shared, &headers, &sid) else {
        return denied();
    };
    let wanted = query.get("PhoneNumber");
    let numbers: Vec<Value> = account
        .numbers
        .iter()
        .filter(|(number, _)| wanted.is_none_or(|w| w == number))
        .map(|(number, sms)| {
            json!({
                "sid": format!("PN{:032}", number.trim_start_matches('+')),
                "phone_number": number,
                "friendly_name": number,
                "capabilities": { "sms": sms, "mms": sms, "voice": true, "fax": false },
                "status": "in-use",
            })
        })
        .collect();
    Json(json!({ "incoming_phone_numbers": numbers, "page": 0, "page_size": 50 })).into_response()
}

async fn create_message(
    State(shared): State<Shared>,
    Path(sid): Path<String>,
    headers: HeaderMap,
    Form(form): Form<Vec<(String, String)>>,
) -> Response {
    let Some(account) = authenticate(&shared, &headers, &sid) else {
        return denied();
    };
    let fault = shared.with(|inner| inner.faults.get(&account.sid).copied());
    if fault == Some(SendFault::Hang) {
        std::future::pending::<()>().await;
    }
    if shared.with(|inner| {
        let fail = inner.fail_next > 0;
        inner.fail_next = inner.fail_next.saturating_sub(1);
        fail
    }) {
        return error(
            StatusCode::INTERNAL_SERVER_ERROR,
            20500,
            "Internal Server Error",
        );
    }
    let field = |name: &str| form.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone());
    let (Some(to), Some(from)) = (field("To"), field("From")) else {
        return error(
            StatusCode::BAD_REQUEST,
            21604,
            "A 'To' and a 'From' phone number are required",
        );
    };
    let body = field("Body").unwrap_or_default();
    let valid_e164 =
        to.starts_with('+') && to.len() >= 8 && to[1..].bytes().all(|b| b.is_ascii_digit());
    if !valid_e164 {
        return error(
            StatusCode::BAD_REQUEST,
            21211,
            &format!("Invalid 'To' Phone Number: {to}"),
        );
    }
    match account.numbers.iter().find(|(n, _)| *n == from) {
        None => {
            return error(
                StatusCode::BAD_REQUEST,
                21606,
                "The From phone number is not a valid, SMS-capable inbound phone number",
            );
        }
        Some((_, false)) => {
            return error(
                StatusCode::BAD_REQUEST,
                21606,
                "The From phone number is not SMS-capable",
            );
        }
        Some(_) => {}
    }
    if body.is_empty() && field("MediaUrl").is_none() {
        return error(
            StatusCode::BAD_REQUEST,
            21619,
            "A text message body or media urls must be specified",
        );
    }
    if shared.with(|inner| inner.opted_out.contains(&to)) {
        return error(
            StatusCode::BAD_REQUEST,
            21610,
            "Attempt to send to unsubscribed recipient",
        );
    }
    let message = shared.with(|inner| {
        let message = SentSms {
            sid: format!("SM{:032x}", inner.sent.len() as u128 + 1),
            account_sid: account.sid.clone(),
            from,
            to,
            body,
            status_callback: field("StatusCallback"),
            date_created: chrono::Utc::now(),
        };
        inner.sent.push(message.clone());
        message
    });
    if fault == Some(SendFault::AcceptThenHang) {
        std::future::pending::<()>().await;
    }
    (
        StatusCode::CREATED,
        Json(json!({
            "sid": message.sid,
            "account_sid": message.account_sid,
            "from": message.from,
            "to": message.to,
            "body": message.body,
            "status": "queued",
            "direction": "outbound-api",
            "num_segments": "1",
            "num_media": "0",
            "error_code": null,
            "error_message": null,
            "api_version": "2010-04-01",
        })),
    )
        .into_response()
}

/// A running fake Twilio; stops when dropped.
/// `GET Messages.json`: the account's messages, newest first, filtered by `To`, `From` and
/// `DateSent` (a `YYYY-MM-DD` day, UTC), as Twilio's list resource is.
async fn list_messages(
    State(shared): State<Shared>,
    Path(sid): Path<String>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    let Some(account) = authenticate(&shared, &headers, &sid) else {
        return denied();
    };
    let day = match query.get("DateSent") {
        Some(day) => match chrono::NaiveDate::parse_from_str(day, "%Y-%m-%d") {
            Ok(day) => Some(day),
            Err(_) => {
                return error(
                    StatusCode::BAD_REQUEST,
                    20001,
                    &format!("Invalid DateSent: {day}"),
                );
            }
        },
        None => None,
    };
    let page_size: usize = query
        .get("PageSize")
        .and_then(|p| p.parse().ok())
        .unwrap_or(50)
        .clamp(1, 1000);
    let messages: Vec<Value> = shared.with(|inner| {
        inner
            .sent
            .iter()
            .rev()
            .filter(|m| m.account_sid == account.sid)
            .filter(|m| query.get("To").is_none_or(|to| *to == m.to))
            .filter(|m| query.get("From").is_none_or(|from| *from == m.from))
            .filter(|m| day.is_none_or(|day| m.date_created.date_naive() == day))
            .take(page_size)
            .map(|m| {
                let date = m.date_created.to_rfc2822();
                json!({
                    "sid": m.sid,
                    "account_sid": m.account_sid,
                    "from": m.from,
                    "to": m.to,
                    "body": m.body,
                    "status": "sent",
                    "direction": "outbound-api",
                    "date_created": date,
                    "date_updated": date,
                    "date_sent": date,
                    "api_version": "2010-04-01",
                })
            })
            .collect()
    });
    Json(json!({
        "messages": messages,
        "page": 0,
        "page_size": page_size,
        "next_page_uri": null,
    }))
    .into_response()
}

pub struct FakeTwilio {
    pub addr: SocketAddr,
    shared: Shared,
    task: tokio::task::JoinHandle<()>,
}

impl FakeTwilio {
    pub async fn start() -> anyhow::Result<Self> {
        // Its HTTP client (for status callbacks) uses ring, as all of whatsnap does.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let shared = Shared::default();
        let app = Router::new()
            .route("/2010-04-01/Accounts/{file}", get(account))
            .route(
                "/2010-04-01/Accounts/{sid}/IncomingPhoneNumbers.json",
                get(numbers),
            )
            .route(
                "/2010-04-01/Accounts/{sid}/Messages.json",
                post(create_message).get(list_messages),
            )
            .with_state(shared.clone());
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(Self { addr, shared, task })
    }

    /// The base URL to configure instead of `https://api.twilio.com`.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn add_account(&self, account: FakeTwilioAccount) {
        self.shared
            .with(|inner| inner.accounts.insert(account.sid.clone(), account));
    }

    /// `to` replied STOP: sending to it fails with 21610.
    pub fn opt_out(&self, to: &str) {
        self.shared
            .with(|inner| inner.opted_out.push(to.to_owned()));
    }

    /// The next `count` sends fail with HTTP 500.
    pub fn fail_next_sends(&self, count: usize) {
        self.shared.with(|inner| inner.fail_next = count);
    }

    /// Makes every send of account `sid` misbehave (`None`: behave again).
    pub fn set_send_fault(&self, sid: &str, fault: Option<SendFault>) {
        self.shared.with(|inner| match fault {
            Some(fault) => inner.faults.insert(sid.to_owned(), fault),
            None => inner.faults.remove(sid),
        });
    }

    pub fn sent(&self) -> Vec<SentSms> {
        self.shared.with(|inner| inner.sent.clone())
    }

    /// Reports `status` of a sent message to its StatusCallback, signed as Twilio signs it.
    /// Returns the HTTP status the callback answered.
    pub async fn report_status(
        &self,
        message_sid: &str,
        status: &str,
        error_code: Option<u32>,
    ) -> anyhow::Result<u16> {
        let (message, token) = self.shared.with(|inner| {
            let message = inner.sent.iter().find(|m| m.sid == message_sid).cloned();
            let token = message
                .as_ref()
                .and_then(|m| inner.accounts.get(&m.account_sid))
                .map(|a| a.auth_token.clone());
            (message, token)
        });
        let (Some(message), Some(token)) = (message, token) else {
            anyhow::bail!("no message {message_sid} was sent");
        };
        let Some(callback) = message.status_callback else {
            anyhow::bail!("message {message_sid} was sent without a StatusCallback");
        };
        let mut params = vec![
            ("MessageSid".to_owned(), message.sid.clone()),
            ("SmsSid".to_owned(), message.sid.clone()),
            ("MessageStatus".to_owned(), status.to_owned()),
            ("SmsStatus".to_owned(), status.to_owned()),
            ("AccountSid".to_owned(), message.account_sid.clone()),
            ("From".to_owned(), message.from.clone()),
            ("To".to_owned(), message.to.clone()),
            ("ApiVersion".to_owned(), "2010-04-01".to_owned()),
        ];
        if let Some(code) = error_code {
            params.push(("ErrorCode".to_owned(), code.to_string()));
        }
        let signature = whatsnap_twilio::signature::sign(&token, &callback, &params);
        let response = reqwest::Client::new()
            .post(&callback)
            .header("X-Twilio-Signature", signature)
            .form(&params)
            .send()
            .await?;
        Ok(response.status().as_u16())
    }
}

impl Drop for FakeTwilio {
    fn drop(&mut self) {
        self.task.abort();
    }
}
