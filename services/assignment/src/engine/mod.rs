//! The assignment rules engine: which GHL user owns a contact, and why. Pure code: no I/O, no
//! clock (the caller passes `now`), no randomness. Its only memory is the [`History`] of past
//! decisions it is given, so replaying the same inputs gives the same decisions.
//!
//! # Rules
//!
//! Each account may have a rule set, and the location a default one; both are the JSON carried
//! by `AssignmentRulesChanged.rules`, read by [`parse_rules`] (which names the bad field of a
//! refused document, e.g. `rules[2].users[0].weight: must be a whole number of at least 1`) and
//! written by [`RuleSet::to_json`].
//!
//! ```json
//! {
//!   "time_zone": "America/New_York",
//!   "business_hours": { "mon": ["09:00-12:30", "13:30-18:00"], "tue": ["09:00-18:00"],
//!                       "wed": ["09:00-18:00"], "thu": ["09:00-18:00"], "fri": ["09:00-17:00"] },
//!   "holidays": ["2026-11-26", "2026-12-25"],
//!   "multi_touch": "first_owner",
//!   "capacity": { "max_open": 5, "window_hours": 24, "per_user": { "u_ana": 8 } },
//!   "reassign_after_silence_minutes": 30,
//!   "rules": [
//!     { "strategy": "previous_owner", "when": { "existed_before": true } },
//!     { "strategy": "user", "user": "u_senior", "backup": ["u_lead"],
//!       "when": { "sources": ["Google Ads Campaign"], "hours": "business" } },
//!     { "strategy": "user", "user": "u_referrals", "when": { "sources": ["Referral Program"] } },
//!     { "strategy": "round_robin",
//!       "users": [ { "user": "u_ana", "weight": 2 }, "u_ben", "u_cleo" ],
//!       "when": { "hours": "business" } },
//!     { "id": "night_shift", "strategy": "user", "user": "u_oncall",
//!       "respect_working_hours": false, "when": { "hours": "after_hours" } },
//!     { "strategy": "team_lead", "team": "Sales", "lead": "u_lead", "backup": ["u_owner"] }
//!   ]
//! }
//! ```
//!
//! - `strategy`: `user` (one named user), `team_lead` (a department's lead; `team` names the
//!   department), `round_robin` (users in turn in proportion to `weight`, default 1), `team`
//!   (`members` in turn like a round-robin, then its optional `lead` as overflow),
//!   `previous_owner` (the contact's owner before it came back).
//! - `backup`: users tried in order when the strategy yields no available user.
//! - `when`: every condition given must hold: `sources` (contact source or attribution, any case),
//!   `accounts` (account ids, for a location's default rules), `channels` (the platform of the
//!   account messaged: `whatsapp`, `android_sms`, `imessage`, `twilio`), `hours` (`business` or
//!   `after_hours`, by `business_hours` in `time_zone`, closed all day on `holidays`), `window`
//!   (`{"days": ["mon"], "from": "08:00", "until": "12:00"}` in `time_zone`; `from` after
//!   `until` crosses midnight), `existed_before` (bool), `triggers` (`new_contact`,
//!   `returning_contact`, `account_tag`).
//! - `respect_working_hours: false` lets a rule pick a user outside their own working hours.
//! - `capacity`: a user takes no more than `max_open` (or their `per_user` limit) contacts
//!   assigned to them and still theirs and open within the last `window_hours` (default 24).
//! - `multi_touch`, for a contact that messages several accounts: `per_account` (default; each
//!   account its own owner), `per_channel` (each channel its own owner: the latest owner from
//!   any account of the same platform keeps it while valid, so a contact on a WhatsApp account
//!   and on a Twilio number can have two owners, and two WhatsApp accounts share one),
//!   `first_owner` (the contact's first owner keeps it while valid), or `single_owner` (one
//!   owner for all accounts: the latest owner keeps it while valid, and a new decision is
//!   flagged `all_accounts`).
//! - `manual`: `respect` (default) or `override`, whether the rules may take a contact from an
//!   owner chosen in GHL (see step 2 below).
//! - A rule's id is `strategy#position` (`round_robin#4`) unless it has an `id`; the location's
//!   default rules are prefixed `location/`. Decisions carry the id, and a round-robin rule's
//!   turn is derived from the past decisions carrying it, so renumbering rules restarts turns.
//!
//! # Order of evaluation
//!
//! 1. **Which rules.** The account's rules, then the location's default rules. With neither, the
//!    contact is left unassigned: "no assignment rules are set for this account or its location".
//!    `multi_touch` is read from the account's rules when it has any, else the location's.
//! 2. **An owner chosen in GHL** ([`Situation::ghl_owner`]: the contact's owner in GHL before
//!    whatsnap, or a reassignment a GHL user made by hand after whatsnap's latest decision,
//!    possibly to nobody). With `manual: respect` (default) a valid one is assigned by the rule
//!    `ghl_owner`; an invalid one is passed over; an owner removed by hand leaves the contact
//!    unassigned (`Skip`, with that reason) until a GHL user assigns one. With
//!    `manual: override` the steps below decide, and the reason ends with what they override.
//! 3. **Keep a valid owner.** If the contact already has an owner (by `multi_touch`: this
//!    account's owner, this channel's latest owner, its first owner, or its latest owner), and that owner is still a user of
//!    the location, not deleted, active and not out of office, the decision is `Keep`: nothing is
//!    redone, whatever the trigger. Working hours and capacity do not take a contact away from
//!    its owner. An owner who is no longer valid is listed as a passed-over candidate and the
//!    contact is routed away from them by the rules below.
//!    A kept owner GHL does not show ([`Situation::ghl_assigned_to`]) is assigned again by
//!    `current_owner`, so that the caller writes it to GHL.
//! 4. **Rules in order.** The account's rules in the order listed, then the location's. A rule
//!    whose `when` does not hold is skipped. A rule that holds offers its users: the named user,
//!    the team lead, the previous owner, or the round-robin users in turn order; then its
//!    `backup` users in order.
//! 5. **First available user wins.** An offered user is passed over, with the reason recorded,
//!    when: not a user of the location; "deleted in GHL"; "inactive"; "out of office until …";
//!    "outside working hours (Europe/Madrid 21:40)" (unless the rule sets
//!    `respect_working_hours: false`); "at capacity 5/5 in 24h" (the capacity of the rule's own
//!    rule set). The first user not passed over is assigned, with the rule's id, a reason, and
//!    every candidate considered.
//! 6. **Otherwise unassigned.** When no rule yields an available user, the decision is `Skip`
//!    with a reason that says, rule by rule, why not.
//!
//! Round-robin turns: smooth weighted round-robin replayed over the rule's past decisions (see
//! [`History::rotation`]): over any run of contacts each user's share follows their weight, and a
//! user who was away is not flooded on return.
//!
//! Beyond the triggers: [`should_reassign_for_silence`] says when an owner who has not replied
//! within `reassign_after_silence_minutes` (counted in business hours when they are set) should
//! lose the contact; the caller then decides again with that owner in [`Situation::exclude`]
//! (an excluded owner is not kept, an excluded user is passed over with the caller's reason).

mod decide;
mod history;
mod rules;
mod schedule;
mod users;

#[cfg(test)]
mod tests;

pub use decide::{
    Candidate, Conversation, Decision, GhlOwner, GhlOwnerKind, NO_RULES, Ownership, Situation,
    decide, should_reassign_for_silence,
};
pub use history::{History, PastDecision};
pub use rules::{
    Capacity, Conditions, Hours, Manual, MultiTouch, Rule, RuleSet, RulesError, RulesJsonError,
    Strategy, Trigger, UserId, Weighted, parse_rules, parse_rules_json,
};
pub use schedule::{Schedule, TimeRange, TimeWindow, WeeklyHours};
pub use users::{Availability, OutOfOffice, User, availability_from};
