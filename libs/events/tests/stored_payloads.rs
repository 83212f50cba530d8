//! Every event ever written must still decode. `tests/fixtures/` keeps one stored payload of each
//! event type at each schema version it has had (`<Type>.v<N>.json`); new schema versions add
//! files, nobody edits or removes one.

use std::collections::BTreeSet;
use std::path::Path;

use whatsnap_events::{Event, InboundMessageReceived};

fn fixtures() -> Vec<(String, u32, Vec<u8>)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let mut out = Vec::new();
    for entry in std::fs::read_dir(&dir).expect("fixtures directory") {
        let path = entry.expect("fixture entry").path();
        let name = path.file_name().unwrap().to_str().unwrap().to_owned();
        let (event_type, rest) = name.split_once(".v").expect("<Type>.v<N>.json");
        let version: u32 = rest.trim_end_matches(".json").parse().expect("version");
        out.push((
            event_type.to_owned(),
            version,
            std::fs::read(&path).unwrap(),
        ));
    }
    out
}

#[test]
fn every_stored_payload_of_every_schema_version_still_decodes() {
    let fixtures = fixtures();
    for (event_type, version, payload) in &fixtures {
        let event = Event::decode(event_type, *version, payload)
            .unwrap_or_else(|e| panic!("{event_type}.v{version}.json: {e}"));
        assert_eq!(event.event_type(), event_type);
    }
    // And every version of every type has its stored sample.
    let have: BTreeSet<(String, u32)> = fixtures.into_iter().map(|(t, v, _)| (t, v)).collect();
    for (event_type, current) in Event::TYPES {
        for version in 1..=*current {
            assert!(
                have.contains(&(event_type.to_string(), version)),
                "no stored sample tests/fixtures/{event_type}.v{version}.json"
            );
        }
    }
}

#[test]
fn an_inbound_message_stored_before_attachments_existed_decodes_with_none() {
    // InboundMessageReceived v1 was first written without `attachments`; the field was added
    // later with a default, so the stored payload decodes unchanged.
    let stored = std::fs::read(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/InboundMessageReceived.v1.json"),
    )
    .unwrap();
    assert!(!String::from_utf8_lossy(&stored).contains("attachments"));
    let Event::InboundMessageReceived(InboundMessageReceived {
        body, attachments, ..
    }) = Event::decode("InboundMessageReceived", 1, &stored).unwrap()
    else {
        panic!("wrong variant");
    };
    assert_eq!(body, "Hi, is this open today?");
    assert!(attachments.is_empty());
}

#[test]
fn a_contact_created_before_its_creation_carried_a_tag_decodes_with_none() {
    // ContactCreated v1 was first written without `tag` (a `ContactTagged` followed it); the
    // field was added later with a default, so the stored payload decodes unchanged.
    let stored = std::fs::read(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/ContactCreated.v1.json"),
    )
    .unwrap();
    assert!(!String::from_utf8_lossy(&stored).contains("\"tag\""));
    let Event::ContactCreated(created) = Event::decode("ContactCreated", 1, &stored).unwrap()
    else {
        panic!("wrong variant");
    };
    assert_eq!(created.phone, "+14155550100");
    assert_eq!(created.tag, None);
    assert!(created.tagged().is_none());
}
