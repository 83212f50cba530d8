//! How assignment is performing, from the log alone: first-response time per user and per
//! account (a contact's first unanswered message to the first reply a GHL user sent it), open
//! contacts per user (the contacts each user owns now; an owner removed by hand in GHL no
//! longer counts), reassignments and their causes, and contacts left unassigned with why. Pure:
//! the caller passes the events and the window. [`prometheus`] writes the same figures as
//! Prometheus metrics.

use std::collections::{BTreeMap, HashMap};

use chrono::{DateTime, Utc};
use uuid::Uuid;
use whatsnap_events::{Event, LocationId, PhoneNumber, RecordedEvent, contact_id_for};
use whatsnap_telemetry::metrics::escape;

/// First responses of one user or account.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Responses {
    pub count: u64,
    pub total_seconds: i64,
}

impl Responses {
    fn add(&mut self, seconds: i64) {
        self.count += 1;
        self.total_seconds += seconds;
    }

    /// The mean first-response time in whole seconds; `None` without responses.
    pub fn average_seconds(&self) -> Option<i64> {
        (self.count > 0).then(|| self.total_seconds / self.count as i64)
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    /// By GHL user id.
    pub users: BTreeMap<String, Responses>,
    /// By account id.
    pub accounts: BTreeMap<Uuid, Responses>,
    /// The contacts each user owns now, by user id.
    pub open: BTreeMap<String, u64>,
    /// Reassignments in the window, by cause.
    pub reassignments: BTreeMap<String, u64>,
    /// Contacts whose latest decision left them unassigned, by reason.
    pub unassigned: BTreeMap<String, u64>,
}

/// Why a contact that had an owner got another.
fn cause(rule: &str, trigger: Option<&str>, reason: &str) -> &'static str {
    match (rule, trigger) {
        ("ghl_owner", _) => "chosen in GHL",
        ("current_owner", _) => "owner written back to GHL",
        (_, Some("owner_silent")) => "owner did not reply in time",
        _ if reason.contains("rerouted from") => "owner no longer available",
        _ => "rules",
    }
}

/// The report of `location` over the events that occurred from `since` on (ownership is
/// counted over the whole log).
pub fn report(events: &[RecordedEvent], location: &LocationId, since: DateTime<Utc>) -> Report {
    let mut tally = Tally::new(since);
    for recorded in events.iter().filter(|e| e.location_id() == location) {
        tally.take(recorded);
    }
    tally.report()
}

/// The event types a report is made of: the others can be passed over undecoded.
pub const READS: &[&str] = &[
    "InboundMessageReceived",
    "OutboundMessageRequested",
    "ContactAssigned",
    "ContactOwnerChangedInGhl",
    "AssignmentSkipped",
];

/// One location's report as it is made, an event at a time: what has been counted and, per
/// contact, what the next events are counted against. Kept between two looks at the log, it
/// takes in only the events after the last one it took.
#[derive(Debug, Clone)]
pub struct Tally {
    since: DateTime<Utc>,
    report: Report,
    /// Per contact: its first unanswered message (when and to which account).
    waiting: HashMap<Uuid, (DateTime<Utc>, Uuid)>,
    /// Per contact: its owner (`None`: removed by hand in GHL).
    owner: HashMap<Uuid, Option<String>>,
    /// Contacts whose latest decision left them unassigned, with why.
    skipped: HashMap<Uuid, String>,
}

impl Tally {
    /// A report over the events from `since` on.
    pub fn new(since: DateTime<Utc>) -> Self {
        Self {
            since,
            report: Report::default(),
            waiting: HashMap::new(),
            owner: HashMap::new(),
            skipped: HashMap::new(),
        }
    }

    /// Takes in the next event of the location.
    pub fn take(&mut self, recorded: &RecordedEvent) {
        if !READS.contains(&recorded.event_type.as_str()) {
            return;
        }
        let Ok(event) = recorded.decode() else {
            return;
        };
        let location = recorded.location_id();
        let report = &mut self.report;
        let at = recorded.occurred_at;
        let in_window = at >= self.since;
        match event {
            // A message typed on the account's own phone is no customer waiting.
            Event::InboundMessageReceived(e) if !e.from_me => {
                if let Ok(phone) = PhoneNumber::parse(&e.from) {
                    self.waiting
                        .entry(contact_id_for(location, &phone))
                        .or_insert((at, e.account_id));
                }
            }
            Event::OutboundMessageRequested(e) => {
                let Some(user) = e.ghl_user_id else { return };
                if let Some((asked, account)) = self.waiting.remove(&e.contact_id)
                    && asked >= self.since
                {
                    let seconds = (at - asked).num_seconds();
                    report.users.entry(user).or_default().add(seconds);
                    report.accounts.entry(account).or_default().add(seconds);
                }
            }
            Event::ContactAssigned(e) => {
                let before = self
                    .owner
                    .insert(e.contact_id, Some(e.user_id.clone()))
                    .flatten();
                self.skipped.remove(&e.contact_id);
                if in_window && before.as_ref().is_some_and(|b| *b != e.user_id) {
                    *report
                        .reassignments
                        .entry(cause(&e.rule, e.trigger.as_deref(), &e.reason).to_owned())
                        .or_default() += 1;
                }
            }
            // A GHL user removed the owner by hand: the contact is nobody's until a decision.
            Event::ContactOwnerChangedInGhl(e) if e.user_id.is_none() => {
                self.owner.insert(e.contact_id, None);
            }
            // A contact that has an owner keeps it when a later decision finds nobody.
            Event::AssignmentSkipped(e)
                if self.owner.get(&e.contact_id).cloned().flatten().is_none() =>
            {
                self.skipped.insert(e.contact_id, e.reason);
            }
            _ => {}
        }
    }

    /// The report of the events taken so far.
    pub fn report(&self) -> Report {
        let mut report = self.report.clone();
        for user in self.owner.values().flatten() {
            *report.open.entry(user.clone()).or_default() += 1;
        }
        for reason in self.skipped.values() {
            *report.unassigned.entry(reason.clone()).or_default() += 1;
        }
        report
    }
}

/// The reports of several locations as Prometheus metrics, in the text exposition format
/// (0.0.4), every series labelled with its `location`:
///
/// - `whatsnap_assignment_user_first_response_seconds` (summary: `_sum` and `_count`, label
///   `user`) and `whatsnap_assignment_account_first_response_seconds` (label `account`): first
///   responses and their total time;
/// - `whatsnap_assignment_open_contacts` (gauge, label `user`): the contacts each user owns;
/// - `whatsnap_assignment_reassignments_total` (counter, label `cause`);
/// - `whatsnap_assignment_unassigned_contacts` (gauge, label `reason`).
///
/// Give it reports over the whole history (`since` the beginning), so that the summaries and
/// the counter only grow, as Prometheus expects. Written here rather than with a metrics crate
/// because the figures are not counted as things happen but computed from the log on each
/// scrape, by [`report`]: a registry would only hold a copy of them.
pub fn prometheus<'a>(reports: impl IntoIterator<Item = (&'a LocationId, &'a Report)>) -> String {
    let reports: Vec<(&LocationId, &Report)> = reports.into_iter().collect();
    let mut out = String::new();
    let by_user = reports.iter().flat_map(|(location, report)| {
        report
            .users
            .iter()
            .map(move |(user, times)| (labels(location, "user", user), times))
    });
    summary(
        &mut out,
        "whatsnap_assignment_user_first_response_seconds",
        "by the GHL user who replied",
        by_user,
    );
    let by_account = reports.iter().flat_map(|(location, report)| {
        report
            .accounts
            .iter()
            .map(move |(account, times)| (labels(location, "account", &account.to_string()), times))
    });
    summary(
        &mut out,
        "whatsnap_assignment_account_first_response_seconds",
        "by the account the contact wrote to",
        by_account,
    );
    let counts = |key: &'static str, pick: fn(&Report) -> &BTreeMap<String, u64>| {
        reports
            .iter()
            .flat_map(move |(location, report)| {
                pick(report)
                    .iter()
                    .map(move |(value, count)| format!("{} {count}", labels(location, key, value)))
            })
            .collect::<Vec<_>>()
    };
    family(
        &mut out,
        "whatsnap_assignment_open_contacts",
        "gauge",
        "Contacts each user owns now.",
        counts("user", |r| &r.open),
    );
    family(
        &mut out,
        "whatsnap_assignment_reassignments_total",
        "counter",
        "Contacts that had an owner and got another, by cause.",
        counts("cause", |r| &r.reassignments),
    );
    family(
        &mut out,
        "whatsnap_assignment_unassigned_contacts",
        "gauge",
        "Contacts whose latest decision left them without an owner, by reason.",
        counts("reason", |r| &r.unassigned),
    );
    out
}

/// The labels of one series: its location and one more.
fn labels(location: &LocationId, key: &str, value: &str) -> String {
    format!(
        "{{location=\"{}\",{key}=\"{}\"}}",
        escape(location.as_str()),
        escape(value)
    )
}

/// A summary of first-response times (`_sum` and `_count`, no quantiles), one series per
/// label set.
fn summary<'a>(
    out: &mut String,
    name: &str,
    by: &str,
    series: impl Iterator<Item = (String, &'a Responses)>,
) {
    let samples = series
        .flat_map(|(labels, times)| {
            [
                format!("_sum{labels} {}", times.total_seconds),
                format!("_count{labels} {}", times.count),
            ]
        })
        .collect();
    let help = format!(
        "Time from a contact's first unanswered message to the first reply from GHL, {by}."
    );
    family(out, name, "summary", &help, samples);
}

/// One metric family: its HELP and TYPE lines, then its samples (each `<suffix><labels>
/// <value>`, written after the family's name).
fn family(out: &mut String, name: &str, kind: &str, help: &str, samples: Vec<String>) {
    out.push_str(&format!("# HELP {name} {help}\n# TYPE {name} {kind}\n"));
    for sample in samples {
        out.push_str(name);
        out.push_str(&sample);
        out.push('\n');
    }
}

#[cfg(test)]
mod tests {
    use chrono::Duration;
    use whatsnap_events::{
        AggregateKind, AssignmentSkipped, ContactAssigned, EventId, EventMetadata,
        InboundMessageReceived, OutboundMessageRequested, StreamId,
    };

    use super::*;

    const ACCOUNT: Uuid = Uuid::from_u128(0xA);

    struct Log {
        location: LocationId,
        start: DateTime<Utc>,
        events: Vec<RecordedEvent>,
    }

    impl Log {
        fn new() -> Self {
            Self {
                location: LocationId::parse("locReport").unwrap(),
                start: "2026-03-16T09:00:00Z".parse().unwrap(),
                events: Vec::new(),
            }
        }

        fn contact(&self, phone: &str) -> Uuid {
            contact_id_for(&self.location, &PhoneNumber::parse(phone).unwrap())
        }

        /// Records `event` `minutes` after the start.
        fn at(&mut self, minutes: i64, event: impl Into<Event>) {
            let event = event.into();
            self.events.push(RecordedEvent {
                id: EventId::new(),
                stream: StreamId::for_uuid(
                    self.location.clone(),
                    AggregateKind::Contact,
                    Uuid::now_v7(),
                ),
                version: 1,
                position: self.events.len() as u64 + 1,
                event_type: event.event_type().to_owned(),
                schema_version: event.schema_version(),
                occurred_at: self.start + Duration::minutes(minutes),
                metadata: EventMetadata::new_correlation(),
                payload: event.encode(),
            });
        }

        fn inbound(&mut self, minutes: i64, phone: &str) {
            let event = InboundMessageReceived {
                message_id: Uuid::now_v7(),
                account_id: ACCOUNT,
                provider_message_id: format!("SM{minutes}"),
                from: phone.into(),
                to: None,
                body: "hello".into(),
                sender_name: None,
                received_at: self.start + Duration::minutes(minutes),
                attachments: Vec::new(),
                from_me: false,
                sender_lid: None,
            };
            self.at(minutes, event);
        }

        fn reply(&mut self, minutes: i64, phone: &str, user: &str) {
            let event = OutboundMessageRequested {
                message_id: Uuid::now_v7(),
                contact_id: self.contact(phone),
                ghl_message_id: None,
                ghl_user_id: Some(user.into()),
                body: "hi".into(),
                attachments: Vec::new(),
                to: None,
                ghl_contact_id: None,
            };
            self.at(minutes, event);
        }

        fn assign(&mut self, minutes: i64, phone: &str, user: &str, rule: &str, trigger: &str) {
            let event = ContactAssigned {
                contact_id: self.contact(phone),
                account_id: Some(ACCOUNT),
                user_id: user.into(),
                rule: rule.into(),
                reason: "scripted".into(),
                candidates: Vec::new(),
                trigger: Some(trigger.into()),
            };
            self.at(minutes, event);
        }
    }

    #[test]
    fn the_report_tells_response_times_workload_reassignments_and_the_unassigned() {
        let mut log = Log::new();
        // Ana answers her first contact in 4 minutes and her second in 10 (the second message
        // before her reply does not restart the clock); Ben answers his in 2.
        log.inbound(0, "+14155550001");
        log.assign(0, "+14155550001", "u_ana", "user#1", "new_contact");
        log.inbound(1, "+14155550001");
        log.reply(4, "+14155550001", "u_ana");
        log.inbound(10, "+14155550002");
        log.assign(10, "+14155550002", "u_ana", "user#1", "new_contact");
        log.reply(20, "+14155550002", "u_ana");
        log.inbound(30, "+14155550003");
        log.assign(30, "+14155550003", "u_ben", "user#1", "new_contact");
        log.reply(32, "+14155550003", "u_ben");
        // The second contact is taken from Ana for silence, the third by hand in GHL.
        log.assign(40, "+14155550002", "u_ben", "user#1", "owner_silent");
        log.assign(
            50,
            "+14155550003",
            "u_cleo",
            "ghl_owner",
            "returning_contact",
        );
        // Nobody could take the fourth.
        log.inbound(60, "+14155550004");
        let skipped = AssignmentSkipped {
            contact_id: log.contact("+14155550004"),
            account_id: Some(ACCOUNT),
            reason: "no rule yielded an available user".into(),
            candidates: Vec::new(),
            trigger: Some("new_contact".into()),
        };
        log.at(60, skipped);

        let report = report(&log.events, &log.location, log.start);
        assert_eq!(
            report.users["u_ana"],
            Responses {
                count: 2,
                total_seconds: 14 * 60
            }
        );
        assert_eq!(report.users["u_ana"].average_seconds(), Some(7 * 60));
        assert_eq!(report.users["u_ben"].average_seconds(), Some(2 * 60));
        assert_eq!(report.accounts[&ACCOUNT].count, 3);
        assert_eq!(
            report.accounts[&ACCOUNT].average_seconds(),
            Some(16 * 60 / 3)
        );
        assert_eq!(
            report.open,
            BTreeMap::from([
                ("u_ana".into(), 1),
                ("u_ben".into(), 1),
                ("u_cleo".into(), 1)
            ])
        );
        assert_eq!(
            report.reassignments,
            BTreeMap::from([
                ("chosen in GHL".into(), 1),
                ("owner did not reply in time".into(), 1)
            ])
        );
        assert_eq!(
            report.unassigned,
            BTreeMap::from([("no rule yielded an available user".into(), 1)])
        );

        // A window that starts after the first hour sees no responses nor reassignments.
        let later = report_since(&log, 61);
        assert!(later.users.is_empty() && later.reassignments.is_empty());
        assert_eq!(later.open.len(), 3, "ownership counts the whole log");
    }

    #[test]
    fn the_metrics_are_the_reports_figures_in_prometheus_text() {
        let mut log = Log::new();
        // Ana answers in 5 minutes; Ben's contact is taken from him by hand in GHL, then its
        // owner removed there and the contact left unassigned.
        log.inbound(0, "+14155550001");
        log.assign(0, "+14155550001", "u_ana", "user#1", "new_contact");
        log.reply(5, "+14155550001", "u_ana");
        log.inbound(10, "+14155550002");
        log.assign(10, "+14155550002", "u_ben", "user#1", "new_contact");
        log.assign(
            20,
            "+14155550002",
            "u_cleo",
            "ghl_owner",
            "returning_contact",
        );
        let removed = whatsnap_events::ContactOwnerChangedInGhl {
            contact_id: log.contact("+14155550002"),
            ghl_contact_id: "ghl2".into(),
            user_id: None,
            previous: Some("u_cleo".into()),
        };
        log.at(30, removed);
        let skipped = AssignmentSkipped {
            contact_id: log.contact("+14155550002"),
            account_id: Some(ACCOUNT),
            reason: "owner removed by hand in GHL (manual: respect): \"left\" alone".into(),
            candidates: Vec::new(),
            trigger: Some("returning_contact".into()),
        };
        log.at(31, skipped);

        let figures = report(&log.events, &log.location, DateTime::<Utc>::MIN_UTC);
        assert_eq!(figures.open, BTreeMap::from([("u_ana".into(), 1)]));
        let text = prometheus([(&log.location, &figures)]);
        let samples: Vec<&str> = text.lines().filter(|l| !l.starts_with('#')).collect();
        let account = ACCOUNT.to_string();
        assert_eq!(
            samples,
            [
                r#"whatsnap_assignment_user_first_response_seconds_sum{location="locReport",user="u_ana"} 300"#.to_owned(),
                r#"whatsnap_assignment_user_first_response_seconds_count{location="locReport",user="u_ana"} 1"#.to_owned(),
                format!(r#"whatsnap_assignment_account_first_response_seconds_sum{{location="locReport",account="{account}"}} 300"#),
                format!(r#"whatsnap_assignment_account_first_response_seconds_count{{location="locReport",account="{account}"}} 1"#),
                r#"whatsnap_assignment_open_contacts{location="locReport",user="u_ana"} 1"#.to_owned(),
                r#"whatsnap_assignment_reassignments_total{location="locReport",cause="chosen in GHL"} 1"#.to_owned(),
                r#"whatsnap_assignment_unassigned_contacts{location="locReport",reason="owner removed by hand in GHL (manual: respect): \"left\" alone"} 1"#.to_owned(),
            ]
        );
        for (name, kind) in [
            ("whatsnap_assignment_user_first_response_seconds", "summary"),
            (
                "whatsnap_assignment_account_first_response_seconds",
                "summary",
            ),
            ("whatsnap_assignment_open_contacts", "gauge"),
            ("whatsnap_assignment_reassignments_total", "counter"),
            ("whatsnap_assignment_unassigned_contacts", "gauge"),
        ] {
            assert!(
                text.lines().any(|l| l == format!("# TYPE {name} {kind}")),
                "{name} {kind}: {text}"
            );
        }
        // No location, no samples: every family is still described.
        let empty = prometheus([]);
        assert_eq!(empty.lines().filter(|l| l.starts_with("# TYPE")).count(), 5);
        assert!(empty.lines().all(|l| l.starts_with('#')));
    }

    fn report_since(log: &Log, minutes: i64) -> Report {
        report(
            &log.events,
            &log.location,
            log.start + Duration::minutes(minutes),
        )
    }
}
