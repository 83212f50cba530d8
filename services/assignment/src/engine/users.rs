//! The location's GHL users as assignment sees them: who they are, and when they can take a
//! contact.

use chrono::{DateTime, Utc};
use chrono_tz::Tz;

use super::rules::{RulesError, UserId};
use super::schedule::{Openness, Schedule};

/// A period away; `until` is when the user is back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutOfOffice {
    pub from: DateTime<Utc>,
    pub until: DateTime<Utc>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Availability {
    /// `None`: no working hours are set, so the user can take contacts at any time.
    pub working_hours: Option<Schedule>,
    pub out_of_office: Option<OutOfOffice>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    pub id: UserId,
    pub name: String,
    /// Deleted in GHL: never chosen again.
    pub deleted: bool,
    /// Deactivated (in GHL or in whatsnap): never chosen while inactive.
    pub active: bool,
    pub availability: Availability,
}

impl User {
    /// An active user with no working hours and no time away.
    pub fn new(id: impl Into<UserId>, name: impl Into<String>) -> Self {
        Self {
            id: id.into(),
            name: name.into(),
            deleted: false,
            active: true,
            availability: Availability::default(),
        }
    }

    /// A user as GHL last reported them; availability is whatsnap's own and starts empty.
    pub fn from_synced(user: &whatsnap_events::GhlUserSynced) -> Option<Self> {
        Some(Self {
            id: UserId::parse(&user.user_id)?,
            name: user.name.clone(),
            deleted: user.deleted,
            active: !user.deleted,
            availability: Availability::default(),
        })
    }

    fn time_zone(&self) -> Option<Tz> {
        self.availability
            .working_hours
            .as_ref()
            .map(|s| s.time_zone)
    }

    /// Why the user cannot own a contact at all at `now` (deleted, inactive, out of office), or
    /// `None`. Working hours and capacity are not part of it: an owner keeps their contacts
    /// overnight and however many they have.
    pub fn invalid_reason(&self, now: DateTime<Utc>) -> Option<String> {
        if self.deleted {
            return Some("deleted in GHL".to_owned());
        }
        if !self.active {
            return Some("inactive".to_owned());
        }
        match &self.availability.out_of_office {
            Some(away) if away.from <= now && now < away.until => Some(format!(
                "out of office until {}",
                self.local_time(away.until)
            )),
            _ => None,
        }
    }

    /// Why the user is outside their working hours at `now`, or `None`.
    pub fn outside_working_hours(&self, now: DateTime<Utc>) -> Option<String> {
        match self.availability.working_hours.as_ref()?.at(now) {
            Openness::Open => None,
            Openness::Closed(local) => Some(format!("outside working hours ({local})")),
            Openness::Holiday(date) => Some(format!("on holiday ({date})")),
        }
    }

    /// `2026-03-10 09:00 Europe/Madrid`, or UTC for a user without a time zone.
    fn local_time(&self, at: DateTime<Utc>) -> String {
        match self.time_zone() {
            Some(tz) => format!(
                "{} {}",
                at.with_timezone(&tz).format("%Y-%m-%d %H:%M"),
                tz.name()
            ),
            None => format!("{} UTC", at.format("%Y-%m-%d %H:%M")),
        }
    }
}

/// The availability a `UserAvailabilityChanged` sets, and whether the user is active; the error
/// names the bad field.
pub fn availability_from(
    changed: &whatsnap_events::UserAvailabilityChanged,
) -> Result<(Availability, bool), RulesError> {
    let bad = |field: &str, problem: String| RulesError {
        field: field.to_owned(),
        problem,
    };
    let working_hours = if changed.working_hours.is_empty() {
        None
    } else {
        let name = changed
            .time_zone
            .as_deref()
            .ok_or_else(|| bad("time_zone", "required with working_hours".to_owned()))?;
        let time_zone: Tz = name
            .parse()
            .map_err(|_| bad("time_zone", format!("`{name}` is not an IANA time zone")))?;
        let value = serde_json::to_value(&changed.working_hours).expect("strings serialise");
        let week = super::rules::weekly_hours(&value, "working_hours")?;
        Some(Schedule::new(time_zone, week))
    };
    let out_of_office = match &changed.out_of_office {
        Some(away) if away.until <= away.from => {
            return Err(bad(
                "out_of_office",
                "`until` must be after `from`".to_owned(),
            ));
        }
        Some(away) => Some(OutOfOffice {
            from: away.from,
            until: away.until,
        }),
        None => None,
    };
    Ok((
        Availability {
            working_hours,
            out_of_office,
        },
        changed.active,
    ))
}
