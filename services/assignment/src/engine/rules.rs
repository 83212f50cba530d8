//! The rules of an account (or of a location, as the default of its accounts): parsed from the
//! JSON that `AssignmentRulesChanged.rules` carries, validated with errors that name the field,
//! and written back with [`RuleSet::to_json`].

use std::collections::{BTreeMap, BTreeSet};
use std::str::FromStr;

use chrono::{NaiveDate, Weekday};
use chrono_tz::Tz;
use serde::{Deserialize, Serialize, Serializer};
use serde_json::{Map, Value};
use uuid::Uuid;
use whatsnap_events::AccountKind;

use super::schedule::{DAY_KEYS, TimeRange, TimeWindow, WeeklyHours, parse_day, parse_minute};

/// A GHL user id: non-empty, no surrounding spaces.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct UserId(String);

impl UserId {
    pub fn parse(text: &str) -> Option<Self> {
        let text = text.trim();
        (!text.is_empty()).then(|| Self(text.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for UserId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<&str> for UserId {
    /// For literals and ids already checked elsewhere; an empty id panics.
    fn from(text: &str) -> Self {
        Self::parse(text).expect("a user id is not empty")
    }
}

/// Why a rules document was refused: the path of the bad field and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {problem}")]
pub struct RulesError {
    /// e.g. `rules[2].users[0].weight`
    pub field: String,
    pub problem: String,
}

fn bad(field: &str, problem: impl Into<String>) -> RulesError {
    RulesError {
        field: field.to_owned(),
        problem: problem.into(),
    }
}

/// How a contact that messages several accounts is owned.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum MultiTouch {
    /// Each account has its own owner of the contact.
    #[default]
    PerAccount,
    /// Each channel (the platform of the account: whatsapp, android_sms, imessage, twilio) has
    /// its own owner of the contact: the latest owner from any account of the same channel keeps
    /// it while valid, and a channel the contact has no owner on yet is decided by the rules.
    PerChannel,
    /// The contact's first owner, from whichever account, keeps it while still valid.
    FirstOwner,
    /// One owner for all accounts: the latest owner keeps it while valid, and a new decision
    /// applies to every account of the contact.
    SingleOwner,
}

impl MultiTouch {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::PerAccount => "per_account",
            Self::PerChannel => "per_channel",
            Self::FirstOwner => "first_owner",
            Self::SingleOwner => "single_owner",
        }
    }
}

/// Whether the rules may take a contact from the owner a GHL user gave it by hand (or that it
/// had in GHL before whatsnap).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Manual {
    /// The owner chosen in GHL stays while valid (default).
    #[default]
    Respect,
    /// The rules decide; the decision's reason names the GHL owner it overrides.
    Override,
}

impl Manual {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Respect => "respect",
            Self::Override => "override",
        }
    }

    fn is_default(&self) -> bool {
        *self == Self::default()
    }
}

/// What asked for a decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Trigger {
    /// A contact was created by messaging an account for the first time.
    NewContact,
    /// An existing contact messaged an account that has rules.
    ReturningContact,
    /// A contact got the tag of an account that has rules.
    AccountTag,
}

impl Trigger {
    pub const ALL: [Trigger; 3] = [Self::NewContact, Self::ReturningContact, Self::AccountTag];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::NewContact => "new_contact",
            Self::ReturningContact => "returning_contact",
            Self::AccountTag => "account_tag",
        }
    }
}

/// No more than `max_open` contacts newly assigned to a user, and still theirs, within the last
/// `window_hours`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Capacity {
    pub max_open: u32,
    pub window_hours: u32,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub per_user: BTreeMap<UserId, u32>,
}

impl Capacity {
    pub fn limit_for(&self, user: &UserId) -> u32 {
        self.per_user.get(user).copied().unwrap_or(self.max_open)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Hours {
    /// While the account is open.
    Business,
    /// While the account is closed, including holidays.
    AfterHours,
}

/// When a rule applies; every condition given must hold.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Conditions {
    /// The contact's source or attribution, compared without case.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub sources: Vec<String>,
    /// The account messaged (useful in a location's default rules).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub accounts: Vec<Uuid>,
    /// The channel (platform) of the account messaged: `whatsapp`, `android_sms`, `imessage`,
    /// `twilio`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub channels: Vec<AccountKind>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hours: Option<Hours>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub window: Option<TimeWindow>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub existed_before: Option<bool>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub triggers: Vec<Trigger>,
}

impl Conditions {
    fn is_empty(&self) -> bool {
        *self == Self::default()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
pub struct Weighted {
    pub user: UserId,
    pub weight: u32,
}

/// Who a rule names.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "strategy", rename_all = "snake_case")]
pub enum Strategy {
    /// One named user.
    User { user: UserId },
    /// The lead of a department or team.
    TeamLead { team: String, lead: UserId },
    /// Several users in turn, in proportion to their weights.
    RoundRobin { users: Vec<Weighted> },
    /// A team's members in turn (in proportion to their weights); its lead takes the contact
    /// when no member can (overflow).
    Team {
        team: String,
        members: Vec<Weighted>,
        #[serde(skip_serializing_if = "Option::is_none")]
        lead: Option<UserId>,
    },
    /// The user who owned the contact before (a contact that existed before).
    PreviousOwner,
}

impl Strategy {
    pub fn name(&self) -> &'static str {
        match self {
            Self::User { .. } => "user",
            Self::TeamLead { .. } => "team_lead",
            Self::RoundRobin { .. } => "round_robin",
            Self::Team { .. } => "team",
            Self::PreviousOwner => "previous_owner",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Rule {
    /// `round_robin#2` unless the document names it; decisions carry it, and a round-robin's
    /// turn is derived from the past decisions that carry it.
    pub id: String,
    #[serde(skip)]
    pub named: bool,
    #[serde(flatten)]
    pub strategy: Strategy,
    /// Tried in order when the strategy yields no available user.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub backup: Vec<UserId>,
    #[serde(skip_serializing_if = "Conditions::is_empty")]
    pub when: Conditions,
    /// `false` lets the rule pick a user outside their working hours (an on-call rule).
    #[serde(skip_serializing_if = "is_true")]
    pub respect_working_hours: bool,
}

fn is_true(value: &bool) -> bool {
    *value
}

/// The validated rules of one account, or of a location.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RuleSet {
    #[serde(skip_serializing_if = "Option::is_none", serialize_with = "tz_name")]
    pub time_zone: Option<Tz>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub business_hours: Option<WeeklyHours>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub holidays: Vec<NaiveDate>,
    pub multi_touch: MultiTouch,
    /// Whether the rules may override an owner chosen in GHL.
    #[serde(skip_serializing_if = "Manual::is_default")]
    pub manual: Manual,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub capacity: Option<Capacity>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reassign_after_silence_minutes: Option<u32>,
    pub rules: Vec<Rule>,
}

fn tz_name<S: Serializer>(tz: &Option<Tz>, s: S) -> Result<S::Ok, S::Error> {
    match tz {
        Some(tz) => s.serialize_str(tz.name()),
        None => s.serialize_none(),
    }
}

impl RuleSet {
    /// The canonical JSON of these rules; [`parse_rules`] reads it back to an equal rule set.
    pub fn to_json(&self) -> Value {
        let mut value = serde_json::to_value(self).expect("rules serialise");
        // A rule's id is written only when the document named it.
        if let Some(rules) = value.get_mut("rules").and_then(Value::as_array_mut) {
            for (json, rule) in rules.iter_mut().zip(&self.rules) {
                if !rule.named {
                    json.as_object_mut().expect("rule object").remove("id");
                }
            }
        }
        value
    }

    /// The account's business hours, when the rules set them.
    pub fn schedule(&self) -> Option<super::schedule::Schedule> {
        Some(super::schedule::Schedule {
            time_zone: self.time_zone?,
            week: self.business_hours.clone()?,
            holidays: self.holidays.clone(),
        })
    }
}

/// Why a `rules_json` (as SetRules and Simulate receive it) was refused; SetRules answers with
/// this text, which the CLI and the dashboard show as is.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RulesJsonError {
    #[error("rules_json is not valid JSON: {0}")]
    Json(String),
    #[error("rules_json: {0}")]
    Rules(RulesError),
}

impl RulesJsonError {
    /// The path of the bad field (`rules[0].users`), when the JSON itself was well formed.
    pub fn field(&self) -> Option<&str> {
        match self {
            Self::Json(_) => None,
            Self::Rules(error) => Some(&error.field),
        }
    }
}

/// Reads and validates a `rules_json`: the one check SetRules, Simulate and the dashboard's
/// validation run.
pub fn parse_rules_json(text: &str) -> Result<(Value, RuleSet), RulesJsonError> {
    let value: Value =
        serde_json::from_str(text).map_err(|e| RulesJsonError::Json(e.to_string()))?;
    let rules = parse_rules(&value).map_err(RulesJsonError::Rules)?;
    Ok((value, rules))
}

/// Parses and validates a rules document. Unknown fields are refused, so a typo never silently
/// turns a rule off.
pub fn parse_rules(value: &Value) -> Result<RuleSet, RulesError> {
    let root = object(value, "rules document")?;
    known(
        root,
        "",
        &[
            "time_zone",
            "business_hours",
            "holidays",
            "multi_touch",
            "manual",
            "capacity",
            "reassign_after_silence_minutes",
            "rules",
        ],
    )?;
    let time_zone = match root.get("time_zone") {
        None | Some(Value::Null) => None,
        Some(v) => {
            let name = string(v, "time_zone")?;
            Some(Tz::from_str(name).map_err(|_| {
                bad(
                    "time_zone",
                    format!("`{name}` is not an IANA time zone (e.g. America/New_York)"),
                )
            })?)
        }
    };
    let business_hours = root
        .get("business_hours")
        .filter(|v| !v.is_null())
        .map(|v| weekly_hours(v, "business_hours"))
        .transpose()?;
    let holidays = match root.get("holidays") {
        None | Some(Value::Null) => Vec::new(),
        Some(v) => array(v, "holidays")?
            .iter()
            .enumerate()
            .map(|(i, d)| {
                let field = format!("holidays[{i}]");
                let text = string(d, &field)?;
                NaiveDate::parse_from_str(text, "%Y-%m-%d")
                    .map_err(|_| bad(&field, format!("`{text}` is not a date like 2026-12-25")))
            })
            .collect::<Result<Vec<_>, _>>()?,
    };
    if time_zone.is_none() {
        if business_hours.is_some() {
            return Err(bad("time_zone", "required with business_hours"));
        }
        if !holidays.is_empty() {
            return Err(bad("time_zone", "required with holidays"));
        }
    }
    if !holidays.is_empty() && business_hours.is_none() {
        return Err(bad("business_hours", "required with holidays"));
    }
    let multi_touch = match root.get("multi_touch") {
        None | Some(Value::Null) => MultiTouch::default(),
        Some(v) => match string(v, "multi_touch")? {
            "per_account" => MultiTouch::PerAccount,
            "per_channel" => MultiTouch::PerChannel,
            "first_owner" => MultiTouch::FirstOwner,
            "single_owner" => MultiTouch::SingleOwner,
            other => {
                return Err(bad(
                    "multi_touch",
                    format!(
                        "`{other}` is not one of per_account, per_channel, first_owner, single_owner"
                    ),
                ));
            }
        },
    };
    let manual = match root.get("manual") {
        None | Some(Value::Null) => Manual::default(),
        Some(v) => match string(v, "manual")? {
            "respect" => Manual::Respect,
            "override" => Manual::Override,
            other => {
                return Err(bad(
                    "manual",
                    format!("`{other}` is not one of respect, override"),
                ));
            }
        },
    };
    let capacity = root
        .get("capacity")
        .filter(|v| !v.is_null())
        .map(capacity)
        .transpose()?;
    let reassign_after_silence_minutes = root
        .get("reassign_after_silence_minutes")
        .filter(|v| !v.is_null())
        .map(|v| positive(v, "reassign_after_silence_minutes"))
        .transpose()?;
    let rules_value = root
        .get("rules")
        .ok_or_else(|| bad("rules", "missing: list the rules, first match wins"))?;
    let mut rules = Vec::new();
    for (i, rule_value) in array(rules_value, "rules")?.iter().enumerate() {
        rules.push(rule(
            rule_value,
            i,
            time_zone.is_some(),
            business_hours.is_some(),
        )?);
    }
    let mut ids = BTreeSet::new();
    for (i, rule) in rules.iter().enumerate() {
        if !ids.insert(rule.id.as_str()) {
            return Err(bad(
                &format!("rules[{i}].id"),
                format!("`{}` names two rules", rule.id),
            ));
        }
    }
    Ok(RuleSet {
        time_zone,
        business_hours,
        holidays,
        multi_touch,
        manual,
        capacity,
        reassign_after_silence_minutes,
        rules,
    })
}

fn rule(value: &Value, index: usize, has_tz: bool, has_hours: bool) -> Result<Rule, RulesError> {
    let path = format!("rules[{index}]");
    let field = |name: &str| format!("{path}.{name}");
    let obj = object(value, &path)?;
    let strategy_name = string(
        obj.get("strategy")
            .ok_or_else(|| bad(&field("strategy"), "missing"))?,
        &field("strategy"),
    )?;
    let (strategy, own): (Strategy, &[&str]) = match strategy_name {
        "user" => (
            Strategy::User {
                user: user_id(required(obj, &field("user"), "user")?, &field("user"))?,
            },
            &["user"],
        ),
        "team_lead" => (
            Strategy::TeamLead {
                team: string(required(obj, &field("team"), "team")?, &field("team"))?
                    .trim()
                    .to_owned(),
                lead: user_id(required(obj, &field("lead"), "lead")?, &field("lead"))?,
            },
            &["team", "lead"],
        ),
        "round_robin" => (
            Strategy::RoundRobin {
                users: weighted_users(obj, &field("users"), "users")?,
            },
            &["users"],
        ),
        "team" => {
            let lead = match obj.get("lead") {
                None | Some(Value::Null) => None,
                Some(v) => Some(user_id(v, &field("lead"))?),
            };
            (
                Strategy::Team {
                    team: string(required(obj, &field("team"), "team")?, &field("team"))?
                        .trim()
                        .to_owned(),
                    members: weighted_users(obj, &field("members"), "members")?,
                    lead,
                },
                &["team", "members", "lead"],
            )
        }
        "previous_owner" => (Strategy::PreviousOwner, &[]),
        other => {
            return Err(bad(
                &field("strategy"),
                format!(
                    "`{other}` is not one of user, team, team_lead, round_robin, previous_owner"
                ),
            ));
        }
    };
    let mut allowed = vec!["strategy", "id", "backup", "when", "respect_working_hours"];
    allowed.extend_from_slice(own);
    known(obj, &path, &allowed)?;
    let (id, named) = match obj.get("id") {
        None | Some(Value::Null) => (format!("{}#{}", strategy.name(), index + 1), false),
        Some(v) => {
            let id = string(v, &field("id"))?.trim();
            if id.is_empty() || id.contains(char::is_whitespace) || id.starts_with("location/") {
                return Err(bad(
                    &field("id"),
                    "must be one word, not starting with location/",
                ));
            }
            (id.to_owned(), true)
        }
    };
    let backup = match obj.get("backup") {
        None | Some(Value::Null) => Vec::new(),
        Some(v) => array(v, &field("backup"))?
            .iter()
            .enumerate()
            .map(|(i, u)| user_id(u, &format!("{}[{i}]", field("backup"))))
            .collect::<Result<_, _>>()?,
    };
    let respect_working_hours = match obj.get("respect_working_hours") {
        None | Some(Value::Null) => true,
        Some(Value::Bool(b)) => *b,
        Some(_) => {
            return Err(bad(
                &field("respect_working_hours"),
                "must be true or false",
            ));
        }
    };
    let when = match obj.get("when") {
        None | Some(Value::Null) => Conditions::default(),
        Some(v) => conditions(v, &field("when"), has_tz, has_hours)?,
    };
    Ok(Rule {
        id,
        named,
        strategy,
        backup,
        when,
        respect_working_hours,
    })
}

/// A list of users with weights (`"u_ana"` or `{"user": "u_ana", "weight": 2}`), not empty.
fn weighted_users(
    obj: &Map<String, Value>,
    users_field: &str,
    name: &str,
) -> Result<Vec<Weighted>, RulesError> {
    let list = array(required(obj, users_field, name)?, users_field)?;
    if list.is_empty() {
        return Err(bad(users_field, "needs at least one user"));
    }
    let mut users: Vec<Weighted> = Vec::new();
    for (i, entry) in list.iter().enumerate() {
        let at = format!("{users_field}[{i}]");
        let weighted = match entry {
            Value::String(_) => Weighted {
                user: user_id(entry, &at)?,
                weight: 1,
            },
            Value::Object(o) => {
                known(o, &at, &["user", "weight"])?;
                Weighted {
                    user: user_id(
                        required(o, &format!("{at}.user"), "user")?,
                        &format!("{at}.user"),
                    )?,
                    weight: match o.get("weight") {
                        None => 1,
                        Some(w) => positive(w, &format!("{at}.weight"))?,
                    },
                }
            }
            _ => {
                return Err(bad(
                    &at,
                    "must be a user id or {\"user\": .., \"weight\": ..}",
                ));
            }
        };
        if weighted.weight > 1000 {
            return Err(bad(&format!("{at}.weight"), "must be at most 1000"));
        }
        if users.iter().any(|u| u.user == weighted.user) {
            return Err(bad(&at, format!("`{}` is listed twice", weighted.user)));
        }
        users.push(weighted);
    }
    Ok(users)
}

fn conditions(
    value: &Value,
    path: &str,
    has_tz: bool,
    has_hours: bool,
) -> Result<Conditions, RulesError> {
    let obj = object(value, path)?;
    known(
        obj,
        path,
        &[
            "sources",
            "accounts",
            "channels",
            "hours",
            "window",
            "existed_before",
            "triggers",
        ],
    )?;
    let field = |name: &str| format!("{path}.{name}");
    let strings = |name: &str| -> Result<Vec<&str>, RulesError> {
        match obj.get(name) {
            None | Some(Value::Null) => Ok(Vec::new()),
            Some(v) => {
                let list = array(v, &field(name))?;
                if list.is_empty() {
                    return Err(bad(&field(name), "is empty: leave it out to match any"));
                }
                list.iter()
                    .enumerate()
                    .map(|(i, s)| string(s, &format!("{}[{i}]", field(name))))
                    .collect()
            }
        }
    };
    let sources = strings("sources")?
        .into_iter()
        .map(|s| s.trim().to_owned())
        .collect();
    let accounts = strings("accounts")?
        .into_iter()
        .enumerate()
        .map(|(i, s)| {
            Uuid::parse_str(s.trim()).map_err(|_| {
                bad(
                    &format!("{}[{i}]", field("accounts")),
                    format!("`{s}` is not an account id (UUID)"),
                )
            })
        })
        .collect::<Result<_, _>>()?;
    let mut channels: Vec<AccountKind> = Vec::new();
    for (i, name) in strings("channels")?.into_iter().enumerate() {
        let at = format!("{}[{i}]", field("channels"));
        let channel = AccountKind::from_name(name.trim()).ok_or_else(|| {
            bad(
                &at,
                format!("`{name}` is not one of whatsapp, android_sms, imessage, twilio"),
            )
        })?;
        if channels.contains(&channel) {
            return Err(bad(&at, format!("`{name}` is listed twice")));
        }
        channels.push(channel);
    }
    let triggers = strings("triggers")?
        .into_iter()
        .enumerate()
        .map(|(i, s)| {
            Trigger::ALL
                .into_iter()
                .find(|t| t.as_str() == s)
                .ok_or_else(|| {
                    bad(
                        &format!("{}[{i}]", field("triggers")),
                        format!("`{s}` is not one of new_contact, returning_contact, account_tag"),
                    )
                })
        })
        .collect::<Result<_, _>>()?;
    let hours = match obj.get("hours") {
        None | Some(Value::Null) => None,
        Some(v) => {
            let hours = match string(v, &field("hours"))? {
                "business" => Hours::Business,
                "after_hours" => Hours::AfterHours,
                other => {
                    return Err(bad(
                        &field("hours"),
                        format!("`{other}` is not one of business, after_hours"),
                    ));
                }
            };
            if !has_hours {
                return Err(bad(
                    &field("hours"),
                    "needs business_hours and time_zone in the rules",
                ));
            }
            Some(hours)
        }
    };
    let window = match obj.get("window") {
        None | Some(Value::Null) => None,
        Some(v) => {
            let at = field("window");
            if !has_tz {
                return Err(bad(&at, "needs time_zone in the rules"));
            }
            let w = object(v, &at)?;
            known(w, &at, &["days", "from", "until"])?;
            let time = |name: &str| -> Result<u16, RulesError> {
                let f = format!("{at}.{name}");
                let text = string(required(w, &f, name)?, &f)?;
                parse_minute(text, false)
                    .ok_or_else(|| bad(&f, format!("`{text}` is not a time like 09:00")))
            };
            let (from, until) = (time("from")?, time("until")?);
            if from == until {
                return Err(bad(
                    &format!("{at}.until"),
                    "equals from: the window would be empty",
                ));
            }
            let days = match w.get("days") {
                None | Some(Value::Null) => Vec::new(),
                Some(d) => array(d, &format!("{at}.days"))?
                    .iter()
                    .enumerate()
                    .map(|(i, d)| day(d, &format!("{at}.days[{i}]")))
                    .collect::<Result<_, _>>()?,
            };
            Some(TimeWindow { days, from, until })
        }
    };
    let existed_before = match obj.get("existed_before") {
        None | Some(Value::Null) => None,
        Some(Value::Bool(b)) => Some(*b),
        Some(_) => return Err(bad(&field("existed_before"), "must be true or false")),
    };
    Ok(Conditions {
        sources,
        accounts,
        channels,
        hours,
        window,
        existed_before,
        triggers,
    })
}

fn capacity(value: &Value) -> Result<Capacity, RulesError> {
    let obj = object(value, "capacity")?;
    known(obj, "capacity", &["max_open", "window_hours", "per_user"])?;
    let max_open = positive(
        required(obj, "capacity.max_open", "max_open")?,
        "capacity.max_open",
    )?;
    let window_hours = match obj.get("window_hours") {
        None => 24,
        Some(v) => positive(v, "capacity.window_hours")?,
    };
    if window_hours > 24 * 366 {
        return Err(bad(
            "capacity.window_hours",
            "must be at most a year (8784)",
        ));
    }
    let mut per_user = BTreeMap::new();
    if let Some(v) = obj.get("per_user").filter(|v| !v.is_null()) {
        for (user, limit) in object(v, "capacity.per_user")? {
            let at = format!("capacity.per_user.{user}");
            let id = UserId::parse(user).ok_or_else(|| bad(&at, "empty user id"))?;
            per_user.insert(id, positive(limit, &at)?);
        }
    }
    Ok(Capacity {
        max_open,
        window_hours,
        per_user,
    })
}

pub(crate) fn weekly_hours(value: &Value, path: &str) -> Result<WeeklyHours, RulesError> {
    let obj = object(value, path)?;
    known(obj, path, &DAY_KEYS)?;
    let mut week = WeeklyHours::default();
    for (key, ranges) in obj {
        let day = parse_day(key).expect("checked above");
        let at = format!("{path}.{key}");
        let mut parsed: Vec<TimeRange> = array(ranges, &at)?
            .iter()
            .enumerate()
            .map(|(i, r)| {
                let f = format!("{at}[{i}]");
                TimeRange::parse(string(r, &f)?).map_err(|e| bad(&f, e))
            })
            .collect::<Result<_, _>>()?;
        parsed.sort_by_key(|r| r.start);
        if let Some(pair) = parsed.windows(2).find(|p| p[1].start < p[0].end) {
            return Err(bad(&at, format!("{} overlaps {}", pair[0], pair[1])));
        }
        week.days[day.num_days_from_monday() as usize] = parsed;
    }
    Ok(week)
}

fn day(value: &Value, path: &str) -> Result<Weekday, RulesError> {
    let text = string(value, path)?;
    parse_day(text).ok_or_else(|| {
        bad(
            path,
            format!("`{text}` is not one of {}", DAY_KEYS.join(", ")),
        )
    })
}

fn object<'a>(value: &'a Value, path: &str) -> Result<&'a Map<String, Value>, RulesError> {
    value
        .as_object()
        .ok_or_else(|| bad(path, "must be a JSON object"))
}

fn array<'a>(value: &'a Value, path: &str) -> Result<&'a Vec<Value>, RulesError> {
    value
        .as_array()
        .ok_or_else(|| bad(path, "must be a JSON array"))
}

fn string<'a>(value: &'a Value, path: &str) -> Result<&'a str, RulesError> {
    value.as_str().ok_or_else(|| bad(path, "must be a string"))
}

fn required<'a>(
    obj: &'a Map<String, Value>,
    path: &str,
    name: &str,
) -> Result<&'a Value, RulesError> {
    obj.get(name)
        .filter(|v| !v.is_null())
        .ok_or_else(|| bad(path, "missing"))
}

fn user_id(value: &Value, path: &str) -> Result<UserId, RulesError> {
    UserId::parse(string(value, path)?).ok_or_else(|| bad(path, "empty user id"))
}

fn positive(value: &Value, path: &str) -> Result<u32, RulesError> {
    value
        .as_u64()
        .filter(|n| *n >= 1)
        .and_then(|n| u32::try_from(n).ok())
        .ok_or_else(|| bad(path, "must be a whole number of at least 1"))
}

fn known(obj: &Map<String, Value>, path: &str, allowed: &[&str]) -> Result<(), RulesError> {
    match obj.keys().find(|k| !allowed.contains(&k.as_str())) {
        None => Ok(()),
        Some(key) => {
            let field = if path.is_empty() {
                key.clone()
            } else {
                format!("{path}.{key}")
            };
            Err(bad(
                &field,
                format!("unknown field; expected one of {}", allowed.join(", ")),
            ))
        }
    }
}
