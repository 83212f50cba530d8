//! A location's GHL users, kept as `GhlUserSynced` events in its stream `<location>.ghl.users`:
//! the candidates the assignment service picks owners from. The worker lists the users from
//! GHL after a location connects and then every `users_refresh`; [`changes`] says which events
//! that listing adds, so that a listing that changed nothing appends nothing.

use std::collections::BTreeMap;

use whatsnap_events::{AggregateKind, Event, GhlUserSynced, LocationId, StreamId};
use whatsnap_ghl::client::GhlUser;

/// The stream of a location's GHL users.
pub fn stream(location: &LocationId) -> StreamId {
    StreamId::new(location.clone(), AggregateKind::Ghl, "users").expect("a valid token")
}

/// The users as the stream last recorded them, by id.
pub type Known = BTreeMap<String, GhlUserSynced>;

pub fn evolve(mut known: Known, event: &Event) -> Known {
    if let Event::GhlUserSynced(user) = event {
        known.insert(user.user_id.clone(), user.clone());
    }
    known
}

/// The users of a location's stream, as an aggregate.
#[derive(Debug, Default)]
pub struct Users(pub Known);

impl whatsnap_eventstore::Aggregate for Users {
    fn evolve(self, event: &Event, _version: u64) -> Self {
        Self(evolve(self.0, event))
    }
}

/// A user as GHL listed it, in the event's shape.
pub fn synced(user: &GhlUser) -> GhlUserSynced {
    GhlUserSynced {
        user_id: user.id.clone(),
        name: user.name.clone(),
        email: user.email.clone().filter(|e| !e.is_empty()),
        role: user.role.clone().filter(|r| !r.is_empty()),
        deleted: user.deleted,
    }
}

/// The events that bring `known` in line with GHL's `listed` users: each user new or changed,
/// and each known user GHL no longer lists, as deleted. A user listed twice counts as its last
/// entry.
pub fn changes(known: &Known, listed: &[GhlUserSynced]) -> Vec<GhlUserSynced> {
    let mut latest: BTreeMap<&str, &GhlUserSynced> = BTreeMap::new();
    let mut order: Vec<&str> = Vec::new();
    for user in listed {
        if latest.insert(user.user_id.as_str(), user).is_none() {
            order.push(user.user_id.as_str());
        }
    }
    let mut events: Vec<GhlUserSynced> = order
        .into_iter()
        .map(|id| latest[id])
        .filter(|user| known.get(&user.user_id) != Some(*user))
        .cloned()
        .collect();
    events.extend(
        known
            .values()
            .filter(|user| !user.deleted && !latest.contains_key(user.user_id.as_str()))
            .map(|user| GhlUserSynced {
                deleted: true,
                ..user.clone()
            }),
    );
    events
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(id: &str, name: &str, deleted: bool) -> GhlUserSynced {
        GhlUserSynced {
            user_id: id.into(),
            name: name.into(),
            email: Some(format!("{id}@example.com")),
            role: Some("user".into()),
            deleted,
        }
    }

    fn known(users: &[GhlUserSynced]) -> Known {
        users
            .iter()
            .cloned()
            .map(Event::from)
            .fold(Known::new(), |known, event| evolve(known, &event))
    }

    #[test]
    fn a_first_listing_records_every_user() {
        let listed = [user("u1", "Ana", false), user("u2", "Bruno", false)];
        assert_eq!(changes(&Known::new(), &listed), listed);
    }

    #[test]
    fn a_listing_that_changed_nothing_records_nothing() {
        let listed = [user("u1", "Ana", false), user("u2", "Bruno", false)];
        assert_eq!(changes(&known(&listed), &listed), []);
    }

    #[test]
    fn only_new_and_changed_users_are_recorded() {
        let before = known(&[user("u1", "Ana", false), user("u2", "Bruno", false)]);
        let listed = [
            user("u1", "Ana", false),
            user("u2", "Bruno Souza", false),
            user("u3", "Carla", false),
        ];
        assert_eq!(
            changes(&before, &listed),
            [user("u2", "Bruno Souza", false), user("u3", "Carla", false)]
        );
    }

    #[test]
    fn a_user_ghl_no_longer_lists_is_recorded_deleted_once() {
        let before = known(&[user("u1", "Ana", false), user("u2", "Bruno", false)]);
        let listed = [user("u1", "Ana", false)];
        let events = changes(&before, &listed);
        assert_eq!(events, [user("u2", "Bruno", true)]);
        let after = events
            .into_iter()
            .map(Event::from)
            .fold(before, |known, event| evolve(known, &event));
        assert_eq!(changes(&after, &listed), []);
    }

    #[test]
    fn a_user_ghl_reports_deleted_is_recorded_deleted_and_can_come_back() {
        let before = known(&[user("u1", "Ana", false)]);
        assert_eq!(
            changes(&before, &[user("u1", "Ana", true)]),
            [user("u1", "Ana", true)]
        );
        let deleted = known(&[user("u1", "Ana", true)]);
        assert_eq!(
            changes(&deleted, &[user("u1", "Ana", false)]),
            [user("u1", "Ana", false)]
        );
    }

    #[test]
    fn a_user_listed_twice_counts_as_its_last_entry() {
        let before = known(&[user("u1", "Ana", false)]);
        let listed = [user("u1", "Ana", false), user("u1", "Ana", true)];
        assert_eq!(changes(&before, &listed), [user("u1", "Ana", true)]);
    }

    #[test]
    fn empty_email_and_role_from_ghl_are_none() {
        let listed = GhlUser {
            id: "u1".into(),
            name: "Ana".into(),
            email: Some(String::new()),
            role: None,
            deleted: false,
        };
        let event = synced(&listed);
        assert_eq!((event.email, event.role), (None, None));
    }
}
