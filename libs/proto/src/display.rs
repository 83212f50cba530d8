//! How the API's answers read for people, shared by the operator CLI and the dashboard so both
//! say the same thing the same way.

use crate::assignment::v1 as assignment;
use crate::ghlsync::v1 as ghlsync;

/// The first block of an id, enough to tell ids apart on screen.
pub fn short(id: &str) -> &str {
    id.split('-').next().unwrap_or(id)
}

/// An RFC 3339 time as people read it, to the second: `2026-12-03 08:26:30`; anything else as
/// it is.
pub fn when(rfc3339: &str) -> String {
    match (rfc3339.get(..10), rfc3339.get(11..19)) {
        (Some(day), Some(time)) if rfc3339.as_bytes().get(10) == Some(&b'T') => {
            format!("{day} {time}")
        }
        _ => rfc3339.to_owned(),
    }
}

/// A user id as decisions show it: empty is "unassigned".
pub fn user_or_unassigned(user: &str) -> &str {
    match user {
        "" => "unassigned",
        user => user,
    }
}

/// Seconds as `4m05s`.
pub fn minutes(seconds: i64) -> String {
    format!("{}m{:02}s", seconds / 60, seconds % 60)
}

impl assignment::User {
    /// Whether the user can be assigned: `inactive`, `active` or `away until …`.
    pub fn availability(&self) -> String {
        match (self.active, self.away_until.as_str()) {
            (false, _) => "inactive".to_owned(),
            (true, "") => "active".to_owned(),
            (true, until) => format!("away until {until}"),
        }
    }
}

impl assignment::Decision {
    /// `assigned to u_ana` or `unassigned`.
    pub fn outcome(&self) -> String {
        match self.user_id.as_str() {
            "" => "unassigned".to_owned(),
            user => format!("assigned to {user}"),
        }
    }

    /// ` on ContactCreated`, or nothing when the trigger is unknown.
    pub fn on_trigger(&self) -> String {
        match self.trigger.as_str() {
            "" => String::new(),
            trigger => format!(" on {trigger}"),
        }
    }
}

impl assignment::Candidate {
    /// `chosen`, or `passed over: <why>`.
    pub fn verdict(&self) -> String {
        match self.passed_over.as_str() {
            "" => "chosen".to_owned(),
            why => format!("passed over: {why}"),
        }
    }
}

impl ghlsync::SyncStatusResponse {
    /// How whatsnap calls GHL for the location, or `not connected`.
    pub fn connection_text(&self) -> &str {
        match self.connection.as_str() {
            "" => "not connected",
            other => other,
        }
    }
}

impl ghlsync::SetAsideItem {
    /// ` (HTTP 403)`, or nothing when GHL answered without a status.
    pub fn http_text(&self) -> String {
        match self.http_status {
            0 => String::new(),
            code => format!(" (HTTP {code})"),
        }
    }
}
