//! Given rules, users and past decisions; when a contact arrives at an instant; then this user,
//! this rule, these reasons.

use chrono::{DateTime, Duration, Utc};
use serde_json::{Value, json};
use uuid::Uuid;

use super::*;

const ACCOUNT_A: Uuid = Uuid::from_u128(0xA);
const ACCOUNT_B: Uuid = Uuid::from_u128(0xB);

fn at(text: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(text)
        .unwrap_or_else(|e| panic!("{text}: {e}"))
        .with_timezone(&Utc)
}

fn rules(value: Value) -> RuleSet {
    parse_rules(&value).unwrap_or_else(|e| panic!("rules refused: {e}"))
}

fn users(ids: &[&str]) -> Vec<User> {
    ids.iter()
        .map(|id| User::new(*id, id.to_uppercase()))
        .collect()
}

fn user_mut<'a>(users: &'a mut [User], id: &str) -> &'a mut User {
    users
        .iter_mut()
        .find(|u| u.id.as_str() == id)
        .expect("user in the list")
}

fn away(user: &mut User, from: &str, until: &str) {
    user.availability.out_of_office = Some(OutOfOffice {
        from: at(from),
        until: at(until),
    });
}

fn hours(tz: &str, ranges: &[&str]) -> Schedule {
    let ranges: Vec<TimeRange> = ranges
        .iter()
        .map(|r| TimeRange::parse(r).unwrap())
        .collect();
    Schedule::new(tz.parse().unwrap(), WeeklyHours::every_day(&ranges))
}

fn situation(contact: u128, now: DateTime<Utc>) -> Situation {
    Situation {
        contact_id: Uuid::from_u128(contact),
        account_id: Some(ACCOUNT_A),
        channels: Default::default(),
        trigger: Trigger::NewContact,
        contact_source: None,
        existed_before: false,
        previous_owner: None,
        owners: Vec::new(),
        exclude: Vec::new(),
        ghl_owner: None,
        ghl_assigned_to: None,
        now,
    }
}

fn past(contact: u128, account: Uuid, user: &str, rule: &str, when: &str) -> PastDecision {
    PastDecision {
        contact_id: Uuid::from_u128(contact),
        account_id: Some(account),
        user_id: user.into(),
        rule: rule.to_owned(),
        at: at(when),
    }
}

/// The user and rule of an assignment, or a panic that shows the decision.
fn assigned(decision: &Decision) -> (&str, &str) {
    match decision {
        Decision::Assign { user_id, rule, .. } => (user_id.as_str(), rule.as_str()),
        other => panic!("expected an assignment, got {other:?}"),
    }
}

fn passed_over(decision: &Decision) -> Vec<(String, String)> {
    let candidates = match decision {
        Decision::Assign { candidates, .. } | Decision::Skip { candidates, .. } => candidates,
        Decision::Keep { .. } => return Vec::new(),
    };
    candidates
        .iter()
        .filter_map(|c| Some((c.user_id.to_string(), c.passed_over.clone()?)))
        .collect()
}

fn decide_one(
    rules: &RuleSet,
    users: &[User],
    history: &History,
    situation: &Situation,
) -> Decision {
    decide(Some(rules), None, users, history, situation)
}

const MONDAY_NOON_UTC: &str = "2026-03-16T12:00:00Z";

// ---------------------------------------------------------------------------------------------
// Rules documents

const EXAMPLE: &str = r#"{
  "time_zone": "America/New_York",
  "business_hours": { "mon": ["09:00-12:30", "13:30-18:00"], "tue": ["09:00-18:00"],
                      "wed": ["09:00-18:00"], "thu": ["09:00-18:00"], "fri": ["09:00-17:00"] },
  "holidays": ["2026-11-26", "2026-12-25"],
  "multi_touch": "first_owner",
  "capacity": { "max_open": 5, "window_hours": 24, "per_user": { "u_ana": 8 } },
  "reassign_after_silence_minutes": 30,
  "rules": [
    { "strategy": "previous_owner", "when": { "existed_before": true } },
    { "strategy": "user", "user": "u_senior", "backup": ["u_lead"],
      "when": { "sources": ["Google Ads Campaign"], "hours": "business" } },
    { "strategy": "user", "user": "u_referrals", "when": { "sources": ["Referral Program"] } },
    { "strategy": "round_robin",
      "users": [ { "user": "u_ana", "weight": 2 }, "u_ben", "u_cleo" ],
      "when": { "hours": "business" } },
    { "id": "night_shift", "strategy": "user", "user": "u_oncall",
      "respect_working_hours": false, "when": { "hours": "after_hours" } },
    { "strategy": "team_lead", "team": "Sales", "lead": "u_lead", "backup": ["u_owner"] }
  ]
}"#;

#[test]
fn the_documented_example_parses_and_round_trips_through_json() {
    // The example in the module docs must stay valid.
    let docs = include_str!("mod.rs");
    let doc_json: String = docs
        .lines()
        .skip_while(|l| !l.starts_with("//! ```json"))
        .skip(1)
        .take_while(|l| !l.starts_with("//! ```"))
        .map(|l| l.trim_start_matches("//!").trim_start_matches(' '))
        .collect::<Vec<_>>()
        .join("\n");
    let from_docs = rules(serde_json::from_str(&doc_json).expect("docs example is JSON"));
    let example = rules(serde_json::from_str(EXAMPLE).unwrap());
    assert_eq!(from_docs, example);

    let ids: Vec<&str> = example.rules.iter().map(|r| r.id.as_str()).collect();
    assert_eq!(
        ids,
        [
            "previous_owner#1",
            "user#2",
            "user#3",
            "round_robin#4",
            "night_shift",
            "team_lead#6"
        ]
    );
    let written = example.to_json();
    assert_eq!(rules(written.clone()), example);
    assert_eq!(
        written["rules"][3]["users"][0],
        json!({"user": "u_ana", "weight": 2})
    );
    assert_eq!(
        written["business_hours"]["mon"],
        json!(["09:00-12:30", "13:30-18:00"])
    );
    assert!(
        written["rules"][0].get("id").is_none(),
        "positional ids are not written"
    );
    assert_eq!(written["rules"][4]["id"], "night_shift");
}

#[test]
fn a_refused_document_names_the_bad_field() {
    let rr = |users: Value| json!({"rules": [{"strategy": "round_robin", "users": users}]});
    let cases: Vec<(Value, &str, &str)> = vec![
        (json!([]), "rules document", "object"),
        (json!({}), "rules", "missing"),
        (json!({"rules": {}}), "rules", "array"),
        (
            rr(json!([{"user": "a", "weight": 0}])),
            "rules[0].users[0].weight",
            "at least 1",
        ),
        (
            rr(json!([{"user": "a", "weight": 2.5}])),
            "rules[0].users[0].weight",
            "whole number",
        ),
        (
            rr(json!(["a", {"user": "a"}])),
            "rules[0].users[1]",
            "listed twice",
        ),
        (rr(json!([])), "rules[0].users", "at least one"),
        (
            rr(json!([{"usr": "a"}])),
            "rules[0].users[0].usr",
            "unknown field",
        ),
        (
            json!({"rules": [{"strategy": "sticky"}]}),
            "rules[0].strategy",
            "not one of",
        ),
        (
            json!({"rules": [{"user": "a"}]}),
            "rules[0].strategy",
            "missing",
        ),
        (
            json!({"rules": [{"strategy": "user"}]}),
            "rules[0].user",
            "missing",
        ),
        (
            json!({"rules": [{"strategy": "user", "user": " "}]}),
            "rules[0].user",
            "empty",
        ),
        (
            json!({"rules": [{"strategy": "user", "user": "a", "lead": "b"}]}),
            "rules[0].lead",
            "unknown field",
        ),
        (
            json!({"rules": [{"strategy": "team_lead", "lead": "a"}]}),
            "rules[0].team",
            "missing",
        ),
        (
            json!({"rules": [{"strategy": "user", "user": "a", "backup": "b"}]}),
            "rules[0].backup",
            "array",
        ),
        (
            json!({"rules": [{"strategy": "user", "user": "a", "respect_working_hours": "no"}]}),
            "rules[0].respect_working_hours",
            "true or false",
        ),
        (
            json!({"rules": [{"strategy": "user", "user": "a"}, {"strategy": "user", "user": "b", "id": "user#1"}]}),
            "rules[1].id",
            "names two rules",
        ),
        (
            json!({"rules": [{"strategy": "user", "user": "a", "when": {"sorce": ["x"]}}]}),
            "rules[0].when.sorce",
            "unknown field",
        ),
        (
            json!({"rules": [{"strategy": "user", "user": "a", "when": {"sources": []}}]}),
            "rules[0].when.sources",
            "empty",
        ),
        (
            json!({"rules": [{"strategy": "user", "user": "a", "when": {"hours": "business"}}]}),
            "rules[0].when.hours",
            "business_hours",
        ),
        (
            json!({"rules": [{"strategy": "user", "user": "a", "when": {"accounts": ["sales"]}}]}),
            "rules[0].when.accounts[0]",
            "UUID",
        ),
        (
            json!({"rules": [{"strategy": "user", "user": "a", "when": {"triggers": ["tag"]}}]}),
            "rules[0].when.triggers[0]",
            "account_tag",
        ),
        (
            json!({"rules": [{"strategy": "user", "user": "a", "when": {"existed_before": "yes"}}]}),
            "rules[0].when.existed_before",
            "true or false",
        ),
        (
            json!({"rules": [{"strategy": "user", "user": "a", "when": {"window": {"from": "08:00", "until": "12:00"}}}]}),
            "rules[0].when.window",
            "time_zone",
        ),
        (
            json!({"time_zone": "UTC", "rules": [{"strategy": "user", "user": "a", "when": {"window": {"from": "08:00", "until": "08:00"}}}]}),
            "rules[0].when.window.until",
            "empty",
        ),
        (
            json!({"time_zone": "UTC", "rules": [{"strategy": "user", "user": "a", "when": {"window": {"from": "8am", "until": "12:00"}}}]}),
            "rules[0].when.window.from",
            "09:00",
        ),
        (
            json!({"time_zone": "UTC", "rules": [{"strategy": "user", "user": "a", "when": {"window": {"days": ["monday"], "from": "08:00", "until": "12:00"}}}]}),
            "rules[0].when.window.days[0]",
            "mon",
        ),
        (
            json!({"time_zone": "Mars/Olympus_Mons", "rules": []}),
            "time_zone",
            "IANA",
        ),
        (
            json!({"business_hours": {"mon": ["09:00-17:00"]}, "rules": []}),
            "time_zone",
            "required",
        ),
        (
            json!({"time_zone": "UTC", "business_hours": {"mon": ["17:00-09:00"]}, "rules": []}),
            "business_hours.mon[0]",
            "ends before",
        ),
        (
            json!({"time_zone": "UTC", "business_hours": {"mon": ["09:00-13:00", "12:00-17:00"]}, "rules": []}),
            "business_hours.mon",
            "overlaps",
        ),
        (
            json!({"time_zone": "UTC", "business_hours": {"mon": ["09:00-25:00"]}, "rules": []}),
            "business_hours.mon[0]",
            "25:00",
        ),
        (
            json!({"time_zone": "UTC", "business_hours": {"monday": ["09:00-17:00"]}, "rules": []}),
            "business_hours.monday",
            "unknown field",
        ),
        (
            json!({"time_zone": "UTC", "business_hours": {"mon": ["09:00-17:00"]}, "holidays": ["25/12/2026"], "rules": []}),
            "holidays[0]",
            "2026-12-25",
        ),
        (
            json!({"time_zone": "UTC", "holidays": ["2026-12-25"], "rules": []}),
            "business_hours",
            "required with holidays",
        ),
        (
            json!({"multi_touch": "everyone", "rules": []}),
            "multi_touch",
            "first_owner",
        ),
        (
            json!({"capacity": {"max_open": 0}, "rules": []}),
            "capacity.max_open",
            "at least 1",
        ),
        (
            json!({"capacity": {"max_open": 3, "per_user": {"a": -1}}, "rules": []}),
            "capacity.per_user.a",
            "at least 1",
        ),
        (
            json!({"reassign_after_silence_minutes": 0, "rules": []}),
            "reassign_after_silence_minutes",
            "at least 1",
        ),
        (json!({"rules": [], "rule": []}), "rule", "unknown field"),
    ];
    for (document, field, problem) in cases {
        let error = parse_rules(&document).expect_err(&format!("accepted {document}"));
        assert_eq!(error.field, field, "{document} -> {error}");
        assert!(
            error.problem.contains(problem),
            "{document} -> {error}; wanted `{problem}`"
        );
        assert!(error.to_string().starts_with(&format!("{field}: ")));
    }
}

// ---------------------------------------------------------------------------------------------
// Strategies

#[test]
fn without_rules_the_contact_is_left_unassigned_with_that_reason() {
    let decision = decide(
        None,
        None,
        &users(&["a"]),
        &History::default(),
        &situation(1, at(MONDAY_NOON_UTC)),
    );
    assert_eq!(
        decision,
        Decision::Skip {
            reason: NO_RULES.to_owned(),
            candidates: Vec::new()
        }
    );
}

#[test]
fn each_strategy_assigns_whom_it_names() {
    let team = users(&["a", "b", "lead", "prev"]);
    let cases: Vec<(Value, Option<&str>, &str, &str)> = vec![
        (
            json!({"strategy": "user", "user": "a"}),
            None,
            "a",
            "user#1",
        ),
        (
            json!({"strategy": "team_lead", "team": "Sales", "lead": "lead"}),
            None,
            "lead",
            "team_lead#1",
        ),
        (
            json!({"strategy": "round_robin", "users": ["b", "a"]}),
            None,
            "b",
            "round_robin#1",
        ),
        (
            json!({"strategy": "previous_owner"}),
            Some("prev"),
            "prev",
            "previous_owner#1",
        ),
        (
            json!({"id": "vip", "strategy": "user", "user": "b"}),
            None,
            "b",
            "vip",
        ),
    ];
    for (rule, previous, user, rule_id) in cases {
        let set = rules(json!({"rules": [rule]}));
        let mut s = situation(1, at(MONDAY_NOON_UTC));
        s.previous_owner = previous.map(UserId::from);
        let decision = decide_one(&set, &team, &History::default(), &s);
        assert_eq!(assigned(&decision), (user, rule_id), "{rule}");
    }
}

#[test]
fn a_team_lead_rule_says_whose_team() {
    let set =
        rules(json!({"rules": [{"strategy": "team_lead", "team": "Support", "lead": "lead"}]}));
    let Decision::Assign { reason, .. } = decide_one(
        &set,
        &users(&["lead"]),
        &History::default(),
        &situation(1, at(MONDAY_NOON_UTC)),
    ) else {
        panic!("not assigned")
    };
    assert_eq!(reason, "lead of Support");
}

#[test]
fn the_backup_takes_the_contact_when_the_primary_is_out_of_office() {
    let set = rules(json!({"rules": [{"strategy": "user", "user": "a", "backup": ["b", "c"]}]}));
    let mut team = users(&["a", "b", "c"]);
    away(
        user_mut(&mut team, "a"),
        "2026-03-14T00:00:00Z",
        "2026-03-20T08:00:00Z",
    );
    away(
        user_mut(&mut team, "b"),
        "2026-03-16T00:00:00Z",
        "2026-03-17T00:00:00Z",
    );
    let decision = decide_one(
        &set,
        &team,
        &History::default(),
        &situation(1, at(MONDAY_NOON_UTC)),
    );
    assert_eq!(assigned(&decision), ("c", "user#1"));
    assert_eq!(
        passed_over(&decision),
        [
            (
                "a".to_owned(),
                "out of office until 2026-03-20 08:00 UTC".to_owned()
            ),
            (
                "b".to_owned(),
                "out of office until 2026-03-17 00:00 UTC".to_owned()
            ),
        ]
    );
    let Decision::Assign { reason, .. } = &decision else {
        unreachable!()
    };
    assert!(
        reason.starts_with("backup c, as a out of office"),
        "{reason}"
    );

    // Back from the time away, the primary takes contacts again.
    let later = situation(2, at("2026-03-20T08:00:00Z"));
    assert_eq!(
        assigned(&decide_one(&set, &team, &History::default(), &later)).0,
        "a"
    );
}

#[test]
fn an_out_of_office_date_is_told_in_the_users_time_zone() {
    let set = rules(json!({"rules": [{"strategy": "user", "user": "a", "backup": ["b"]}]}));
    let mut team = users(&["a", "b"]);
    let a = user_mut(&mut team, "a");
    a.availability.working_hours = Some(hours("Europe/Madrid", &["00:00-24:00"]));
    away(a, "2026-03-14T00:00:00Z", "2026-03-20T08:00:00Z");
    let decision = decide_one(
        &set,
        &team,
        &History::default(),
        &situation(1, at(MONDAY_NOON_UTC)),
    );
    assert_eq!(
        passed_over(&decision),
        [(
            "a".to_owned(),
            "out of office until 2026-03-20 09:00 Europe/Madrid".to_owned()
        )]
    );
}

#[test]
fn deleted_inactive_and_unknown_users_are_never_chosen() {
    let mut team = users(&["deleted", "inactive", "ok"]);
    user_mut(&mut team, "deleted").deleted = true;
    user_mut(&mut team, "inactive").active = false;
    let cases = [
        ("deleted", "deleted in GHL"),
        ("inactive", "inactive"),
        ("stranger", "not a user of this location"),
    ];
    for (user, why) in cases {
        let set = rules(json!({"rules": [{"strategy": "user", "user": user}]}));
        let decision = decide_one(
            &set,
            &team,
            &History::default(),
            &situation(1, at(MONDAY_NOON_UTC)),
        );
        let Decision::Skip { reason, .. } = &decision else {
            panic!("{user} was chosen: {decision:?}")
        };
        assert_eq!(passed_over(&decision), [(user.to_owned(), why.to_owned())]);
        assert_eq!(
            reason,
            "no rule yielded an available user: user#1 has no available user"
        );
    }

    // Nor by a round-robin, however long it turns.
    let set = rules(
        json!({"rules": [{"strategy": "round_robin", "users": ["deleted", "inactive", "ok"]}]}),
    );
    let mut history = History::default();
    for n in 0..60 {
        let s = situation(n, at(MONDAY_NOON_UTC) + Duration::minutes(n as i64));
        let decision = decide_one(&set, &team, &history, &s);
        assert_eq!(assigned(&decision).0, "ok");
        history.push(decision.past(&s).unwrap());
    }
}

#[test]
fn a_user_outside_working_hours_is_passed_over_unless_the_rule_ignores_working_hours() {
    let mut team = users(&["ana", "night"]);
    user_mut(&mut team, "ana").availability.working_hours =
        Some(hours("Europe/Madrid", &["09:00-18:00"]));
    // A Tuesday in winter: 20:40 UTC is 21:40 in Madrid.
    let evening = situation(1, at("2026-01-13T20:40:00Z"));

    let strict =
        rules(json!({"rules": [{"strategy": "user", "user": "ana", "backup": ["night"]}]}));
    let decision = decide_one(&strict, &team, &History::default(), &evening);
    assert_eq!(assigned(&decision).0, "night");
    assert_eq!(
        passed_over(&decision),
        [(
            "ana".to_owned(),
            "outside working hours (Europe/Madrid 21:40)".to_owned()
        )]
    );

    let on_call = rules(
        json!({"rules": [{"strategy": "user", "user": "ana", "respect_working_hours": false}]}),
    );
    assert_eq!(
        assigned(&decide_one(&on_call, &team, &History::default(), &evening)).0,
        "ana"
    );

    // In summer the same wall-clock evening is an hour earlier in UTC.
    let summer_evening = situation(2, at("2026-07-14T19:40:00Z"));
    let decision = decide_one(&strict, &team, &History::default(), &summer_evening);
    assert_eq!(
        passed_over(&decision),
        [(
            "ana".to_owned(),
            "outside working hours (Europe/Madrid 21:40)".to_owned()
        )]
    );
    let summer_morning = situation(3, at("2026-07-14T07:05:00Z"));
    assert_eq!(
        assigned(&decide_one(
            &strict,
            &team,
            &History::default(),
            &summer_morning
        ))
        .0,
        "ana"
    );
}

#[test]
fn a_users_working_hours_follow_daylight_saving() {
    let mut user = User::new("ana", "Ana");
    user.availability.working_hours = Some(hours("America/New_York", &["09:00-17:00"]));
    let cases = [
        // The week before the spring-forward: 13:30 UTC is 08:30 EST.
        (
            "2026-03-02T13:30:00Z",
            Some("outside working hours (America/New_York 08:30)"),
        ),
        ("2026-03-02T14:00:00Z", None),
        // The Monday after: the same UTC instant is 09:30 EDT.
        ("2026-03-09T13:30:00Z", None),
        (
            "2026-03-09T21:00:00Z",
            Some("outside working hours (America/New_York 17:00)"),
        ),
        // After the fall-back, 13:30 UTC is 08:30 EST again.
        (
            "2026-11-02T13:30:00Z",
            Some("outside working hours (America/New_York 08:30)"),
        ),
        ("2026-11-02T21:59:00Z", None),
    ];
    for (now, expected) in cases {
        assert_eq!(
            user.outside_working_hours(at(now)).as_deref(),
            expected,
            "{now}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Business hours, after-hours rules, holidays

/// Business → `day`, otherwise → `night`.
fn day_and_night(tz: &str, week: Value, holidays: Value) -> RuleSet {
    rules(json!({
        "time_zone": tz,
        "business_hours": week,
        "holidays": holidays,
        "rules": [
            {"strategy": "user", "user": "day", "when": {"hours": "business"}},
            {"strategy": "user", "user": "night", "when": {"hours": "after_hours"}}
        ]
    }))
}

fn who_at(set: &RuleSet, now: &str) -> String {
    let decision = decide_one(
        set,
        &users(&["day", "night"]),
        &History::default(),
        &situation(1, at(now)),
    );
    assigned(&decision).0.to_owned()
}

#[test]
fn after_hours_rules_follow_business_hours_across_new_york_daylight_saving_days() {
    let every_day = json!({"mon": ["09:00-17:00"], "tue": ["09:00-17:00"], "wed": ["09:00-17:00"],
        "thu": ["09:00-17:00"], "fri": ["09:00-17:00"], "sat": ["09:00-17:00"], "sun": ["09:00-17:00"]});
    let set = day_and_night("America/New_York", every_day, json!([]));
    let cases = [
        // Saturday before the spring-forward (EST, UTC-5).
        ("2026-03-07T13:59:00Z", "night"),
        ("2026-03-07T14:00:00Z", "day"),
        ("2026-03-07T21:59:00Z", "day"),
        ("2026-03-07T22:00:00Z", "night"),
        // Sunday 8 March 2026, 02:00 EST jumps to 03:00 EDT (UTC-4).
        ("2026-03-08T12:59:00Z", "night"),
        ("2026-03-08T13:00:00Z", "day"),
        ("2026-03-08T20:59:00Z", "day"),
        ("2026-03-08T21:00:00Z", "night"),
        // Saturday before the fall-back (EDT).
        ("2026-10-31T13:00:00Z", "day"),
        ("2026-10-31T12:59:00Z", "night"),
        // Sunday 1 November 2026, 02:00 EDT falls back to 01:00 EST.
        ("2026-11-01T13:59:00Z", "night"),
        ("2026-11-01T14:00:00Z", "day"),
        ("2026-11-01T21:59:00Z", "day"),
        ("2026-11-01T22:00:00Z", "night"),
    ];
    for (now, expected) in cases {
        assert_eq!(who_at(&set, now), expected, "{now}");
    }
}

#[test]
fn hours_around_the_repeated_and_the_skipped_hour_are_wall_clock_hours() {
    // Open 00:00-01:30 and 02:00-03:00 on Sundays in New York.
    let set = day_and_night(
        "America/New_York",
        json!({"sun": ["00:00-01:30", "02:00-03:00"]}),
        json!([]),
    );
    let cases = [
        // Fall-back: 01:15 happens twice, both inside; 01:45 EST is outside.
        ("2026-11-01T05:15:00Z", "day"),   // 01:15 EDT
        ("2026-11-01T05:45:00Z", "night"), // 01:45 EDT
        ("2026-11-01T06:15:00Z", "day"),   // 01:15 EST
        ("2026-11-01T06:45:00Z", "night"), // 01:45 EST
        ("2026-11-01T07:30:00Z", "day"),   // 02:30 EST
        // Spring-forward: 02:00-03:00 does not exist; 01:59 EST is followed by 03:00 EDT.
        ("2026-03-08T06:59:00Z", "night"), // 01:59 EST
        ("2026-03-08T07:00:00Z", "night"), // 03:00 EDT
        ("2026-03-08T06:29:00Z", "day"),   // 01:29 EST
        ("2026-03-08T06:30:00Z", "night"), // 01:30 EST
    ];
    for (now, expected) in cases {
        assert_eq!(who_at(&set, now), expected, "{now}");
    }
}

#[test]
fn after_hours_rules_follow_business_hours_in_madrid_with_a_lunch_break() {
    let week = json!({"mon": ["09:00-14:00", "15:00-19:00"], "tue": ["09:00-14:00", "15:00-19:00"],
        "wed": ["09:00-14:00", "15:00-19:00"], "thu": ["09:00-14:00", "15:00-19:00"], "fri": ["09:00-14:00"]});
    let set = day_and_night("Europe/Madrid", week, json!(["2026-12-25", "2026-01-06"]));
    let cases = [
        ("2026-03-27T08:00:00Z", "day"),   // Fri 09:00 CET
        ("2026-03-27T07:59:00Z", "night"), // Fri 08:59 CET
        ("2026-03-27T13:00:00Z", "night"), // Fri 14:00: closed for the weekend
        ("2026-03-28T10:00:00Z", "night"), // Saturday
        // Sunday 29 March 02:00 CET jumps to 03:00 CEST (UTC+2).
        ("2026-03-30T06:59:00Z", "night"), // Mon 08:59 CEST
        ("2026-03-30T07:00:00Z", "day"),   // Mon 09:00 CEST
        ("2026-03-30T12:30:00Z", "night"), // 14:30: lunch
        ("2026-03-30T13:00:00Z", "day"),   // 15:00
        ("2026-03-30T16:59:00Z", "day"),   // 18:59
        ("2026-03-30T17:00:00Z", "night"), // 19:00
        // Sunday 25 October 03:00 CEST falls back to 02:00 CET.
        ("2026-10-26T07:59:00Z", "night"), // Mon 08:59 CET
        ("2026-10-26T08:00:00Z", "day"),   // Mon 09:00 CET
        // Holidays: closed all day.
        ("2026-12-25T10:00:00Z", "night"),
        ("2026-01-06T10:00:00Z", "night"),
        ("2026-01-07T10:00:00Z", "day"),
    ];
    for (now, expected) in cases {
        assert_eq!(who_at(&set, now), expected, "{now}");
    }
}

#[test]
fn a_holiday_is_the_local_date_of_the_account() {
    let all_day = json!({"mon": ["00:00-24:00"], "tue": ["00:00-24:00"], "wed": ["00:00-24:00"],
        "thu": ["00:00-24:00"], "fri": ["00:00-24:00"], "sat": ["00:00-24:00"], "sun": ["00:00-24:00"]});
    let set = day_and_night("America/New_York", all_day, json!(["2026-12-25"]));
    let cases = [
        ("2026-12-25T04:59:00Z", "day"),   // 24 Dec 23:59 EST
        ("2026-12-25T05:00:00Z", "night"), // 25 Dec 00:00
        ("2026-12-26T04:59:00Z", "night"), // 25 Dec 23:59
        ("2026-12-26T05:00:00Z", "day"),   // 26 Dec 00:00
    ];
    for (now, expected) in cases {
        assert_eq!(who_at(&set, now), expected, "{now}");
    }
    // The skipped business rule says why.
    let only_day = rules(
        json!({"time_zone": "America/New_York", "business_hours": {"fri": ["00:00-24:00"]},
        "holidays": ["2026-12-25"], "rules": [{"strategy": "user", "user": "day", "when": {"hours": "business"}}]}),
    );
    let decision = decide_one(
        &only_day,
        &users(&["day"]),
        &History::default(),
        &situation(1, at("2026-12-25T15:00:00Z")),
    );
    let Decision::Skip { reason, .. } = decision else {
        panic!("assigned on a holiday")
    };
    assert_eq!(
        reason,
        "no rule yielded an available user: user#1 does not apply: holiday (2026-12-25)"
    );
}

#[test]
fn a_time_window_condition_uses_the_rules_time_zone_and_may_cross_midnight() {
    let set = rules(json!({
        "time_zone": "Europe/Madrid",
        "rules": [
            {"strategy": "user", "user": "morning", "when": {"window": {"days": ["mon", "tue", "wed", "thu", "fri"], "from": "08:00", "until": "12:00"}}},
            {"strategy": "user", "user": "late", "when": {"window": {"days": ["fri"], "from": "22:00", "until": "06:00"}}},
            {"strategy": "user", "user": "other"}
        ]
    }));
    let team = users(&["morning", "late", "other"]);
    let cases = [
        ("2026-03-16T07:00:00Z", "morning"), // Mon 08:00 CET
        ("2026-03-16T06:59:00Z", "other"),   // Mon 07:59
        ("2026-03-16T11:00:00Z", "other"),   // Mon 12:00
        ("2026-03-21T09:00:00Z", "other"),   // Sat 10:00
        ("2026-03-20T21:00:00Z", "late"),    // Fri 22:00
        ("2026-03-21T04:59:00Z", "late"),    // Sat 05:59, the Friday night
        ("2026-03-21T05:00:00Z", "other"),   // Sat 06:00
        ("2026-03-20T04:00:00Z", "other"),   // Fri 05:00, the Thursday night
        ("2026-06-15T06:00:00Z", "morning"), // Mon 08:00 CEST
    ];
    for (now, expected) in cases {
        let decision = decide_one(&set, &team, &History::default(), &situation(1, at(now)));
        assert_eq!(assigned(&decision).0, expected, "{now}");
    }
}

// ---------------------------------------------------------------------------------------------
// Conditional rules

#[test]
fn conditional_rules_route_by_source_account_hours_and_history() {
    let sales = rules(json!({
        "time_zone": "America/New_York",
        "business_hours": {"mon": ["09:00-17:00"], "tue": ["09:00-17:00"], "wed": ["09:00-17:00"], "thu": ["09:00-17:00"], "fri": ["09:00-17:00"]},
        "rules": [
            {"strategy": "user", "user": "senior", "when": {"sources": ["Google Ads Campaign"], "hours": "business"}},
            {"strategy": "user", "user": "referrals", "when": {"sources": ["Referral Program"]}},
            {"strategy": "previous_owner", "when": {"existed_before": true, "triggers": ["returning_contact", "account_tag"]}},
            {"strategy": "user", "user": "rep"}
        ]
    }));
    let team = users(&["senior", "referrals", "rep", "old"]);
    let business = "2026-03-16T15:00:00Z"; // Mon 11:00 EDT
    let evening = "2026-03-16T23:30:00Z"; // Mon 19:30 EDT
    struct Case {
        now: &'static str,
        source: Option<&'static str>,
        existed_before: bool,
        previous: Option<&'static str>,
        trigger: Trigger,
        expected: (&'static str, &'static str),
    }
    let case = |now, source, existed_before, previous, trigger, expected| Case {
        now,
        source,
        existed_before,
        previous,
        trigger,
        expected,
    };
    let cases = [
        case(
            business,
            Some("Google Ads Campaign"),
            false,
            None,
            Trigger::NewContact,
            ("senior", "user#1"),
        ),
        case(
            business,
            Some("google ads campaign "),
            false,
            None,
            Trigger::NewContact,
            ("senior", "user#1"),
        ),
        case(
            evening,
            Some("Google Ads Campaign"),
            false,
            None,
            Trigger::NewContact,
            ("rep", "user#4"),
        ),
        case(
            business,
            Some("Referral Program"),
            false,
            None,
            Trigger::NewContact,
            ("referrals", "user#2"),
        ),
        case(
            evening,
            Some("Referral Program"),
            false,
            None,
            Trigger::NewContact,
            ("referrals", "user#2"),
        ),
        case(
            business,
            Some("Facebook"),
            false,
            None,
            Trigger::NewContact,
            ("rep", "user#4"),
        ),
        case(
            business,
            None,
            true,
            Some("old"),
            Trigger::ReturningContact,
            ("old", "previous_owner#3"),
        ),
        case(
            business,
            None,
            true,
            Some("old"),
            Trigger::AccountTag,
            ("old", "previous_owner#3"),
        ),
        case(
            business,
            None,
            true,
            Some("old"),
            Trigger::NewContact,
            ("rep", "user#4"),
        ),
        case(
            business,
            None,
            false,
            Some("old"),
            Trigger::ReturningContact,
            ("rep", "user#4"),
        ),
        case(
            business,
            None,
            true,
            None,
            Trigger::ReturningContact,
            ("rep", "user#4"),
        ),
    ];
    for c in cases {
        let mut s = situation(1, at(c.now));
        s.contact_source = c.source.map(str::to_owned);
        s.existed_before = c.existed_before;
        s.previous_owner = c.previous.map(UserId::from);
        s.trigger = c.trigger;
        let decision = decide_one(&sales, &team, &History::default(), &s);
        assert_eq!(
            assigned(&decision),
            c.expected,
            "{:?} {:?} {:?}",
            c.now,
            c.source,
            c.trigger
        );
    }
}

#[test]
fn a_location_default_applies_when_the_account_has_no_rules_or_none_yields_a_user() {
    let location = rules(json!({"rules": [
        {"strategy": "user", "user": "b_rep", "when": {"accounts": [ACCOUNT_B.to_string()]}},
        {"strategy": "user", "user": "anyone"}
    ]}));
    let account = rules(json!({"rules": [{"strategy": "user", "user": "a_rep"}]}));
    let mut team = users(&["a_rep", "b_rep", "anyone"]);
    let mut s = situation(1, at(MONDAY_NOON_UTC));
    let h = History::default();

    assert_eq!(
        assigned(&decide(Some(&account), Some(&location), &team, &h, &s)),
        ("a_rep", "user#1")
    );
    assert_eq!(
        assigned(&decide(None, Some(&location), &team, &h, &s)),
        ("anyone", "location/user#2")
    );
    s.account_id = Some(ACCOUNT_B);
    assert_eq!(
        assigned(&decide(None, Some(&location), &team, &h, &s)),
        ("b_rep", "location/user#1")
    );

    user_mut(&mut team, "a_rep").deleted = true;
    s.account_id = Some(ACCOUNT_A);
    let decision = decide(Some(&account), Some(&location), &team, &h, &s);
    assert_eq!(assigned(&decision), ("anyone", "location/user#2"));
    assert_eq!(
        passed_over(&decision),
        [("a_rep".to_owned(), "deleted in GHL".to_owned())]
    );
}

#[test]
fn when_no_rule_applies_the_reason_says_why_rule_by_rule() {
    let set = rules(json!({"rules": [
        {"strategy": "user", "user": "a", "when": {"sources": ["Referral Program"]}},
        {"strategy": "user", "user": "b", "when": {"triggers": ["account_tag"]}},
        {"strategy": "previous_owner"}
    ]}));
    let mut s = situation(1, at(MONDAY_NOON_UTC));
    s.contact_source = Some("Facebook".into());
    let decision = decide_one(&set, &users(&["a", "b"]), &History::default(), &s);
    assert_eq!(
        decision,
        Decision::Skip {
            reason:
                "no rule yielded an available user: user#1 does not apply: source is `Facebook`; \
                     user#2 does not apply: trigger is new_contact; \
                     previous_owner#3 names nobody: the contact has no previous owner"
                    .to_owned(),
            candidates: Vec::new(),
        }
    );
}

// ---------------------------------------------------------------------------------------------
// Capacity

#[test]
fn a_user_at_capacity_is_passed_over_for_the_backup() {
    let set = rules(json!({
        "capacity": {"max_open": 2, "window_hours": 24, "per_user": {"big": 3}},
        "rules": [{"strategy": "user", "user": "a", "backup": ["big"]}]
    }));
    let now = "2026-03-16T12:00:00Z";
    let team = users(&["a", "big"]);
    type Case = (
        &'static str,
        Vec<PastDecision>,
        &'static str,
        Vec<(&'static str, &'static str)>,
    );
    let cases: Vec<Case> = vec![
        (
            "below capacity",
            vec![past(1, ACCOUNT_A, "a", "user#1", "2026-03-16T09:00:00Z")],
            "a",
            vec![],
        ),
        (
            "at capacity",
            vec![
                past(1, ACCOUNT_A, "a", "user#1", "2026-03-16T09:00:00Z"),
                past(2, ACCOUNT_A, "a", "user#1", "2026-03-15T12:01:00Z"),
            ],
            "big",
            vec![("a", "at capacity 2/2 in 24h")],
        ),
        (
            "one of them older than the window",
            vec![
                past(1, ACCOUNT_A, "a", "user#1", "2026-03-16T09:00:00Z"),
                past(2, ACCOUNT_A, "a", "user#1", "2026-03-15T12:00:00Z"),
            ],
            "a",
            vec![],
        ),
        (
            "one contact for two accounts counts once",
            vec![
                past(1, ACCOUNT_A, "a", "user#1", "2026-03-16T09:00:00Z"),
                past(1, ACCOUNT_B, "a", "user#1", "2026-03-16T10:00:00Z"),
            ],
            "a",
            vec![],
        ),
        (
            "one of them was reassigned to someone else",
            vec![
                past(1, ACCOUNT_A, "a", "user#1", "2026-03-16T09:00:00Z"),
                past(2, ACCOUNT_A, "a", "user#1", "2026-03-16T10:00:00Z"),
                past(2, ACCOUNT_A, "big", "user#1", "2026-03-16T11:00:00Z"),
            ],
            "a",
            vec![],
        ),
        (
            "both at capacity, with a per-user limit",
            vec![
                past(1, ACCOUNT_A, "a", "user#1", "2026-03-16T09:00:00Z"),
                past(2, ACCOUNT_A, "a", "user#1", "2026-03-16T09:10:00Z"),
                past(3, ACCOUNT_A, "big", "user#1", "2026-03-16T09:20:00Z"),
                past(4, ACCOUNT_A, "big", "user#1", "2026-03-16T09:30:00Z"),
                past(5, ACCOUNT_A, "big", "user#1", "2026-03-16T09:40:00Z"),
            ],
            "",
            vec![
                ("a", "at capacity 2/2 in 24h"),
                ("big", "at capacity 3/3 in 24h"),
            ],
        ),
    ];
    for (name, decisions, expected, passed) in cases {
        let history = History::new(decisions);
        let decision = decide_one(&set, &team, &history, &situation(99, at(now)));
        assert_eq!(
            decision.user().map(UserId::as_str).unwrap_or(""),
            expected,
            "{name}"
        );
        let passed: Vec<(String, String)> = passed
            .into_iter()
            .map(|(u, w)| (u.to_owned(), w.to_owned()))
            .collect();
        assert_eq!(passed_over(&decision), passed, "{name}");
    }

    // A closed conversation frees its place.
    let mut history = History::new([
        past(1, ACCOUNT_A, "a", "user#1", "2026-03-16T09:00:00Z"),
        past(2, ACCOUNT_A, "a", "user#1", "2026-03-16T10:00:00Z"),
    ]);
    assert_eq!(
        decide_one(&set, &team, &history, &situation(99, at(now)))
            .user()
            .unwrap()
            .as_str(),
        "big"
    );
    history.close(Uuid::from_u128(2));
    assert_eq!(
        decide_one(&set, &team, &history, &situation(99, at(now)))
            .user()
            .unwrap()
            .as_str(),
        "a"
    );
}

#[test]
fn capacity_spreads_a_burst_over_a_round_robin_and_then_leaves_contacts_unassigned() {
    let set = rules(json!({
        "capacity": {"max_open": 3, "window_hours": 1},
        "rules": [{"strategy": "round_robin", "users": [{"user": "a", "weight": 3}, "b"]}]
    }));
    let team = users(&["a", "b"]);
    let mut history = History::default();
    let mut got = Vec::new();
    for n in 0..8 {
        let s = situation(n, at(MONDAY_NOON_UTC) + Duration::minutes(n as i64));
        let decision = decide_one(&set, &team, &history, &s);
        got.push(decision.user().map(|u| u.to_string()).unwrap_or_default());
        if let Some(p) = decision.past(&s) {
            history.push(p);
        }
    }
    assert_eq!(got, ["a", "a", "b", "a", "b", "b", "", ""]);
}

// ---------------------------------------------------------------------------------------------
// Keeping owners, rerouting, multi-touch

fn owner(account: Uuid, user: &str, since: &str) -> Ownership {
    Ownership {
        account_id: Some(account),
        user_id: user.into(),
        since: at(since),
    }
}

#[test]
fn a_still_valid_owner_is_kept_whatever_the_trigger() {
    let set = rules(json!({"rules": [{"strategy": "round_robin", "users": ["a", "b"]}]}));
    let mut team = users(&["a", "b", "owner"]);
    // Working hours do not take a contact from its owner.
    user_mut(&mut team, "owner").availability.working_hours = Some(hours("UTC", &["09:00-10:00"]));
    for trigger in Trigger::ALL {
        let mut s = situation(1, at(MONDAY_NOON_UTC));
        s.trigger = trigger;
        s.owners = vec![owner(ACCOUNT_A, "owner", "2026-03-01T10:00:00Z")];
        let decision = decide_one(&set, &team, &History::default(), &s);
        assert_eq!(
            decision,
            Decision::Keep {
                user_id: "owner".into(),
                reason: "owner owns the contact since 2026-03-01 10:00 UTC and is still valid (multi_touch per_account)".into()
            },
            "{trigger:?}"
        );
        assert_eq!(decision.event(&s), None, "keeping records nothing");
    }
}

#[test]
fn a_returning_contact_is_routed_away_from_an_owner_who_is_no_longer_valid() {
    let set = rules(json!({"rules": [{"strategy": "user", "user": "a"}]}));
    let mut team = users(&["a", "ooo", "deleted", "inactive"]);
    away(
        user_mut(&mut team, "ooo"),
        "2026-03-10T00:00:00Z",
        "2026-03-24T00:00:00Z",
    );
    user_mut(&mut team, "deleted").deleted = true;
    user_mut(&mut team, "inactive").active = false;
    let cases = [
        ("ooo", "out of office until 2026-03-24 00:00 UTC"),
        ("deleted", "deleted in GHL"),
        ("inactive", "inactive"),
        ("gone", "no longer a user of this location"),
    ];
    for (current, why) in cases {
        let mut s = situation(1, at(MONDAY_NOON_UTC));
        s.trigger = Trigger::ReturningContact;
        s.owners = vec![owner(ACCOUNT_A, current, "2026-03-01T10:00:00Z")];
        let decision = decide_one(&set, &team, &History::default(), &s);
        assert_eq!(assigned(&decision), ("a", "user#1"));
        let Decision::Assign {
            reason, candidates, ..
        } = &decision
        else {
            unreachable!()
        };
        assert_eq!(
            reason,
            &format!("user#1 names a; rerouted from {current}: {why}")
        );
        assert_eq!(candidates[0].rule, "current_owner");
        assert_eq!(
            passed_over(&decision),
            [(current.to_owned(), why.to_owned())]
        );
    }
}

#[test]
fn multi_touch_decides_which_owner_is_kept() {
    let team = users(&["rr1", "rr2", "first", "second"]);
    let owners = vec![
        owner(ACCOUNT_B, "second", "2026-03-10T10:00:00Z"),
        owner(Uuid::from_u128(0xC), "first", "2026-03-01T10:00:00Z"),
    ];
    let cases: Vec<(&str, Vec<Ownership>, Option<&str>, bool)> = vec![
        // (mode, owners, kept, all_accounts of a new assignment)
        ("per_account", owners.clone(), None, false),
        (
            "per_account",
            vec![owner(ACCOUNT_A, "second", "2026-03-10T10:00:00Z")],
            Some("second"),
            false,
        ),
        ("first_owner", owners.clone(), Some("first"), false),
        ("single_owner", owners.clone(), Some("second"), true),
        ("first_owner", vec![], None, false),
        ("single_owner", vec![], None, true),
    ];
    for (mode, owners, kept, all) in cases {
        let set = rules(
            json!({"multi_touch": mode, "rules": [{"strategy": "round_robin", "users": ["rr1", "rr2"]}]}),
        );
        let mut s = situation(1, at(MONDAY_NOON_UTC));
        s.trigger = Trigger::ReturningContact;
        s.owners = owners.clone();
        let decision = decide_one(&set, &team, &History::default(), &s);
        match (kept, &decision) {
            (Some(kept), Decision::Keep { user_id, .. }) => {
                assert_eq!(user_id.as_str(), kept, "{mode}")
            }
            (
                None,
                Decision::Assign {
                    user_id,
                    all_accounts,
                    ..
                },
            ) => {
                assert_eq!(user_id.as_str(), "rr1", "{mode}");
                assert_eq!(*all_accounts, all, "{mode}");
            }
            _ => panic!("{mode} {owners:?}: {decision:?}"),
        }
    }
}

#[test]
fn first_owner_mode_reroutes_when_the_first_owner_is_gone() {
    let set = rules(
        json!({"multi_touch": "first_owner", "rules": [{"strategy": "user", "user": "new"}]}),
    );
    let mut team = users(&["new", "first", "second"]);
    user_mut(&mut team, "first").deleted = true;
    let mut s = situation(1, at(MONDAY_NOON_UTC));
    s.owners = vec![
        owner(ACCOUNT_B, "second", "2026-03-10T10:00:00Z"),
        owner(Uuid::from_u128(0xC), "first", "2026-03-01T10:00:00Z"),
    ];
    let decision = decide_one(&set, &team, &History::default(), &s);
    assert_eq!(assigned(&decision).0, "new");
    assert_eq!(
        passed_over(&decision),
        [("first".to_owned(), "deleted in GHL".to_owned())]
    );
}

#[test]
fn owners_are_derived_from_the_history() {
    let history = History::new([
        past(1, ACCOUNT_A, "a", "user#1", "2026-03-01T10:00:00Z"),
        past(2, ACCOUNT_A, "x", "user#1", "2026-03-01T11:00:00Z"),
        past(1, ACCOUNT_B, "b", "user#1", "2026-03-02T10:00:00Z"),
        past(1, ACCOUNT_A, "c", "user#1", "2026-03-03T10:00:00Z"),
    ]);
    assert_eq!(
        history.owners_of(Uuid::from_u128(1)),
        [
            owner(ACCOUNT_B, "b", "2026-03-02T10:00:00Z"),
            owner(ACCOUNT_A, "c", "2026-03-03T10:00:00Z"),
        ]
    );
}

// ---------------------------------------------------------------------------------------------
// Round-robin

/// Decides `n` new contacts one minute apart, recording each assignment.
fn run(
    set: &RuleSet,
    team: &[User],
    history: &mut History,
    first: u128,
    n: u128,
    start: DateTime<Utc>,
) -> Vec<Decision> {
    (first..first + n)
        .map(|i| {
            let s = situation(i, start + Duration::minutes((i - first) as i64));
            let decision = decide_one(set, team, history, &s);
            if let Some(p) = decision.past(&s) {
                history.push(p);
            }
            decision
        })
        .collect()
}

fn names(decisions: &[Decision]) -> Vec<String> {
    decisions
        .iter()
        .map(|d| d.user().map(|u| u.to_string()).unwrap_or_default())
        .collect()
}

#[test]
fn equal_weights_take_strict_turns_and_the_turn_survives_a_rebuilt_history() {
    let set = rules(json!({"rules": [{"strategy": "round_robin", "users": ["a", "b", "c"]}]}));
    let team = users(&["a", "b", "c"]);
    let mut history = History::default();
    let first = run(&set, &team, &mut history, 0, 7, at(MONDAY_NOON_UTC));
    assert_eq!(names(&first), ["a", "b", "c", "a", "b", "c", "a"]);
    let mut rebuilt = History::new(history.decisions().to_vec());
    let next = run(&set, &team, &mut rebuilt, 7, 2, at(MONDAY_NOON_UTC));
    assert_eq!(names(&next), ["b", "c"]);
}

#[test]
fn weighted_round_robin_is_smooth() {
    let set = rules(
        json!({"rules": [{"strategy": "round_robin", "users": [{"user": "a", "weight": 5}, "b", "c"]}]}),
    );
    let team = users(&["a", "b", "c"]);
    let got = run(
        &set,
        &team,
        &mut History::default(),
        0,
        7,
        at(MONDAY_NOON_UTC),
    );
    // nginx's smooth weighted round-robin for 5:1:1.
    assert_eq!(names(&got), ["a", "a", "b", "a", "c", "a", "a"]);
}

#[test]
fn round_robin_shares_follow_the_weights_over_ten_thousand_contacts() {
    let weight_sets: [&[(&str, u32)]; 3] = [
        &[("a", 5), ("b", 3), ("c", 2)],
        &[("a", 7), ("b", 2), ("c", 1)],
        &[("a", 1), ("b", 1), ("c", 1), ("d", 3)],
    ];
    for weights in weight_sets {
        let users_json: Vec<Value> = weights
            .iter()
            .map(|(u, w)| json!({"user": u, "weight": w}))
            .collect();
        let set = rules(json!({"rules": [{"strategy": "round_robin", "users": users_json}]}));
        let ids: Vec<&str> = weights.iter().map(|(u, _)| *u).collect();
        let team = users(&ids);
        let total: u32 = weights.iter().map(|(_, w)| w).sum();
        let got = run(
            &set,
            &team,
            &mut History::default(),
            0,
            10_000,
            at(MONDAY_NOON_UTC),
        );
        let mut seen = vec![0_u32; weights.len()];
        for (i, name) in names(&got).iter().enumerate() {
            let k = ids.iter().position(|u| u == name).expect("a listed user");
            seen[k] += 1;
            // Smooth: at every point each user is within one contact of their exact share.
            let n = (i + 1) as f64;
            for (j, (_, w)) in weights.iter().enumerate() {
                let ideal = n * f64::from(*w) / f64::from(total);
                assert!(
                    (f64::from(seen[j]) - ideal).abs() <= 1.0,
                    "{weights:?} after {n}: {seen:?}"
                );
            }
        }
        for (j, (user, w)) in weights.iter().enumerate() {
            let share = f64::from(seen[j]) / 10_000.0;
            let expected = f64::from(*w) / f64::from(total);
            assert!(
                (share - expected).abs() < 0.01,
                "{user}: {share} vs {expected} ({weights:?})"
            );
        }
    }
}

#[test]
fn a_user_back_from_time_away_is_not_flooded_with_the_contacts_missed() {
    let set = rules(json!({"rules": [{"strategy": "round_robin", "users": ["a", "b", "c"]}]}));
    let mut team = users(&["a", "b", "c"]);
    let start = at(MONDAY_NOON_UTC);
    // b is away for the first 30 contacts.
    away(
        user_mut(&mut team, "b"),
        "2026-03-16T00:00:00Z",
        "2026-03-16T12:30:00Z",
    );
    let mut history = History::default();
    let while_away = names(&run(&set, &team, &mut history, 0, 30, start));
    assert!(!while_away.contains(&"b".to_owned()));
    assert_eq!(while_away.iter().filter(|u| *u == "a").count(), 15);
    let back = names(&run(
        &set,
        &team,
        &mut history,
        30,
        30,
        start + Duration::minutes(30),
    ));
    let b = back.iter().filter(|u| *u == "b").count();
    assert!(
        (10..=12).contains(&b),
        "b took {b} of 30 on return: {back:?}"
    );
}

#[test]
fn an_accounts_round_robin_turns_on_its_own_decisions_and_a_locations_on_all() {
    let set = rules(json!({"rules": [{"strategy": "round_robin", "users": ["a", "b"]}]}));
    let team = users(&["a", "b"]);
    // Account B's decisions of a rule with the same id do not move account A's turn.
    let history = History::new([past(
        1,
        ACCOUNT_B,
        "a",
        "round_robin#1",
        "2026-03-16T10:00:00Z",
    )]);
    let s = situation(2, at(MONDAY_NOON_UTC));
    assert_eq!(
        assigned(&decide(Some(&set), None, &team, &history, &s)).0,
        "a"
    );
    // The location's rule is shared by all accounts.
    let history = History::new([past(
        1,
        ACCOUNT_B,
        "a",
        "location/round_robin#1",
        "2026-03-16T10:00:00Z",
    )]);
    assert_eq!(
        assigned(&decide(None, Some(&set), &team, &history, &s)),
        ("b", "location/round_robin#1")
    );
}

#[test]
fn deciding_the_same_inputs_again_gives_the_same_decisions() {
    let set = rules(json!({
        "time_zone": "Europe/Madrid",
        "business_hours": {"mon": ["09:00-19:00"], "tue": ["09:00-19:00"], "wed": ["09:00-19:00"], "thu": ["09:00-19:00"], "fri": ["09:00-15:00"]},
        "capacity": {"max_open": 6, "window_hours": 8},
        "rules": [
            {"strategy": "user", "user": "vip", "when": {"sources": ["vip"]}, "backup": ["lead"]},
            {"strategy": "round_robin", "users": [{"user": "a", "weight": 3}, {"user": "b", "weight": 2}, "c"], "when": {"hours": "business"}, "backup": ["lead"]},
            {"strategy": "user", "user": "night", "when": {"hours": "after_hours"}, "respect_working_hours": false}
        ]
    }));
    let mut team = users(&["vip", "lead", "a", "b", "c", "night"]);
    away(
        user_mut(&mut team, "b"),
        "2026-03-17T08:00:00Z",
        "2026-03-18T12:00:00Z",
    );
    user_mut(&mut team, "c").availability.working_hours =
        Some(hours("Europe/Madrid", &["12:00-19:00"]));
    let situations: Vec<Situation> = (0..400_u128)
        .map(|i| {
            let mut s = situation(
                i,
                at("2026-03-16T06:00:00Z") + Duration::minutes(i as i64 * 17),
            );
            s.contact_source = (i % 7 == 0).then(|| "vip".to_owned());
            s
        })
        .collect();
    let replay = |mut history: History| -> Vec<Decision> {
        situations
            .iter()
            .map(|s| {
                let decision = decide_one(&set, &team, &history, s);
                if let Some(p) = decision.past(s) {
                    history.push(p);
                }
                decision
            })
            .collect()
    };
    let first = replay(History::default());
    assert_eq!(first, replay(History::default()));
    // Every decision again from a history rebuilt from the first run's decisions before it.
    let recorded: Vec<(usize, PastDecision)> = first
        .iter()
        .zip(&situations)
        .enumerate()
        .filter_map(|(i, (d, s))| Some((i, d.past(s)?)))
        .collect();
    for (i, s) in situations.iter().enumerate() {
        let before = recorded
            .iter()
            .filter(|(j, _)| *j < i)
            .map(|(_, p)| p.clone());
        assert_eq!(
            decide_one(&set, &team, &History::new(before), s),
            first[i],
            "decision {i}"
        );
    }
    // The run exercised every path.
    let all = names(&first);
    for user in ["vip", "lead", "a", "b", "c", "night"] {
        assert!(all.iter().any(|u| u == user), "{user} never chosen");
    }
    assert!(
        first
            .iter()
            .any(|d| matches!(d, Decision::Assign { candidates, .. } if candidates.len() > 1))
    );
}

// ---------------------------------------------------------------------------------------------
// Silence

#[test]
fn an_owner_who_does_not_reply_in_time_loses_the_contact() {
    let plain = rules(json!({"reassign_after_silence_minutes": 30, "rules": []}));
    let unset = rules(json!({"rules": []}));
    let business = rules(json!({
        "time_zone": "America/New_York",
        "business_hours": {"mon": ["09:00-17:00"], "fri": ["09:00-17:00"]},
        "reassign_after_silence_minutes": 30,
        "rules": []
    }));
    let assigned_at = "2026-03-16T10:00:00Z";
    let o = owner(ACCOUNT_A, "a", assigned_at);
    let conv = |inbound: Option<&str>, outbound: Option<&str>| Conversation {
        last_inbound: inbound.map(at),
        last_outbound: outbound.map(at),
    };
    let cases: Vec<(&str, &RuleSet, Conversation, &str, Option<&str>)> = vec![
        (
            "no limit set",
            &unset,
            conv(Some("2026-03-16T10:00:00Z"), None),
            "2026-03-16T18:00:00Z",
            None,
        ),
        (
            "no message from the contact",
            &plain,
            conv(None, None),
            "2026-03-16T18:00:00Z",
            None,
        ),
        (
            "replied",
            &plain,
            conv(Some("2026-03-16T10:00:00Z"), Some("2026-03-16T10:05:00Z")),
            "2026-03-16T18:00:00Z",
            None,
        ),
        (
            "29 min",
            &plain,
            conv(Some("2026-03-16T10:00:00Z"), None),
            "2026-03-16T10:29:59Z",
            None,
        ),
        (
            "30 min",
            &plain,
            conv(Some("2026-03-16T10:00:00Z"), None),
            "2026-03-16T10:30:00Z",
            Some("a has not replied for 30 min (limit 30 min) since 2026-03-16 10:00 UTC"),
        ),
        (
            "an old reply does not count",
            &plain,
            conv(Some("2026-03-16T11:00:00Z"), Some("2026-03-16T10:05:00Z")),
            "2026-03-16T11:45:00Z",
            Some("a has not replied for 45 min (limit 30 min) since 2026-03-16 11:00 UTC"),
        ),
        (
            "the clock starts at the assignment",
            &plain,
            conv(Some("2026-03-16T09:00:00Z"), None),
            "2026-03-16T10:20:00Z",
            None,
        ),
        // Friday 16:50 EDT message; the account reopens Monday 09:00.
        (
            "after hours",
            &business,
            conv(Some("2026-03-20T20:50:00Z"), None),
            "2026-03-23T13:19:00Z",
            None,
        ),
        (
            "after hours, then business hours",
            &business,
            conv(Some("2026-03-20T20:50:00Z"), None),
            "2026-03-23T13:20:00Z",
            Some(
                "a has not replied for 30 min of business hours (limit 30 min) since 2026-03-20 20:50 UTC",
            ),
        ),
    ];
    for (name, set, conversation, now, expected) in cases {
        let got = should_reassign_for_silence(Some(set), &o, &conversation, at(now));
        assert_eq!(got.as_deref(), expected, "{name}");
    }
    assert_eq!(
        should_reassign_for_silence(
            None,
            &o,
            &conv(Some(assigned_at), None),
            at("2026-03-17T00:00:00Z")
        ),
        None
    );
}

#[test]
fn business_time_between_two_instants_skips_the_repeated_hour_only_once() {
    // Open all Sunday in New York: the fall-back Sunday has 25 hours, the spring-forward one 23.
    let sunday = Schedule::new(
        "America/New_York".parse().unwrap(),
        WeeklyHours {
            days: std::array::from_fn(|i| {
                if i == 6 {
                    vec![TimeRange::parse("00:00-24:00").unwrap()]
                } else {
                    Vec::new()
                }
            }),
        },
    );
    let week = |from: &str, until: &str| sunday.open_between(at(from), at(until)).num_minutes();
    assert_eq!(
        week("2026-10-30T00:00:00Z", "2026-11-04T00:00:00Z"),
        25 * 60
    );
    assert_eq!(
        week("2026-03-06T00:00:00Z", "2026-03-11T00:00:00Z"),
        23 * 60
    );
    assert_eq!(week("2026-03-08T06:00:00Z", "2026-03-08T08:00:00Z"), 120);
    assert_eq!(week("2026-03-09T06:00:00Z", "2026-03-08T08:00:00Z"), 0);
}

#[test]
fn a_silent_owner_excluded_by_the_caller_is_not_kept() {
    let set = rules(
        json!({"reassign_after_silence_minutes": 30, "rules": [{"strategy": "round_robin", "users": ["a", "b"]}]}),
    );
    let team = users(&["a", "b"]);
    let mut s = situation(1, at("2026-03-16T11:00:00Z"));
    s.trigger = Trigger::ReturningContact;
    s.owners = vec![owner(ACCOUNT_A, "a", "2026-03-16T10:00:00Z")];
    assert!(matches!(
        decide_one(&set, &team, &History::default(), &s),
        Decision::Keep { .. }
    ));
    let why = should_reassign_for_silence(
        Some(&set),
        &s.owners[0],
        &Conversation {
            last_inbound: Some(at("2026-03-16T10:00:00Z")),
            last_outbound: None,
        },
        s.now,
    )
    .expect("silent for an hour");
    s.exclude = vec![("a".into(), why.clone())];
    let decision = decide_one(&set, &team, &History::default(), &s);
    assert_eq!(assigned(&decision).0, "b");
    assert_eq!(passed_over(&decision)[0], ("a".to_owned(), why));
}

// ---------------------------------------------------------------------------------------------
// Events

#[test]
fn a_decision_becomes_the_event_that_records_it() {
    let set = rules(json!({"rules": [{"strategy": "user", "user": "a", "backup": ["b"]}]}));
    let mut team = users(&["a", "b"]);
    user_mut(&mut team, "a").deleted = true;
    let s = situation(7, at(MONDAY_NOON_UTC));
    let decision = decide_one(&set, &team, &History::default(), &s);
    let Some(whatsnap_events::Event::ContactAssigned(event)) = decision.event(&s) else {
        panic!("not a ContactAssigned: {decision:?}")
    };
    assert_eq!(event.contact_id, Uuid::from_u128(7));
    assert_eq!(event.account_id, Some(ACCOUNT_A));
    assert_eq!(event.user_id, "b");
    assert_eq!(event.rule, "user#1");
    assert_eq!(event.reason, "backup b, as a deleted in GHL");
    assert_eq!(
        event.candidates,
        [
            whatsnap_events::CandidateConsidered {
                user_id: "a".into(),
                passed_over: Some("deleted in GHL (user#1)".into())
            },
            whatsnap_events::CandidateConsidered {
                user_id: "b".into(),
                passed_over: None
            },
        ]
    );

    user_mut(&mut team, "b").active = false;
    let decision = decide_one(&set, &team, &History::default(), &s);
    let Some(whatsnap_events::Event::AssignmentSkipped(event)) = decision.event(&s) else {
        panic!("not skipped: {decision:?}")
    };
    assert_eq!(
        event.reason,
        "no rule yielded an available user: user#1 has no available user"
    );
    assert_eq!(event.candidates.len(), 2);
}

// ---------------------------------------------------------------------------------------------
// What GHL knows: the contact's source, its owner before whatsnap, reassignments made in GHL

fn ghl_owner(user: &str, kind: GhlOwnerKind, since: &str) -> Option<GhlOwner> {
    Some(GhlOwner {
        user_id: Some(user.into()),
        kind,
        since: at(since),
    })
}

fn source_rules(manual: &str) -> RuleSet {
    rules(json!({
        "manual": manual,
        "rules": [
            { "strategy": "user", "user": "u_senior",
              "when": { "sources": ["Google Ads Campaign"] } },
            { "strategy": "round_robin", "users": ["u_ana", "u_ben"] }
        ]
    }))
}

#[test]
fn the_manual_policy_defaults_to_respect_and_refuses_other_words() {
    let parsed = rules(json!({ "rules": [] }));
    assert_eq!(parsed.manual, Manual::Respect);
    assert_eq!(parse_rules(&parsed.to_json()).unwrap(), parsed);
    let overriding = rules(json!({ "manual": "override", "rules": [] }));
    assert_eq!(overriding.manual, Manual::Override);
    assert_eq!(overriding.to_json()["manual"], "override");
    let err = parse_rules(&json!({ "manual": "ignore", "rules": [] })).unwrap_err();
    assert_eq!(
        err.to_string(),
        "manual: `ignore` is not one of respect, override"
    );
}

#[test]
fn a_new_contact_whose_ghl_source_matches_follows_the_source_rule() {
    let users = users(&["u_senior", "u_ana", "u_ben"]);
    let mut situation = situation(1, at(MONDAY_NOON_UTC));
    situation.contact_source = Some("google ads campaign".into());
    let decision = decide_one(
        &source_rules("respect"),
        &users,
        &History::default(),
        &situation,
    );
    assert_eq!(assigned(&decision), ("u_senior", "user#1"));
}

#[test]
fn a_contact_owned_in_ghl_before_whatsnap_keeps_its_owner_whatever_its_source() {
    let users = users(&["u_senior", "u_ana", "u_ben"]);
    let mut situation = situation(1, at(MONDAY_NOON_UTC));
    situation.contact_source = Some("Google Ads Campaign".into());
    situation.existed_before = true;
    situation.ghl_owner = ghl_owner("u_ben", GhlOwnerKind::BeforeWhatsnap, MONDAY_NOON_UTC);
    situation.ghl_assigned_to = Some(Some("u_ben".into()));
    let decision = decide_one(
        &source_rules("respect"),
        &users,
        &History::default(),
        &situation,
    );
    assert_eq!(assigned(&decision), ("u_ben", "ghl_owner"));
    let Decision::Assign { reason, .. } = &decision else {
        unreachable!()
    };
    assert_eq!(
        reason,
        "owner in GHL before whatsnap: u_ben (manual: respect)"
    );
}

#[test]
fn an_inactive_owner_from_ghl_is_passed_over_and_the_rules_decide() {
    let mut users = users(&["u_senior", "u_ana", "u_ben"]);
    user_mut(&mut users, "u_ben").active = false;
    let mut situation = situation(1, at(MONDAY_NOON_UTC));
    situation.contact_source = Some("Google Ads Campaign".into());
    situation.ghl_owner = ghl_owner("u_ben", GhlOwnerKind::BeforeWhatsnap, MONDAY_NOON_UTC);
    let decision = decide_one(
        &source_rules("respect"),
        &users,
        &History::default(),
        &situation,
    );
    assert_eq!(assigned(&decision), ("u_senior", "user#1"));
    assert_eq!(
        passed_over(&decision),
        vec![("u_ben".to_owned(), "inactive".to_owned())]
    );
    let Decision::Assign { reason, .. } = &decision else {
        unreachable!()
    };
    assert!(
        reason.contains("passed over owner in GHL before whatsnap: u_ben: inactive"),
        "{reason}"
    );
}

#[test]
fn under_override_the_rules_decide_and_say_whom_they_override() {
    let users = users(&["u_senior", "u_ana", "u_ben"]);
    let mut situation = situation(1, at(MONDAY_NOON_UTC));
    situation.contact_source = Some("Google Ads Campaign".into());
    situation.ghl_owner = ghl_owner("u_ben", GhlOwnerKind::BeforeWhatsnap, MONDAY_NOON_UTC);
    let decision = decide_one(
        &source_rules("override"),
        &users,
        &History::default(),
        &situation,
    );
    assert_eq!(assigned(&decision), ("u_senior", "user#1"));
    let Decision::Assign { reason, .. } = &decision else {
        unreachable!()
    };
    assert!(
        reason.ends_with("; overrides owner in GHL before whatsnap: u_ben (manual: override)"),
        "{reason}"
    );
}

#[test]
fn a_reassignment_made_in_ghl_becomes_the_owner_and_is_then_kept() {
    let users = users(&["u_senior", "u_ana", "u_ben"]);
    let history = History::new([past(
        1,
        ACCOUNT_A,
        "u_ana",
        "round_robin#1",
        "2026-03-16T09:00:00Z",
    )]);
    let mut situation = situation(1, at(MONDAY_NOON_UTC));
    situation.trigger = Trigger::ReturningContact;
    situation.owners = history.owners_of(Uuid::from_u128(1));
    situation.ghl_owner = ghl_owner(
        "u_ben",
        GhlOwnerKind::ReassignedInGhl,
        "2026-03-16T10:00:00Z",
    );
    situation.ghl_assigned_to = Some(Some("u_ben".into()));
    let rules = source_rules("respect");
    let decision = decide_one(&rules, &users, &history, &situation);
    assert_eq!(assigned(&decision), ("u_ben", "ghl_owner"));
    let Decision::Assign { reason, .. } = &decision else {
        unreachable!()
    };
    assert_eq!(
        reason,
        "reassigned to u_ben by hand in GHL (manual: respect)"
    );

    // Once recorded, the next message keeps the owner chosen in GHL.
    let history = History::new([
        past(
            1,
            ACCOUNT_A,
            "u_ana",
            "round_robin#1",
            "2026-03-16T09:00:00Z",
        ),
        past(1, ACCOUNT_A, "u_ben", "ghl_owner", MONDAY_NOON_UTC),
    ]);
    situation.owners = history.owners_of(Uuid::from_u128(1));
    situation.now = at("2026-03-16T13:00:00Z");
    let decision = decide_one(&rules, &users, &history, &situation);
    assert!(
        matches!(&decision, Decision::Keep { user_id, .. } if user_id.as_str() == "u_ben"),
        "{decision:?}"
    );
}

#[test]
fn under_override_a_reassignment_made_in_ghl_is_replaced_by_the_kept_owner_with_the_reason() {
    let users = users(&["u_senior", "u_ana", "u_ben"]);
    let history = History::new([past(
        1,
        ACCOUNT_A,
        "u_ana",
        "round_robin#1",
        "2026-03-16T09:00:00Z",
    )]);
    let mut situation = situation(1, at(MONDAY_NOON_UTC));
    situation.trigger = Trigger::ReturningContact;
    situation.owners = history.owners_of(Uuid::from_u128(1));
    situation.ghl_owner = ghl_owner(
        "u_ben",
        GhlOwnerKind::ReassignedInGhl,
        "2026-03-16T10:00:00Z",
    );
    situation.ghl_assigned_to = Some(Some("u_ben".into()));
    let decision = decide_one(&source_rules("override"), &users, &history, &situation);
    assert_eq!(assigned(&decision), ("u_ana", "current_owner"));
    let Decision::Assign { reason, .. } = &decision else {
        unreachable!()
    };
    assert_eq!(
        reason,
        "u_ana owns the contact since 2026-03-16 09:00 UTC and is still valid (multi_touch \
         per_account); GHL shows u_ben: written back; overrides reassigned to u_ben by hand in \
         GHL (manual: override)"
    );
}

#[test]
fn a_kept_owner_that_ghl_does_not_show_is_decided_again_so_ghl_is_set() {
    let users = users(&["u_senior", "u_ana", "u_ben"]);
    let history = History::new([past(
        1,
        ACCOUNT_A,
        "u_ana",
        "round_robin#1",
        "2026-03-16T09:00:00Z",
    )]);
    let mut situation = situation(1, at(MONDAY_NOON_UTC));
    situation.trigger = Trigger::ReturningContact;
    situation.owners = history.owners_of(Uuid::from_u128(1));
    let rules = source_rules("respect");

    // GHL shows the kept owner, or whatsnap never heard: nothing to do.
    situation.ghl_assigned_to = Some(Some("u_ana".into()));
    assert!(matches!(
        decide_one(&rules, &users, &history, &situation),
        Decision::Keep { .. }
    ));
    situation.ghl_assigned_to = None;
    assert!(matches!(
        decide_one(&rules, &users, &history, &situation),
        Decision::Keep { .. }
    ));

    // GHL shows nobody.
    situation.ghl_assigned_to = Some(None);
    let decision = decide_one(&rules, &users, &history, &situation);
    assert_eq!(assigned(&decision), ("u_ana", "current_owner"));
    let Decision::Assign { reason, .. } = &decision else {
        unreachable!()
    };
    assert!(
        reason.ends_with("; GHL shows nobody: written back"),
        "{reason}"
    );
}

#[test]
fn an_assignment_says_why_each_earlier_rule_did_not_take_the_contact() {
    let users = users(&["u_senior", "u_ana", "u_ben"]);
    let mut situation = situation(1, at(MONDAY_NOON_UTC));
    situation.contact_source = Some("Referral Program".into());
    let decision = decide_one(
        &source_rules("respect"),
        &users,
        &History::default(),
        &situation,
    );
    assert_eq!(assigned(&decision).1, "round_robin#2");
    let Decision::Assign { reason, .. } = &decision else {
        unreachable!()
    };
    assert!(
        reason.ends_with("; before it: user#1 does not apply: source is `Referral Program`"),
        "{reason}"
    );
}

// ---------------------------------------------------------------------------------------------
// Teams: members in turn, the lead as overflow

fn team_rules() -> RuleSet {
    rules(json!({ "rules": [
        { "strategy": "team", "team": "Sales", "members": ["u_ana", "u_ben"], "lead": "u_lead",
          "backup": ["u_owner"] }
    ] }))
}

#[test]
fn a_team_routes_to_its_members_in_turn() {
    let users = users(&["u_ana", "u_ben", "u_lead", "u_owner"]);
    let rules = team_rules();
    let mut history = History::default();
    let mut chosen = Vec::new();
    for contact in 1..=4 {
        let situation = situation(contact, at(MONDAY_NOON_UTC));
        let decision = decide_one(&rules, &users, &history, &situation);
        let (user, rule) = assigned(&decision);
        assert_eq!(rule, "team#1");
        chosen.push(user.to_owned());
        history.push(decision.past(&situation).unwrap());
    }
    assert_eq!(chosen, ["u_ana", "u_ben", "u_ana", "u_ben"]);
}

#[test]
fn the_team_lead_takes_the_overflow_when_no_member_can() {
    let mut users = users(&["u_ana", "u_ben", "u_lead", "u_owner"]);
    away(
        user_mut(&mut users, "u_ana"),
        "2026-03-16T00:00:00Z",
        "2026-03-17T00:00:00Z",
    );
    user_mut(&mut users, "u_ben").active = false;
    let situation = situation(1, at(MONDAY_NOON_UTC));
    let decision = decide_one(&team_rules(), &users, &History::default(), &situation);
    assert_eq!(assigned(&decision), ("u_lead", "team#1"));
    let Decision::Assign { reason, .. } = &decision else {
        unreachable!()
    };
    assert!(
        reason.starts_with("lead of Sales, as overflow, as u_ana out of office until"),
        "{reason}"
    );
    assert!(reason.contains("u_ben inactive"), "{reason}");

    // With the lead away too, the backup.
    user_mut(&mut users, "u_lead").active = false;
    let decision = decide_one(&team_rules(), &users, &History::default(), &situation);
    assert_eq!(assigned(&decision), ("u_owner", "team#1"));
}

#[test]
fn a_team_needs_members_and_names_them_once() {
    let err = parse_rules(
        &json!({ "rules": [ { "strategy": "team", "team": "Sales", "members": [] } ] }),
    )
    .unwrap_err();
    assert_eq!(err.to_string(), "rules[0].members: needs at least one user");
    let err = parse_rules(&json!({ "rules": [ { "strategy": "team", "members": ["u_ana"] } ] }))
        .unwrap_err();
    assert_eq!(err.to_string(), "rules[0].team: missing");
    let parsed = team_rules();
    assert_eq!(parse_rules(&parsed.to_json()).unwrap(), parsed);
}

// ---------------------------------------------------------------------------------------------
// Context-based multi-touch: the channel of the account messaged

const WHATSAPP_1: Uuid = Uuid::from_u128(0x1A);
const WHATSAPP_2: Uuid = Uuid::from_u128(0x1B);
const TWILIO: Uuid = Uuid::from_u128(0x2A);

fn channels() -> std::collections::BTreeMap<Uuid, whatsnap_events::AccountKind> {
    use whatsnap_events::AccountKind;
    [
        (WHATSAPP_1, AccountKind::Whatsapp),
        (WHATSAPP_2, AccountKind::Whatsapp),
        (TWILIO, AccountKind::Twilio),
    ]
    .into()
}

/// Decides for the contact on `account` at `now`, records an assignment in `history`, and
/// returns the decision.
fn on_account(
    set: &RuleSet,
    team: &[User],
    history: &mut History,
    account: Uuid,
    now: &str,
) -> Decision {
    let mut s = situation(1, at(now));
    s.account_id = Some(account);
    s.channels = channels();
    s.trigger = if history.owners_of(s.contact_id).is_empty() {
        Trigger::NewContact
    } else {
        Trigger::ReturningContact
    };
    s.owners = history.owners_of(s.contact_id);
    let decision = decide(None, Some(set), team, history, &s);
    if let Some(past) = decision.past(&s) {
        history.push(past);
    }
    decision
}

#[test]
fn per_channel_gives_a_contact_one_owner_per_channel() {
    let set = rules(json!({
        "multi_touch": "per_channel",
        "rules": [ { "strategy": "round_robin", "users": ["u_ana", "u_ben"] } ]
    }));
    let team = users(&["u_ana", "u_ben"]);
    let mut history = History::default();

    // The contact writes on WhatsApp first: Ana, by the round-robin.
    let first = on_account(&set, &team, &mut history, WHATSAPP_1, MONDAY_NOON_UTC);
    assert_eq!(assigned(&first), ("u_ana", "location/round_robin#1"));
    // Then on a Twilio number, another channel: its own owner, Ben.
    let sms = on_account(&set, &team, &mut history, TWILIO, "2026-03-16T12:05:00Z");
    assert_eq!(assigned(&sms), ("u_ben", "location/round_robin#1"));
    // Then on a second WhatsApp account: the WhatsApp owner keeps the contact.
    let second = on_account(
        &set,
        &team,
        &mut history,
        WHATSAPP_2,
        "2026-03-16T12:10:00Z",
    );
    assert_eq!(
        second,
        Decision::Keep {
            user_id: "u_ana".into(),
            reason: "u_ana owns the contact since 2026-03-16 12:00 UTC and is still valid \
                     (multi_touch per_channel)"
                .into()
        }
    );
    // And back on Twilio: Ben keeps it.
    let again = on_account(&set, &team, &mut history, TWILIO, "2026-03-16T12:15:00Z");
    assert!(
        matches!(&again, Decision::Keep { user_id, .. } if user_id.as_str() == "u_ben"),
        "{again:?}"
    );

    // Per account (the default), the second WhatsApp account would have had its own owner.
    let per_account = rules(json!({
        "rules": [ { "strategy": "round_robin", "users": ["u_ana", "u_ben"] } ]
    }));
    let mut history = History::default();
    on_account(
        &per_account,
        &team,
        &mut history,
        WHATSAPP_1,
        MONDAY_NOON_UTC,
    );
    let second = on_account(
        &per_account,
        &team,
        &mut history,
        WHATSAPP_2,
        "2026-03-16T12:10:00Z",
    );
    assert_eq!(assigned(&second).0, "u_ben");
}

#[test]
fn per_channel_reroutes_from_a_channels_owner_who_is_gone() {
    let set = rules(json!({
        "multi_touch": "per_channel",
        "rules": [ { "strategy": "user", "user": "u_cleo" } ]
    }));
    let mut team = users(&["u_ana", "u_ben", "u_cleo"]);
    user_mut(&mut team, "u_ana").deleted = true;
    let history = History::new([
        past(1, WHATSAPP_1, "u_ana", "user#1", "2026-03-16T09:00:00Z"),
        past(1, TWILIO, "u_ben", "user#1", "2026-03-16T10:00:00Z"),
    ]);
    let mut s = situation(1, at(MONDAY_NOON_UTC));
    s.account_id = Some(WHATSAPP_2);
    s.channels = channels();
    s.trigger = Trigger::ReturningContact;
    s.owners = history.owners_of(s.contact_id);
    // The WhatsApp owner is gone; Ben owns the Twilio channel only, so he is not kept.
    let decision = decide_one(&set, &team, &history, &s);
    assert_eq!(assigned(&decision), ("u_cleo", "user#1"));
    assert_eq!(
        passed_over(&decision),
        [("u_ana".to_owned(), "deleted in GHL".to_owned())]
    );
}

#[test]
fn a_rule_may_route_by_the_channel_of_the_account_messaged() {
    let set = rules(json!({ "rules": [
        { "strategy": "user", "user": "u_whatsapp", "when": { "channels": ["whatsapp"] } },
        { "strategy": "user", "user": "u_sms", "when": { "channels": ["twilio", "android_sms"] } }
    ] }));
    let team = users(&["u_whatsapp", "u_sms"]);
    let mut s = situation(1, at(MONDAY_NOON_UTC));
    s.channels = channels();
    s.account_id = Some(WHATSAPP_1);
    assert_eq!(
        assigned(&decide_one(&set, &team, &History::default(), &s)),
        ("u_whatsapp", "user#1")
    );
    s.account_id = Some(TWILIO);
    let decision = decide_one(&set, &team, &History::default(), &s);
    assert_eq!(assigned(&decision), ("u_sms", "user#2"));
    let Decision::Assign { reason, .. } = &decision else {
        unreachable!()
    };
    assert_eq!(
        reason,
        "user#2 names u_sms; before it: user#1 does not apply: channel is twilio"
    );
    // An account whose channel is not known matches no channel rule, and says so.
    s.account_id = Some(ACCOUNT_B);
    let Decision::Skip { reason, .. } = decide_one(&set, &team, &History::default(), &s) else {
        panic!("no rule should apply");
    };
    assert!(
        reason.contains("user#1 does not apply: the account's channel is not known"),
        "{reason}"
    );
    assert_eq!(parse_rules(&set.to_json()).unwrap(), set);
}

#[test]
fn channel_settings_that_make_no_sense_are_refused_with_the_field() {
    let cases: Vec<(Value, &str)> = vec![
        (
            json!({ "multi_touch": "per_platform", "rules": [] }),
            "multi_touch: `per_platform` is not one of per_account, per_channel, first_owner, \
             single_owner",
        ),
        (
            json!({ "rules": [ { "strategy": "user", "user": "u", "when": { "channels": ["sms"] } } ] }),
            "rules[0].when.channels[0]: `sms` is not one of whatsapp, android_sms, imessage, twilio",
        ),
        (
            json!({ "rules": [ { "strategy": "user", "user": "u", "when": { "channels": [] } } ] }),
            "rules[0].when.channels: is empty: leave it out to match any",
        ),
        (
            json!({ "rules": [ { "strategy": "user", "user": "u",
                                 "when": { "channels": ["twilio", "twilio"] } } ] }),
            "rules[0].when.channels[1]: `twilio` is listed twice",
        ),
        (
            json!({ "rules": [ { "strategy": "user", "user": "u", "when": { "channels": "twilio" } } ] }),
            "rules[0].when.channels: must be a JSON array",
        ),
    ];
    for (document, expected) in cases {
        let error = parse_rules(&document).expect_err(&format!("accepted {document}"));
        assert_eq!(error.to_string(), expected);
    }
    let parsed = rules(json!({ "multi_touch": "per_channel", "rules": [] }));
    assert_eq!(parsed.multi_touch, MultiTouch::PerChannel);
    assert_eq!(parsed.to_json()["multi_touch"], "per_channel");
}

// ---------------------------------------------------------------------------------------------
// An owner removed by hand in GHL

fn unassigned_in_ghl(manual: &str) -> (RuleSet, Vec<User>, History, Situation) {
    let set = source_rules(manual);
    let team = users(&["u_senior", "u_ana", "u_ben"]);
    let history = History::new([past(
        1,
        ACCOUNT_A,
        "u_ana",
        "round_robin#2",
        "2026-03-16T09:00:00Z",
    )]);
    let mut s = situation(1, at(MONDAY_NOON_UTC));
    s.trigger = Trigger::ReturningContact;
    s.owners = history.owners_of(s.contact_id);
    s.ghl_owner = Some(GhlOwner {
        user_id: None,
        kind: GhlOwnerKind::ReassignedInGhl,
        since: at("2026-03-16T10:00:00Z"),
    });
    s.ghl_assigned_to = Some(None);
    (set, team, history, s)
}

#[test]
fn an_owner_removed_by_hand_in_ghl_is_not_assigned_again_under_respect() {
    let (set, team, history, s) = unassigned_in_ghl("respect");
    let decision = decide_one(&set, &team, &history, &s);
    assert_eq!(
        decision,
        Decision::Skip {
            reason: "owner removed by hand in GHL (manual: respect): left without an owner \
                     until a GHL user assigns one; u_ana is not assigned again"
                .into(),
            candidates: Vec::new(),
        }
    );
    let Some(whatsnap_events::Event::AssignmentSkipped(event)) = decision.event(&s) else {
        panic!("a skip is recorded, so explain tells it");
    };
    assert_eq!(event.trigger.as_deref(), Some("returning_contact"));

    // Once a GHL user assigns someone by hand, that owner is respected.
    let mut s = s;
    s.ghl_owner = ghl_owner(
        "u_ben",
        GhlOwnerKind::ReassignedInGhl,
        "2026-03-16T11:00:00Z",
    );
    s.ghl_assigned_to = Some(Some("u_ben".into()));
    assert_eq!(
        assigned(&decide_one(&set, &team, &history, &s)),
        ("u_ben", "ghl_owner")
    );
}

#[test]
fn under_override_an_owner_removed_by_hand_is_set_again_with_the_conflict_explained() {
    let (set, team, history, s) = unassigned_in_ghl("override");
    let decision = decide_one(&set, &team, &history, &s);
    assert_eq!(assigned(&decision), ("u_ana", "current_owner"));
    let Decision::Assign { reason, .. } = &decision else {
        unreachable!()
    };
    assert_eq!(
        reason,
        "u_ana owns the contact since 2026-03-16 09:00 UTC and is still valid (multi_touch \
         per_account); GHL shows nobody: written back; overrides owner removed by hand in GHL \
         (manual: override)"
    );

    // A contact whatsnap never assigned is decided by the rules, and the reason says whom
    // they override.
    let mut s = s;
    s.owners = Vec::new();
    let decision = decide_one(&set, &team, &History::default(), &s);
    assert_eq!(assigned(&decision), ("u_ana", "round_robin#2"));
    let Decision::Assign { reason, .. } = &decision else {
        unreachable!()
    };
    assert!(
        reason.contains("; overrides owner removed by hand in GHL (manual: override)"),
        "{reason}"
    );
}

#[test]
fn an_owner_removed_in_ghl_before_whatsnaps_latest_decision_does_not_count() {
    // whatsnap decided after the removal (e.g. under override): the removal is history.
    let (set, team, _, mut s) = unassigned_in_ghl("respect");
    let history = History::new([past(
        1,
        ACCOUNT_A,
        "u_ana",
        "current_owner",
        "2026-03-16T11:00:00Z",
    )]);
    s.owners = history.owners_of(s.contact_id);
    s.ghl_assigned_to = Some(Some("u_ana".into()));
    assert!(matches!(
        decide_one(&set, &team, &history, &s),
        Decision::Keep { .. }
    ));
}
