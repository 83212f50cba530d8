//! What the fake GHL knows: tokens, contacts, conversations, messages, users, rate-limit usage,
//! injected failures and the record of every request. All behind one lock; no I/O here.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use rand_core::RngCore as _;
use serde_json::{Map, Value, json};
use tokio::time::Instant;

use super::{
    FakeGhlContact, FakeGhlLimits, FakeGhlMessage, FakeGhlUser, RecordedRequest, SchemaViolation,
    StatusUpdate,
};

/// A GHL-looking id: 20 letters and digits, like `ve9EPM428h8vShlRW1KT`.
pub(crate) fn ghl_id() -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    let mut bytes = [0u8; 20];
    rand_core::OsRng.fill_bytes(&mut bytes);
    bytes
        .iter()
        .map(|b| ALPHABET[*b as usize % ALPHABET.len()] as char)
        .collect()
}

/// A random opaque token with a recognisable prefix (`pit-` is what GHL's PITs look like).
pub(crate) fn opaque(prefix: &str) -> String {
    let mut bytes = [0u8; 16];
    rand_core::OsRng.fill_bytes(&mut bytes);
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!("{prefix}{hex}")
}

pub(crate) fn now_iso() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// What a token may act on: one sub-account, or an agency.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Bearer {
    Location {
        location_id: String,
        company_id: String,
    },
    Company {
        company_id: String,
    },
}

impl Bearer {
    /// The resource GHL counts rate limits against (§7: per location or company).
    pub fn resource(&self) -> &str {
        match self {
            Bearer::Location { location_id, .. } => location_id,
            Bearer::Company { company_id } => company_id,
        }
    }

    pub fn company(&self) -> &str {
        match self {
            Bearer::Location { company_id, .. } | Bearer::Company { company_id } => company_id,
        }
    }
}

#[derive(Debug, Clone)]
pub(crate) struct AccessToken {
    pub bearer: Bearer,
    /// None for Private Integration Tokens, which do not expire.
    pub expires_at: Option<Instant>,
}

/// What an authorization code or refresh token stands for.
#[derive(Debug, Clone)]
pub(crate) struct Grant {
    pub bearer: Bearer,
    pub user_id: String,
    /// The redirect URI the code was issued for, when known.
    pub redirect_uri: Option<String>,
}

#[derive(Debug, Default)]
pub(crate) struct Usage {
    window: VecDeque<Instant>,
    day_start: Option<Instant>,
    day_count: u32,
}

/// The rate-limit headers of one answer, and whether the request was admitted.
#[derive(Debug, Clone)]
pub(crate) struct RateHeaders {
    pub limits: FakeGhlLimits,
    pub daily_remaining: u32,
    pub burst_remaining: u32,
    /// Set when the request was refused: seconds until it could succeed.
    pub retry_after: Option<u64>,
}

const DAY: Duration = Duration::from_secs(24 * 60 * 60);

impl Usage {
    /// Counts a request at `now` unless it exceeds `limits`.
    pub fn admit(&mut self, limits: FakeGhlLimits, now: Instant) -> RateHeaders {
        while self
            .window
            .front()
            .is_some_and(|t| now.duration_since(*t) >= limits.burst_window)
        {
            self.window.pop_front();
        }
        let day_start = *self.day_start.get_or_insert(now);
        if now.duration_since(day_start) >= DAY {
            self.day_start = Some(now);
            self.day_count = 0;
        }
        let day_start = self.day_start.unwrap_or(now);
        let burst_full = self.window.len() as u32 >= limits.burst_max;
        let day_full = self.day_count >= limits.daily_max;
        let retry_after = if day_full {
            Some(DAY.saturating_sub(now.duration_since(day_start)))
        } else if burst_full {
            self.window.front().map(|oldest| {
                limits
                    .burst_window
                    .saturating_sub(now.duration_since(*oldest))
            })
        } else {
            self.window.push_back(now);
            self.day_count += 1;
            None
        };
        RateHeaders {
            limits,
            daily_remaining: limits.daily_max.saturating_sub(self.day_count),
            burst_remaining: limits.burst_max.saturating_sub(self.window.len() as u32),
            retry_after: retry_after.map(|d| d.as_millis().div_ceil(1000).max(1) as u64),
        }
    }
}

#[derive(Debug, Clone)]
pub(crate) struct Contact {
    pub id: String,
    pub location_id: String,
    pub first_name: Option<String>,
    pub last_name: Option<String>,
    pub name: Option<String>,
    pub email: Option<String>,
    pub phone: Option<String>,
    pub tags: Vec<String>,
    pub assigned_to: Option<String>,
    pub date_added: String,
    pub date_updated: String,
    /// Every other field as the client sent it (address1, source, customFields, …).
    pub other: Map<String, Value>,
}

/// Phones compare as E.164: separators a human would type are dropped, nothing else is
/// guessed. A number without `+` (or a `+` a client forgot to URL-encode, which arrives as a
/// space) stays different from the stored E.164 one, so such client bugs show.
pub(crate) fn normalize_phone(phone: &str) -> String {
    let trimmed = phone.trim_end();
    if let Some(rest) = trimmed.strip_prefix('+') {
        let digits: String = rest
            .chars()
            .filter(|c| !matches!(c, ' ' | '-' | '(' | ')' | '.'))
            .collect();
        format!("+{digits}")
    } else {
        trimmed.to_owned()
    }
}

impl Contact {
    pub fn new(location_id: &str) -> Self {
        let now = now_iso();
        Self {
            id: ghl_id(),
            location_id: location_id.to_owned(),
            first_name: None,
            last_name: None,
            name: None,
            email: None,
            phone: None,
            tags: Vec::new(),
            assigned_to: None,
            date_added: now.clone(),
            date_updated: now,
            other: Map::new(),
        }
    }

    /// Applies an upsert or update body. `tags` replaces the whole list, as GHL documents.
    pub fn apply(&mut self, body: &Map<String, Value>) {
        let text = |v: &Value| v.as_str().map(str::to_owned);
        for (key, value) in body {
            match key.as_str() {
                "locationId" | "createNewIfDuplicateAllowed" => {}
                "firstName" => self.first_name = text(value),
                "lastName" => self.last_name = text(value),
                "name" => self.name = text(value),
                "email" => self.email = text(value),
                "phone" => self.phone = text(value).map(|p| normalize_phone(&p)),
                "assignedTo" => self.assigned_to = text(value),
                "tags" => {
                    self.tags.clear();
                    add_tags(&mut self.tags, value);
                }
                _ if value.is_null() => {
                    self.other.remove(key);
                }
                _ => {
                    self.other.insert(key.clone(), value.clone());
                }
            }
        }
        if !body.contains_key("name")
            && (body.contains_key("firstName") || body.contains_key("lastName"))
        {
            let joined = [&self.first_name, &self.last_name]
                .into_iter()
                .flatten()
                .cloned()
                .collect::<Vec<_>>()
                .join(" ");
            self.name = (!joined.is_empty()).then_some(joined);
        }
        self.date_updated = now_iso();
    }

    /// The contact as GHL's `GetContectByIdSchema` shows it.
    pub fn to_json(&self) -> Value {
        let mut json = self.other.clone();
        let fields = [
            ("id", json!(self.id)),
            ("locationId", json!(self.location_id)),
            ("name", json!(self.name)),
            ("firstName", json!(self.first_name)),
            ("lastName", json!(self.last_name)),
            ("email", json!(self.email)),
            (
                "emailLowerCase",
                json!(self.email.as_ref().map(|e| e.to_lowercase())),
            ),
            ("phone", json!(self.phone)),
            ("tags", json!(self.tags)),
            ("assignedTo", json!(self.assigned_to)),
            ("dateAdded", json!(self.date_added)),
            ("dateUpdated", json!(self.date_updated)),
        ];
        for (key, value) in fields {
            json.insert(key.to_owned(), value);
        }
        json.entry("type").or_insert(json!("lead"));
        Value::Object(json)
    }

    pub fn public(&self) -> FakeGhlContact {
        FakeGhlContact {
            id: self.id.clone(),
            location_id: self.location_id.clone(),
            phone: self.phone.clone(),
            email: self.email.clone(),
            name: self.name.clone(),
            first_name: self.first_name.clone(),
            last_name: self.last_name.clone(),
            tags: self.tags.clone(),
            assigned_to: self.assigned_to.clone(),
            fields: self.to_json(),
        }
    }
}

/// Adds the strings of `value` to `tags`, each once.
pub(crate) fn add_tags(tags: &mut Vec<String>, value: &Value) {
    for tag in value
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
    {
        if !tags.iter().any(|t| t == tag) {
            tags.push(tag.to_owned());
        }
    }
}

#[derive(Debug, Clone)]
pub(crate) struct Message {
    pub public: FakeGhlMessage,
    /// When GHL posted it to the provider's Delivery URL; status updates before
    /// `downstream_delay` has passed since are refused (§2.4).
    pub sent_to_provider_at: Option<Instant>,
}

pub(crate) struct Inner {
    pub client_id: String,
    pub client_secret: String,
    pub access_token_lifetime: Duration,
    pub downstream_delay: Duration,
    pub latency: Duration,
    pub down: bool,
    pub fail_next: (usize, u16),
    /// Inbound messages whose text contains this are refused with this status.
    pub refuse_text: Option<(String, u16)>,
    pub fail_locations: HashMap<String, u16>,
    pub forbid_unknown_properties: bool,
    pub limits: FakeGhlLimits,
    pub location_limits: HashMap<String, FakeGhlLimits>,
    pub usage: HashMap<String, Usage>,
    pub rate_limited: HashMap<String, usize>,
    pub tokens: HashMap<String, AccessToken>,
    pub codes: HashMap<String, Grant>,
    pub refresh_tokens: HashMap<String, Grant>,
    pub location_companies: HashMap<String, String>,
    pub contacts: Vec<Contact>,
    /// Contact id → conversation id: GHL keeps one conversation per contact.
    pub conversations: HashMap<String, String>,
    pub messages: Vec<Message>,
    pub status_updates: Vec<StatusUpdate>,
    pub users: Vec<(String, FakeGhlUser)>,
    pub requests: Vec<RecordedRequest>,
    pub violations: Vec<SchemaViolation>,
}

impl Inner {
    pub fn new(client_id: &str, client_secret: &str) -> Self {
        Self {
            client_id: client_id.to_owned(),
            client_secret: client_secret.to_owned(),
            // GHL's example `expires_in` (§5.2).
            access_token_lifetime: Duration::from_secs(86_399),
            downstream_delay: Duration::from_secs(2),
            latency: Duration::ZERO,
            down: false,
            fail_next: (0, 500),
            refuse_text: None,
            fail_locations: HashMap::new(),
            forbid_unknown_properties: true,
            limits: FakeGhlLimits::default(),
            location_limits: HashMap::new(),
            usage: HashMap::new(),
            rate_limited: HashMap::new(),
            tokens: HashMap::new(),
            codes: HashMap::new(),
            refresh_tokens: HashMap::new(),
            location_companies: HashMap::new(),
            contacts: Vec::new(),
            conversations: HashMap::new(),
            messages: Vec::new(),
            status_updates: Vec::new(),
            users: Vec::new(),
            requests: Vec::new(),
            violations: Vec::new(),
        }
    }

    pub fn company_of(&self, location_id: &str) -> String {
        self.location_companies
            .get(location_id)
            .cloned()
            .unwrap_or_else(|| super::FakeGhl::COMPANY_ID.to_owned())
    }

    /// The bearer of a live access token.
    pub fn bearer(&self, token: &str, now: Instant) -> Option<Bearer> {
        let token = self.tokens.get(token)?;
        if token.expires_at.is_some_and(|at| now >= at) {
            return None;
        }
        Some(token.bearer.clone())
    }

    /// A new access token (and refresh token, for OAuth grants) for `grant`.
    pub fn issue_tokens(
        &mut self,
        grant: &Grant,
        now: Instant,
        refresh: bool,
    ) -> (String, Option<String>) {
        let access = opaque("fake-at-");
        self.tokens.insert(
            access.clone(),
            AccessToken {
                bearer: grant.bearer.clone(),
                expires_at: Some(now + self.access_token_lifetime),
            },
        );
        let refresh = refresh.then(|| {
            let token = opaque("fake-rt-");
            self.refresh_tokens.insert(token.clone(), grant.clone());
            token
        });
        (access, refresh)
    }

    pub fn contact(&self, id: &str) -> Option<&Contact> {
        self.contacts.iter().find(|c| c.id == id)
    }

    pub fn contact_mut(&mut self, id: &str) -> Option<&mut Contact> {
        self.contacts.iter_mut().find(|c| c.id == id)
    }

    /// The contact of `location_id` with this phone (compared as E.164).
    pub fn contact_by_phone(&self, location_id: &str, phone: &str) -> Option<&Contact> {
        let phone = normalize_phone(phone);
        self.contacts
            .iter()
            .find(|c| c.location_id == location_id && c.phone.as_deref() == Some(phone.as_str()))
    }

    pub fn contact_by_email(&self, location_id: &str, email: &str) -> Option<&Contact> {
        self.contacts.iter().find(|c| {
            c.location_id == location_id
                && c.email
                    .as_deref()
                    .is_some_and(|e| e.eq_ignore_ascii_case(email))
        })
    }

    /// The contact's conversation, created on first use.
    pub fn conversation_of(&mut self, contact_id: &str) -> String {
        self.conversations
            .entry(contact_id.to_owned())
            .or_insert_with(ghl_id)
            .clone()
    }

    pub fn contact_of_conversation(&self, conversation_id: &str) -> Option<String> {
        self.conversations
            .iter()
            .find(|(_, c)| *c == conversation_id)
            .map(|(contact, _)| contact.clone())
    }

    pub fn limits_for(&self, resource: &str) -> FakeGhlLimits {
        self.location_limits
            .get(resource)
            .copied()
            .unwrap_or(self.limits)
    }

    pub fn record_status(
        &mut self,
        message_id: &str,
        status: &str,
        error: Option<Value>,
        http_status: u16,
    ) {
        self.status_updates.push(StatusUpdate {
            message_id: message_id.to_owned(),
            status: status.to_owned(),
            error,
            at: SystemTime::now(),
            http_status,
        });
    }
}

#[derive(Clone)]
pub(crate) struct Shared(pub Arc<Mutex<Inner>>);

impl Shared {
    pub fn with<T>(&self, f: impl FnOnce(&mut Inner) -> T) -> T {
        f(&mut self.0.lock().expect("fake ghl lock"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(burst_max: u32, daily_max: u32) -> FakeGhlLimits {
        FakeGhlLimits {
            burst_max,
            burst_window: Duration::from_secs(10),
            daily_max,
        }
    }

    #[test]
    fn the_burst_window_slides() {
        let start = Instant::now();
        let mut usage = Usage::default();
        let first = usage.admit(limits(2, 100), start);
        assert_eq!((first.burst_remaining, first.retry_after), (1, None));
        usage.admit(limits(2, 100), start + Duration::from_secs(4));
        let refused = usage.admit(limits(2, 100), start + Duration::from_secs(5));
        assert_eq!(refused.retry_after, Some(5));
        assert_eq!(refused.daily_remaining, 98);
        // The first request leaves the window 10 s after it was made.
        let later = usage.admit(limits(2, 100), start + Duration::from_secs(10));
        assert_eq!((later.burst_remaining, later.retry_after), (0, None));
    }

    #[test]
    fn the_daily_cap_holds_across_windows_until_a_day_has_passed() {
        let start = Instant::now();
        let mut usage = Usage::default();
        usage.admit(limits(100, 1), start);
        let refused = usage.admit(limits(100, 1), start + Duration::from_secs(60));
        assert_eq!(refused.daily_remaining, 0);
        assert!(refused.retry_after.is_some_and(|s| s > 80_000));
        let next_day = usage.admit(limits(100, 1), start + DAY);
        assert_eq!(next_day.retry_after, None);
    }

    #[test]
    fn phones_compare_as_e164_without_guessing() {
        assert_eq!(normalize_phone("+1 888-888-8888"), "+18888888888");
        assert_eq!(normalize_phone(" 14155550123"), " 14155550123");
        assert_eq!(normalize_phone("4155550123"), "4155550123");
    }

    #[test]
    fn upserted_tags_replace_and_names_join() {
        let mut contact = Contact::new("loc");
        contact.tags = vec!["old".into()];
        let body = json!({"firstName": "Ada", "lastName": "Lovelace", "tags": ["a", "a", "b"]});
        contact.apply(body.as_object().unwrap());
        assert_eq!(contact.tags, ["a", "b"]);
        assert_eq!(contact.name.as_deref(), Some("Ada Lovelace"));
    }
}
