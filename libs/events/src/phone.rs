use std::collections::HashMap;
use std::fmt;
use std::sync::{LazyLock, Mutex};

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::ids::LocationId;

/// A phone number in E.164 (`+14155550100`), parsed and validated by libphonenumber's rules.
/// `Display` gives the number itself, for the third parties that need it; `Debug` and
/// [`PhoneNumber::masked`] hide it, for logs and error texts.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct PhoneNumber(String);

/// Its text names the refused input masked: an error text never carries a number.
#[derive(Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "{} is not a valid phone number: {reason}",
    whatsnap_secrets::mask::phone(input)
)]
pub struct PhoneError {
    pub input: String,
    pub reason: &'static str,
}

impl PhoneNumber {
    /// Parses a number written with its country code (`+1 415 555 0100`, `+55 11 99999-0000`);
    /// WhatsApp JIDs (`5511999990000@s.whatsapp.net`) count as written with it.
    pub fn parse(input: &str) -> Result<Self, PhoneError> {
        let error = |reason| PhoneError {
            input: input.to_owned(),
            reason,
        };
        let trimmed = input.trim();
        let local = trimmed.split('@').next().unwrap_or_default();
        let with_plus = if local.starts_with('+') {
            local.to_owned()
        } else if !local.is_empty()
            && local.bytes().all(|b| b.is_ascii_digit())
            && trimmed.contains('@')
        {
            format!("+{local}")
        } else {
            local.to_owned()
        };
        if !with_plus.starts_with('+') {
            return Err(error("write it with its country code, e.g. +14155550100"));
        }
        canonical(&with_plus).map(Self).map_err(error)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The number for a log line or an error text: `+1••••••••00`.
    pub fn masked(&self) -> whatsnap_secrets::mask::MaskedPhone<'_> {
        whatsnap_secrets::mask::phone(&self.0)
    }
}

/// How many numbers [`canonical`] remembers before it starts over.
const REMEMBERED: usize = 10_000;

/// A number written with `+` and its country code as E.164, or why it is none. libphonenumber
/// takes tens of microseconds a number, and the same numbers come back all the time (every
/// message names its sender, and a rebuild reads each message's sender in several read
/// models): the answers for the last few thousand are kept.
fn canonical(with_plus: &str) -> Result<String, &'static str> {
    type Answers = HashMap<String, Result<String, &'static str>>;
    static KNOWN: LazyLock<Mutex<Answers>> = LazyLock::new(Mutex::default);
    if let Some(answer) = KNOWN.lock().expect("phone numbers lock").get(with_plus) {
        return answer.clone();
    }
    let answer = to_e164(with_plus).and_then(|e164| {
        // libphonenumber drops a national trunk prefix and carrier code written after the
        // country code (`+55 (0 99 …`), which can leave digits that are no number once written
        // on their own: such input names no number this service could send to.
        match to_e164(&e164) {
            Ok(again) if again == e164 => Ok(e164),
            _ => Err(
                "without its trunk prefix and carrier code it is no number in its country's plan",
            ),
        }
    });
    let mut known = KNOWN.lock().expect("phone numbers lock");
    if known.len() >= REMEMBERED {
        known.clear();
    }
    known.insert(with_plus.to_owned(), answer.clone());
    answer
}

/// A number written with `+` and its country code, validated and written as E.164.
fn to_e164(with_plus: &str) -> Result<String, &'static str> {
    let parsed = phonenumber::parse(None, with_plus).map_err(|_| "it does not parse")?;
    if !phonenumber::is_valid(&parsed) {
        return Err("no such number exists in its country's numbering plan");
    }
    Ok(parsed.format().mode(phonenumber::Mode::E164).to_string())
}

impl fmt::Debug for PhoneNumber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PhoneNumber({})", self.masked())
    }
}

impl fmt::Debug for PhoneError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PhoneError({self})")
    }
}

impl TryFrom<String> for PhoneNumber {
    type Error = PhoneError;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::parse(&value)
    }
}

impl From<PhoneNumber> for String {
    fn from(value: PhoneNumber) -> Self {
        value.0
    }
}

impl fmt::Display for PhoneNumber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Namespace of whatsnap's name-based (v5) ids.
const NAMESPACE: Uuid = Uuid::from_u128(0x6f0e_5d2a_8c1b_4e7a_9a3d_2b1c_0f4e_5a6b);

/// The id of the contact with this phone number in this location. Derived, not allocated, so
/// that finding or creating a contact is one conditional append, race-free across processes.
pub fn contact_id_for(location: &LocationId, phone: &PhoneNumber) -> Uuid {
    Uuid::new_v5(
        &NAMESPACE,
        format!("contact|{location}|{}", phone.as_str()).as_bytes(),
    )
}

/// The id of a reply GHL asked whatsnap to deliver, from GHL's message id: the same Delivery URL
/// call twice names the same message, so it is sent once.
pub fn outbound_message_id_for(location: &LocationId, ghl_message_id: &str) -> Uuid {
    Uuid::new_v5(
        &NAMESPACE,
        format!("outbound|{location}|{ghl_message_id}").as_bytes(),
    )
}

/// The id of the message a provider delivered to an account: the same webhook delivered twice
/// names the same message, so it is recorded once.
pub fn inbound_message_id_for(account_id: Uuid, provider_message_id: &str) -> Uuid {
    Uuid::new_v5(
        &NAMESPACE,
        format!("inbound|{account_id}|{provider_message_id}").as_bytes(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_are_normalised_to_e164() {
        for (input, e164) in [
            ("+1 415 555 0100", "+14155550100"),
            ("+1 (415) 555-0100", "+14155550100"),
            ("+55 11 99999-0000", "+5511999990000"),
            ("5511999990000@s.whatsapp.net", "+5511999990000"),
        ] {
            // The second time from what was remembered of the first.
            for _ in 0..2 {
                assert_eq!(PhoneNumber::parse(input).unwrap().as_str(), e164, "{input}");
            }
        }
    }

    #[test]
    fn invalid_numbers_are_refused_with_a_reason() {
        for input in [
            "",
            "4155550100",
            "+1 000",
            "hello",
            "+999 1234",
            // Valid only with its trunk prefix and carrier code, which E.164 drops.
            "+55   (09990-0055   (09-90",
        ] {
            let err = PhoneNumber::parse(input).unwrap_err();
            assert!(!err.reason.is_empty(), "{input}");
            assert_eq!(PhoneNumber::parse(input).unwrap_err(), err, "{input}");
        }
    }

    #[test]
    fn the_same_phone_in_the_same_location_is_the_same_contact() {
        let location = LocationId::parse("loc").unwrap();
        let other = LocationId::parse("other").unwrap();
        let a = PhoneNumber::parse("+1 415 555 0100").unwrap();
        let b = PhoneNumber::parse("+14155550100").unwrap();
        assert_eq!(contact_id_for(&location, &a), contact_id_for(&location, &b));
        assert_ne!(contact_id_for(&location, &a), contact_id_for(&other, &a));
    }
}
