//! The contact aggregate: pure `decide` and `evolve`.

use std::collections::BTreeSet;

use uuid::Uuid;
use whatsnap_events::{
    AccountKind, ContactCreated, ContactTagged, ContactUntagged, Event, InboundMessageReceived,
    PhoneNumber, TagSource,
};

#[derive(Debug, Clone, Default)]
pub struct ContactState {
    pub exists: bool,
    /// Its personal data was erased (its key destroyed).
    pub erased: bool,
    pub tags: BTreeSet<String>,
    pub version: u64,
}

impl whatsnap_eventstore::Aggregate for ContactState {
    fn evolve(self, event: &Event, version: u64) -> Self {
        evolve(self, event, version)
    }
}

pub fn evolve(mut state: ContactState, event: &Event, version: u64) -> ContactState {
    state.version = version;
    match event {
        Event::ContactCreated(e) => {
            state.exists = true;
            state.tags.extend(e.tag.clone());
        }
        Event::ContactErased(_) => state.erased = true,
        Event::ContactTagged(e) => {
            state.tags.insert(e.tag.clone());
        }
        Event::ContactUntagged(e) => {
            state.tags.remove(&e.tag);
        }
        _ => {}
    }
    state
}

/// An operator asks to erase the contact's personal data: recorded once; a contact never
/// created is refused.
pub fn decide_erase(
    state: &ContactState,
    contact_id: Uuid,
    requested_by: Option<String>,
) -> Result<Option<Event>, String> {
    if !state.exists {
        return Err("no such contact".into());
    }
    if state.erased {
        return Ok(None);
    }
    Ok(Some(Event::from(whatsnap_events::ContactErased {
        contact_id,
        requested_by,
    })))
}

/// The contact's tags, oldest first by when each was (last) added: what the route rule reads.
pub fn tags_by_recency<'a>(history: impl IntoIterator<Item = &'a Event>) -> Vec<String> {
    let mut tags: Vec<String> = Vec::new();
    for event in history {
        match event {
            Event::ContactCreated(ContactCreated { tag: Some(tag), .. })
            | Event::ContactTagged(ContactTagged { tag, .. }) => {
                tags.retain(|t| t != tag);
                tags.push(tag.clone());
            }
            Event::ContactUntagged(e) => tags.retain(|t| t != &e.tag),
            _ => {}
        }
    }
    tags
}

/// GHL reported the contact's whole tag list: add what is new, remove what is gone, in GHL's
/// order (so the last new account tag is the most recent).
pub fn decide_ghl_tags(state: &ContactState, contact_id: Uuid, ghl_tags: &[String]) -> Vec<Event> {
    let wanted: BTreeSet<&str> = ghl_tags
        .iter()
        .map(|t| t.trim())
        .filter(|t| !t.is_empty())
        .collect();
    let mut events = Vec::new();
    let mut seen = BTreeSet::new();
    for tag in ghl_tags.iter().map(|t| t.trim()).filter(|t| !t.is_empty()) {
        if !state.tags.contains(tag) && seen.insert(tag) {
            events.push(Event::from(ContactTagged {
                contact_id,
                tag: tag.to_owned(),
                source: TagSource::Ghl,
            }));
        }
    }
    for tag in &state.tags {
        if !wanted.contains(tag.as_str()) {
            events.push(Event::from(ContactUntagged {
                contact_id,
                tag: tag.clone(),
                source: TagSource::Ghl,
            }));
        }
    }
    events
}

/// A tag added or removed by hand: nothing to do when the contact already is as asked.
pub fn decide_tag(
    state: &ContactState,
    contact_id: Uuid,
    tag: &str,
    remove: bool,
) -> Result<Option<Event>, String> {
    if !state.exists {
        return Err("no such contact".to_owned());
    }
    let tag = tag.trim();
    if tag.is_empty() || tag.len() > 100 {
        return Err("a tag has 1 to 100 characters".to_owned());
    }
    let has = state.tags.contains(tag);
    Ok(match (remove, has) {
        (false, false) => Some(Event::from(ContactTagged {
            contact_id,
            tag: tag.to_owned(),
            source: TagSource::Manual,
        })),
        (true, true) => Some(Event::from(ContactUntagged {
            contact_id,
            tag: tag.to_owned(),
            source: TagSource::Manual,
        })),
        _ => None,
    })
}

/// A message arrived from this contact's phone on an account with `tag`: create the contact if
/// it does not exist, with the account's tag (one event), and tag an existing contact with it if
/// it lacks it.
pub fn decide_on_inbound(
    state: &ContactState,
    contact_id: Uuid,
    phone: &PhoneNumber,
    message: &InboundMessageReceived,
    tag: &str,
    platform: Option<AccountKind>,
) -> Vec<Event> {
    let mut events = Vec::new();
    if !state.exists {
        events.push(Event::from(ContactCreated {
            contact_id,
            phone: phone.to_string(),
            name: message.sender_name.clone(),
            first_account_id: Some(message.account_id),
            platform,
            tag: Some(tag.to_owned()),
        }));
    } else if !state.tags.contains(tag) {
        events.push(Event::from(ContactTagged {
            contact_id,
            tag: tag.to_owned(),
            source: TagSource::Account,
        }));
    }
    events
}

#[cfg(test)]
mod tests {
    use chrono::Utc;

    use super::*;

    fn message() -> InboundMessageReceived {
        InboundMessageReceived {
            message_id: Uuid::now_v7(),
            account_id: Uuid::now_v7(),
            provider_message_id: "SM1".into(),
            from: "+14155550100".into(),
            to: None,
            body: "hi".into(),
            sender_name: Some("Ana".into()),
            received_at: Utc::now(),
            attachments: Vec::new(),
            from_me: false,
            sender_lid: None,
        }
    }

    #[test]
    fn ghls_tag_list_is_turned_into_the_changes_it_implies() {
        let id = Uuid::now_v7();
        let mut state = ContactState {
            exists: true,
            ..ContactState::default()
        };
        state.tags.insert("whatsnap-account-a".into());
        state.tags.insert("vip".into());
        let list = [
            "vip".to_string(),
            "whatsnap-account-b".into(),
            " ".into(),
            "vip".into(),
        ];
        let events = decide_ghl_tags(&state, id, &list);
        assert!(
            matches!(&events[..], [Event::ContactTagged(added), Event::ContactUntagged(gone)]
            if added.tag == "whatsnap-account-b" && gone.tag == "whatsnap-account-a"
                && added.source == TagSource::Ghl)
        );
        let same = ["whatsnap-account-a".to_string(), "vip".into()];
        assert!(decide_ghl_tags(&state, id, &same).is_empty());
    }

    #[test]
    fn given_no_contact_when_a_message_arrives_then_it_is_created_and_tagged_in_one_event() {
        let phone = PhoneNumber::parse("+14155550100").unwrap();
        let id = Uuid::now_v7();
        let events = decide_on_inbound(
            &ContactState::default(),
            id,
            &phone,
            &message(),
            "whatsnap-account-a",
            None,
        );
        assert!(matches!(&events[..], [Event::ContactCreated(c)]
            if c.name.as_deref() == Some("Ana") && c.tag.as_deref() == Some("whatsnap-account-a")));
        let state = evolve(ContactState::default(), &events[0], 1);
        assert!(state.exists && state.tags.contains("whatsnap-account-a"));
        assert_eq!(tags_by_recency(&events), ["whatsnap-account-a"]);
    }

    #[test]
    fn a_contact_created_before_its_creation_carried_the_tag_is_tagged_by_the_event_after() {
        let id = Uuid::now_v7();
        let history = [
            Event::from(ContactCreated {
                contact_id: id,
                phone: "+14155550100".into(),
                name: None,
                first_account_id: None,
                platform: None,
                tag: None,
            }),
            Event::from(ContactTagged {
                contact_id: id,
                tag: "whatsnap-account-a".into(),
                source: TagSource::Account,
            }),
            Event::from(ContactTagged {
                contact_id: id,
                tag: "whatsnap-account-b".into(),
                source: TagSource::Ghl,
            }),
        ];
        let state = history
            .iter()
            .zip(1..)
            .fold(ContactState::default(), |state, (event, version)| {
                evolve(state, event, version)
            });
        assert_eq!(
            state.tags.iter().collect::<Vec<_>>(),
            ["whatsnap-account-a", "whatsnap-account-b"]
        );
        assert_eq!(
            tags_by_recency(&history),
            ["whatsnap-account-a", "whatsnap-account-b"]
        );
    }

    #[test]
    fn given_a_tagged_contact_when_another_message_arrives_then_nothing_changes() {
        let phone = PhoneNumber::parse("+14155550100").unwrap();
        let id = Uuid::now_v7();
        let mut state = ContactState::default();
        for (version, event) in decide_on_inbound(&state.clone(), id, &phone, &message(), "t", None)
            .iter()
            .enumerate()
        {
            state = evolve(state, event, version as u64 + 1);
        }
        assert!(decide_on_inbound(&state, id, &phone, &message(), "t", None).is_empty());
        let other = decide_on_inbound(&state, id, &phone, &message(), "u", None);
        assert!(matches!(&other[..], [Event::ContactTagged(t)] if t.tag == "u"));
    }
}
