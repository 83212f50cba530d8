//! `decide`: which user owns a contact now, and why; `should_reassign_for_silence`: whether an
//! owner who has not replied should lose the contact.

use std::collections::BTreeMap;

use chrono::{DateTime, Duration, Utc};
use uuid::Uuid;
use whatsnap_events::{
    AccountKind, AssignmentSkipped, CandidateConsidered, ContactAssigned, Event,
};

use super::history::{History, PastDecision};
use super::rules::{
    Conditions, Hours, Manual, MultiTouch, Rule, RuleSet, Strategy, Trigger, UserId,
};
use super::schedule::{Openness, format_minute, local_label};
use super::users::User;

/// The reason a contact is left unassigned when neither its account nor its location has rules.
pub const NO_RULES: &str = "no assignment rules are set for this account or its location";

/// A current owner of the contact, for one account (`None`: a location-wide assignment).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ownership {
    pub account_id: Option<Uuid>,
    pub user_id: UserId,
    pub since: DateTime<Utc>,
}

/// How a GHL user, not whatsnap, came to own the contact.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum GhlOwnerKind {
    /// GHL had the contact, with this owner, before it first messaged a connected account.
    BeforeWhatsnap,
    /// A GHL user reassigned the contact by hand, or removed its owner.
    ReassignedInGhl,
}

/// An owner chosen in GHL, outside whatsnap; the location's `manual` policy says whether the
/// rules may override it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct GhlOwner {
    /// `None`: a GHL user removed the contact's owner by hand (always `Some` before whatsnap).
    pub user_id: Option<UserId>,
    pub kind: GhlOwnerKind,
    /// When whatsnap learned of it (the time of the event that recorded it).
    pub since: DateTime<Utc>,
}

impl GhlOwner {
    fn describe(&self) -> String {
        match (self.kind, &self.user_id) {
            (GhlOwnerKind::BeforeWhatsnap, Some(user)) => {
                format!("owner in GHL before whatsnap: {user}")
            }
            (GhlOwnerKind::BeforeWhatsnap, None) => "no owner in GHL before whatsnap".to_owned(),
            (GhlOwnerKind::ReassignedInGhl, Some(user)) => {
                format!("reassigned to {user} by hand in GHL")
            }
            (GhlOwnerKind::ReassignedInGhl, None) => "owner removed by hand in GHL".to_owned(),
        }
    }
}

/// Everything about the contact and the moment that the rules may look at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Situation {
    pub contact_id: Uuid,
    /// The account messaged or tagged; `None` when no account is involved.
    pub account_id: Option<Uuid>,
    /// The channel (platform) of the location's accounts, for `multi_touch: per_channel` and
    /// `when.channels`; an account missing here has no known channel.
    pub channels: BTreeMap<Uuid, AccountKind>,
    pub trigger: Trigger,
    /// The contact's source or attribution, e.g. `Google Ads Campaign`.
    pub contact_source: Option<String>,
    /// The contact existed (in GHL or whatsnap) before this interaction.
    pub existed_before: bool,
    /// Who owned the contact before, e.g. the GHL contact's assigned user when it was found.
    pub previous_owner: Option<UserId>,
    /// Who owns the contact now, per account ([`History::owners_of`] derives it from decisions).
    pub owners: Vec<Ownership>,
    /// Users the caller rules out for this decision, with why (e.g. an owner who did not reply
    /// in time, see [`should_reassign_for_silence`]).
    pub exclude: Vec<(UserId, String)>,
    /// The latest owner chosen in GHL rather than by whatsnap, if any.
    pub ghl_owner: Option<GhlOwner>,
    /// Who GHL shows as the owner (`assignedTo`), as whatsnap last heard; `None` when it never
    /// heard. A kept owner GHL does not show is decided again, so that GHL is set.
    pub ghl_assigned_to: Option<Option<UserId>>,
    pub now: DateTime<Utc>,
}

impl Situation {
    /// What asked for the decision, as decisions record it.
    pub fn trigger_name(&self) -> &'static str {
        if self.exclude.is_empty() {
            self.trigger.as_str()
        } else {
            "owner_silent"
        }
    }

    /// The channel of `account`, when known.
    pub fn channel_of(&self, account: Option<Uuid>) -> Option<AccountKind> {
        self.channels.get(&account?).copied()
    }

    fn excluded(&self, user: &UserId) -> Option<String> {
        self.exclude
            .iter()
            .find(|(u, _)| u == user)
            .map(|(_, why)| why.clone())
    }
}

/// A user the engine looked at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    pub user_id: UserId,
    /// The rule that offered the user, or `current_owner`.
    pub rule: String,
    /// `None` for the user chosen; otherwise why the user was passed over.
    pub passed_over: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// A new owner.
    Assign {
        user_id: UserId,
        /// e.g. `round_robin#2`; rules of the location's default are prefixed `location/`.
        rule: String,
        reason: String,
        /// Everyone looked at, in order, the chosen user last.
        candidates: Vec<Candidate>,
        /// Multi-touch `single_owner`: the owner for every account of the contact.
        all_accounts: bool,
    },
    /// The current owner is still valid: nothing changes.
    Keep { user_id: UserId, reason: String },
    /// Left unassigned.
    Skip {
        reason: String,
        candidates: Vec<Candidate>,
    },
}

impl Decision {
    /// The event that records the decision; `Keep` records nothing.
    pub fn event(&self, situation: &Situation) -> Option<Event> {
        let considered = |candidates: &[Candidate]| {
            candidates
                .iter()
                .map(|c| CandidateConsidered {
                    user_id: c.user_id.to_string(),
                    passed_over: c
                        .passed_over
                        .as_ref()
                        .map(|why| format!("{why} ({})", c.rule)),
                })
                .collect()
        };
        match self {
            Decision::Assign {
                user_id,
                rule,
                reason,
                candidates,
                ..
            } => Some(Event::from(ContactAssigned {
                contact_id: situation.contact_id,
                account_id: situation.account_id,
                user_id: user_id.to_string(),
                rule: rule.clone(),
                reason: reason.clone(),
                candidates: considered(candidates),
                trigger: Some(situation.trigger_name().to_owned()),
            })),
            Decision::Skip { reason, candidates } => Some(Event::from(AssignmentSkipped {
                contact_id: situation.contact_id,
                account_id: situation.account_id,
                reason: reason.clone(),
                candidates: considered(candidates),
                trigger: Some(situation.trigger_name().to_owned()),
            })),
            Decision::Keep { .. } => None,
        }
    }

    /// What the history keeps of the decision: only assignments count.
    pub fn past(&self, situation: &Situation) -> Option<PastDecision> {
        match self {
            Decision::Assign { user_id, rule, .. } => Some(PastDecision {
                contact_id: situation.contact_id,
                account_id: situation.account_id,
                user_id: user_id.clone(),
                rule: rule.clone(),
                at: situation.now,
            }),
            _ => None,
        }
    }

    pub fn user(&self) -> Option<&UserId> {
        match self {
            Decision::Assign { user_id, .. } | Decision::Keep { user_id, .. } => Some(user_id),
            Decision::Skip { .. } => None,
        }
    }
}

/// One rule set being evaluated: the account's own, or the location's default.
struct Scope<'a> {
    rules: &'a RuleSet,
    prefix: &'static str,
    /// Which decisions of a round-robin rule make its turn: this account's, or all.
    rotation_account: Option<Option<Uuid>>,
}

/// Decides who owns the contact; see the module documentation for the order of evaluation.
pub fn decide(
    account_rules: Option<&RuleSet>,
    location_rules: Option<&RuleSet>,
    users: &[User],
    history: &History,
    situation: &Situation,
) -> Decision {
    let scopes: Vec<Scope> = [
        account_rules.map(|rules| Scope {
            rules,
            prefix: "",
            rotation_account: Some(situation.account_id),
        }),
        location_rules.map(|rules| Scope {
            rules,
            prefix: "location/",
            rotation_account: None,
        }),
    ]
    .into_iter()
    .flatten()
    .collect();
    let Some(governing) = scopes.first().map(|s| s.rules) else {
        return Decision::Skip {
            reason: NO_RULES.to_owned(),
            candidates: Vec::new(),
        };
    };
    let now = situation.now;
    let find = |id: &UserId| users.iter().find(|u| &u.id == id);
    let invalid = |id: &UserId| match find(id) {
        None => Some("no longer a user of this location".to_owned()),
        Some(user) => situation
            .excluded(&user.id)
            .or_else(|| user.invalid_reason(now)),
    };
    let mut candidates = Vec::new();
    let mut rerouted = None;
    let mut overridden = None;
    let owner = current_owner(governing.multi_touch, situation);

    // An owner chosen in GHL after whatsnap's own choice (or before whatsnap had any).
    if let Some(ghl) = situation.ghl_owner.as_ref().filter(|ghl| {
        owner.is_none_or(|o| Some(&o.user_id) != ghl.user_id.as_ref() && o.since <= ghl.since)
    }) {
        match (governing.manual, &ghl.user_id) {
            // Nobody is what a GHL user chose: the contact stays without an owner.
            (Manual::Respect, None) => {
                let mut reason = format!(
                    "{} (manual: respect): left without an owner until a GHL user assigns one",
                    ghl.describe()
                );
                if let Some(owner) = owner {
                    reason = format!("{reason}; {} is not assigned again", owner.user_id);
                }
                return Decision::Skip { reason, candidates };
            }
            (Manual::Respect, Some(user_id)) => match invalid(user_id) {
                None => {
                    candidates.push(Candidate {
                        user_id: user_id.clone(),
                        rule: "ghl_owner".to_owned(),
                        passed_over: None,
                    });
                    return Decision::Assign {
                        user_id: user_id.clone(),
                        rule: "ghl_owner".to_owned(),
                        reason: format!("{} (manual: respect)", ghl.describe()),
                        candidates,
                        all_accounts: governing.multi_touch == MultiTouch::SingleOwner,
                    };
                }
                Some(why) => {
                    rerouted = Some(format!("passed over {}: {why}", ghl.describe()));
                    candidates.push(Candidate {
                        user_id: user_id.clone(),
                        rule: "ghl_owner".to_owned(),
                        passed_over: Some(why),
                    });
                }
            },
            (Manual::Override, _) => {
                overridden = Some(format!("overrides {} (manual: override)", ghl.describe()));
            }
        }
    }

    if let Some(owner) = owner {
        match invalid(&owner.user_id) {
            None => {
                let reason = format!(
                    "{} owns the contact since {} and is still valid (multi_touch {})",
                    owner.user_id,
                    owner.since.format("%Y-%m-%d %H:%M UTC"),
                    governing.multi_touch.as_str()
                );
                // GHL shows someone else: the kept owner is decided again, and so set in GHL.
                if let Some(shown) = &situation.ghl_assigned_to
                    && shown.as_ref() != Some(&owner.user_id)
                {
                    let shown = shown.as_ref().map_or("nobody", UserId::as_str);
                    let mut reason = format!("{reason}; GHL shows {shown}: written back");
                    if let Some(overridden) = overridden {
                        reason = format!("{reason}; {overridden}");
                    }
                    candidates.push(Candidate {
                        user_id: owner.user_id.clone(),
                        rule: "current_owner".to_owned(),
                        passed_over: None,
                    });
                    return Decision::Assign {
                        user_id: owner.user_id.clone(),
                        rule: "current_owner".to_owned(),
                        reason,
                        candidates,
                        all_accounts: false,
                    };
                }
                return Decision::Keep {
                    user_id: owner.user_id.clone(),
                    reason,
                };
            }
            Some(why) => {
                rerouted = Some(format!("rerouted from {}: {why}", owner.user_id));
                candidates.push(Candidate {
                    user_id: owner.user_id.clone(),
                    rule: "current_owner".to_owned(),
                    passed_over: Some(why),
                });
            }
        }
    }

    let mut notes = Vec::new();
    for scope in &scopes {
        for rule in &scope.rules.rules {
            let id = format!("{}{}", scope.prefix, rule.id);
            if let Err(why) = applies(&rule.when, scope.rules, situation) {
                notes.push(format!("{id} does not apply: {why}"));
                continue;
            }
            let offered = offers(rule, scope, history, situation, &id);
            if offered.is_empty() {
                notes.push(format!(
                    "{id} names nobody: the contact has no previous owner"
                ));
                continue;
            }
            let mut passed = Vec::new();
            for (user_id, why_offered) in offered {
                let unavailable = match find(&user_id) {
                    None => Some("not a user of this location".to_owned()),
                    Some(user) => situation
                        .excluded(&user.id)
                        .or_else(|| unavailable(user, rule, scope.rules, history, now)),
                };
                match unavailable {
                    Some(why) => {
                        passed.push(format!("{user_id} {why}"));
                        candidates.push(Candidate {
                            user_id,
                            rule: id.clone(),
                            passed_over: Some(why),
                        });
                    }
                    None => {
                        let mut reason = why_offered;
                        if !passed.is_empty() {
                            reason = format!("{reason}, as {}", passed.join(", "));
                        }
                        if let Some(rerouted) = rerouted {
                            reason = format!("{reason}; {rerouted}");
                        }
                        if let Some(overridden) = overridden {
                            reason = format!("{reason}; {overridden}");
                        }
                        // Why each earlier rule did not take the contact.
                        if !notes.is_empty() {
                            reason = format!("{reason}; before it: {}", notes.join("; "));
                        }
                        candidates.push(Candidate {
                            user_id: user_id.clone(),
                            rule: id.clone(),
                            passed_over: None,
                        });
                        return Decision::Assign {
                            user_id,
                            rule: id,
                            reason,
                            candidates,
                            all_accounts: governing.multi_touch == MultiTouch::SingleOwner,
                        };
                    }
                }
            }
            notes.push(format!("{id} has no available user"));
        }
    }
    let mut reason = if notes.is_empty() {
        "the rules list no rule".to_owned()
    } else {
        format!("no rule yielded an available user: {}", notes.join("; "))
    };
    if let Some(rerouted) = rerouted {
        reason = format!("{reason}; {rerouted}");
    }
    if let Some(overridden) = overridden {
        reason = format!("{reason}; {overridden}");
    }
    Decision::Skip { reason, candidates }
}

/// The owner whose validity decides whether the contact is kept, per the multi-touch mode.
fn current_owner(mode: MultiTouch, situation: &Situation) -> Option<&Ownership> {
    let mut owners = situation.owners.iter();
    match mode {
        MultiTouch::PerAccount => owners.rfind(|o| o.account_id == situation.account_id),
        MultiTouch::PerChannel => match situation.channel_of(situation.account_id) {
            Some(channel) => owners
                .filter(|o| situation.channel_of(o.account_id) == Some(channel))
                .max_by_key(|o| o.since),
            // An account of no known channel is a channel of its own.
            None => owners.rfind(|o| o.account_id == situation.account_id),
        },
        // `min_by_key` keeps the first of equals, `max_by_key` the last.
        MultiTouch::FirstOwner => owners.min_by_key(|o| o.since),
        MultiTouch::SingleOwner => owners.max_by_key(|o| o.since),
    }
}

/// Whether a rule's conditions hold, or the first that does not.
fn applies(when: &Conditions, rules: &RuleSet, situation: &Situation) -> Result<(), String> {
    if !when.triggers.is_empty() && !when.triggers.contains(&situation.trigger) {
        return Err(format!("trigger is {}", situation.trigger.as_str()));
    }
    if !when.sources.is_empty() {
        match situation.contact_source.as_deref().map(str::trim) {
            None | Some("") => return Err("the contact has no source".to_owned()),
            Some(source) => {
                if !when.sources.iter().any(|s| s.eq_ignore_ascii_case(source)) {
                    return Err(format!("source is `{source}`"));
                }
            }
        }
    }
    if !when.accounts.is_empty()
        && !situation
            .account_id
            .is_some_and(|a| when.accounts.contains(&a))
    {
        return Err("another account".to_owned());
    }
    if !when.channels.is_empty() {
        match situation.channel_of(situation.account_id) {
            None => return Err("the account's channel is not known".to_owned()),
            Some(channel) if !when.channels.contains(&channel) => {
                return Err(format!("channel is {}", channel.as_str()));
            }
            Some(_) => {}
        }
    }
    if let Some(expected) = when.existed_before
        && expected != situation.existed_before
    {
        return Err(if situation.existed_before {
            "the contact existed before".to_owned()
        } else {
            "the contact is new".to_owned()
        });
    }
    if let Some(hours) = when.hours {
        let schedule = rules
            .schedule()
            .expect("validated: hours need business hours");
        let state = schedule.at(situation.now);
        match (hours, state) {
            (Hours::Business, Openness::Open) => {}
            (Hours::Business, Openness::Closed(local)) => {
                return Err(format!("after hours ({local})"));
            }
            (Hours::Business, Openness::Holiday(date)) => return Err(format!("holiday ({date})")),
            (Hours::AfterHours, Openness::Open) => {
                return Err(format!(
                    "business hours ({})",
                    local_label(schedule.time_zone, situation.now)
                ));
            }
            (Hours::AfterHours, _) => {}
        }
    }
    if let Some(window) = &when.window {
        let tz = rules
            .time_zone
            .expect("validated: a window needs a time zone");
        if !window.contains(tz, situation.now) {
            return Err(format!(
                "outside {}-{} ({})",
                format_minute(window.from),
                format_minute(window.until),
                local_label(tz, situation.now)
            ));
        }
    }
    Ok(())
}

/// The users a rule offers, in the order they are tried, each with why it was offered.
fn offers(
    rule: &Rule,
    scope: &Scope,
    history: &History,
    situation: &Situation,
    id: &str,
) -> Vec<(UserId, String)> {
    let mut offered: Vec<(UserId, String)> = match &rule.strategy {
        Strategy::User { user } => vec![(user.clone(), format!("{id} names {user}"))],
        Strategy::TeamLead { team, lead } => vec![(lead.clone(), format!("lead of {team}"))],
        Strategy::RoundRobin { users } => {
            let total: u32 = users.iter().map(|u| u.weight).sum();
            history
                .rotation(id, scope.rotation_account, users)
                .into_iter()
                .map(|i| {
                    let u = &users[i];
                    (
                        u.user.clone(),
                        format!(
                            "round-robin turn of {} (weight {} of {total})",
                            u.user, u.weight
                        ),
                    )
                })
                .collect()
        }
        Strategy::Team {
            team,
            members,
            lead,
        } => {
            let total: u32 = members.iter().map(|u| u.weight).sum();
            let mut offered: Vec<(UserId, String)> = history
                .rotation(id, scope.rotation_account, members)
                .into_iter()
                .map(|i| {
                    let u = &members[i];
                    (
                        u.user.clone(),
                        format!(
                            "{team} member {} in turn (weight {} of {total})",
                            u.user, u.weight
                        ),
                    )
                })
                .collect();
            if let Some(lead) = lead
                && !offered.iter().any(|(u, _)| u == lead)
            {
                offered.push((lead.clone(), format!("lead of {team}, as overflow")));
            }
            offered
        }
        Strategy::PreviousOwner => situation
            .previous_owner
            .iter()
            .map(|u| (u.clone(), format!("previous owner {u}")))
            .collect(),
    };
    if offered.is_empty() {
        return offered;
    }
    for backup in &rule.backup {
        if !offered.iter().any(|(u, _)| u == backup) {
            offered.push((backup.clone(), format!("backup {backup}")));
        }
    }
    offered
}

/// Why a user cannot take a new contact from this rule now, or `None`.
fn unavailable(
    user: &User,
    rule: &Rule,
    rules: &RuleSet,
    history: &History,
    now: DateTime<Utc>,
) -> Option<String> {
    if let Some(why) = user.invalid_reason(now) {
        return Some(why);
    }
    if rule.respect_working_hours
        && let Some(why) = user.outside_working_hours(now)
    {
        return Some(why);
    }
    let capacity = rules.capacity.as_ref()?;
    let limit = capacity.limit_for(&user.id);
    let open = history.open_contacts(
        &user.id,
        now,
        Duration::hours(i64::from(capacity.window_hours)),
    );
    (open >= limit as usize)
        .then(|| format!("at capacity {open}/{limit} in {}h", capacity.window_hours))
}

/// The messages of the contact's conversation, as far as silence is concerned.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Conversation {
    /// The contact's first message not answered yet when known; else its last message (the
    /// silence clock then restarts with each message, so it is never early).
    pub last_inbound: Option<DateTime<Utc>>,
    /// The last message sent to the contact (by the owner, a teammate or a workflow).
    pub last_outbound: Option<DateTime<Utc>>,
}

/// Whether the owner should lose the contact for not replying, and why.
///
/// The owner is silent when the contact wrote after the last outbound message; the silence runs
/// from that message, or from the assignment if it came later, to `now`, counting only the
/// account's business hours when the rules set them (a message at 23:00 waits for the morning).
/// `None` when the rules set no `reassign_after_silence_minutes`, or the owner is within it.
pub fn should_reassign_for_silence(
    rules: Option<&RuleSet>,
    owner: &Ownership,
    conversation: &Conversation,
    now: DateTime<Utc>,
) -> Option<String> {
    let rules = rules?;
    let limit = rules.reassign_after_silence_minutes?;
    let inbound = conversation.last_inbound?;
    if conversation.last_outbound.is_some_and(|out| out >= inbound) {
        return None;
    }
    let since = inbound.max(owner.since);
    let (silent, counted) = match rules.schedule() {
        Some(schedule) => (schedule.open_between(since, now), " of business hours"),
        None => (now - since, ""),
    };
    let minutes = silent.num_minutes();
    (minutes >= i64::from(limit)).then(|| {
        format!(
            "{} has not replied for {minutes} min{counted} (limit {limit} min) since {}",
            owner.user_id,
            since.format("%Y-%m-%d %H:%M UTC")
        )
    })
}
