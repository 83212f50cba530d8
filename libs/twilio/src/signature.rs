//! `X-Twilio-Signature`: base64 of HMAC-SHA1, keyed with the account's Auth Token, over the
//! full URL Twilio requested followed by every POST parameter (names sorted, each name's values
//! de-duplicated and sorted, `name + value` with no separator). A JSON body is not signed
//! itself: Twilio adds `bodySHA256=<hex sha256 of the body>` to the URL, and the URL is signed.
//! As Twilio's own SDKs do, a signature is accepted for the URL as given, with its default port
//! added when it names none, or with the port it names removed.

use std::collections::{BTreeMap, BTreeSet};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, Mac};
use sha2::Digest as _;
use subtle::ConstantTimeEq;
use url::Url;

/// Why a webhook was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    #[error("no X-Twilio-Signature header")]
    Missing,
    #[error("the X-Twilio-Signature does not match this request")]
    Mismatch,
    #[error("the JSON body does not match the bodySHA256 in the URL")]
    BodyHashMismatch,
    #[error("a JSON webhook without bodySHA256 in its URL")]
    NoBodyHash,
    #[error("the request URL {0:?} does not parse")]
    BadUrl(String),
}

/// The signature Twilio sends for `url` and form `params`.
pub fn sign(auth_token: &str, url: &str, params: &[(String, String)]) -> String {
    let mut by_name: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    for (name, value) in params {
        by_name.entry(name).or_default().insert(value);
    }
    let mut signed = url.to_owned();
    for (name, values) in by_name {
        for value in values {
            signed.push_str(name);
            signed.push_str(value);
        }
    }
    let mut mac = Hmac::<sha1::Sha1>::new_from_slice(auth_token.as_bytes())
        .expect("HMAC takes any key length");
    mac.update(signed.as_bytes());
    STANDARD.encode(mac.finalize().into_bytes())
}

/// The URL as given, with its scheme's default port added, and with its port removed.
fn url_variants(url: &str) -> Result<Vec<String>, SignatureError> {
    let parsed = Url::parse(url).map_err(|_| SignatureError::BadUrl(url.to_owned()))?;
    let mut variants = vec![url.to_owned()];
    let default_port = match parsed.scheme() {
        "https" => Some(443),
        "http" => Some(80),
        _ => None,
    };
    let host = parsed.host_str().unwrap_or_default();
    // Path, query and fragment exactly as written.
    let after_scheme = url.split_once("://").map_or("", |(_, rest)| rest);
    let rest = after_scheme
        .find(['/', '?', '#'])
        .map_or("", |at| &after_scheme[at..]);
    let userinfo = match (parsed.username(), parsed.password()) {
        ("", None) => String::new(),
        (user, None) => format!("{user}@"),
        (user, Some(password)) => format!("{user}:{password}@"),
    };
    let base = format!("{}://{userinfo}{host}", parsed.scheme());
    match (url_port_written(url, &parsed), default_port) {
        // Written with a port: also try without it.
        (Some(_), _) => variants.push(format!("{base}{rest}")),
        // Written without: also try with the default one.
        (None, Some(port)) => variants.push(format!("{base}:{port}{rest}")),
        (None, None) => {}
    }
    Ok(variants)
}

/// Whether the URL text itself names a port (url::Url forgets a default port written out).
fn url_port_written(url: &str, parsed: &Url) -> Option<u16> {
    let after_scheme = url.split_once("://").map(|(_, rest)| rest)?;
    let authority = after_scheme.split(['/', '?', '#']).next()?;
    let host_port = authority.rsplit('@').next()?;
    let port = host_port.rsplit_once(':')?.1;
    port.parse().ok().or(parsed.port())
}

fn matches(expected: &str, given: &str) -> bool {
    expected.as_bytes().ct_eq(given.as_bytes()).into()
}

/// Validates a form-encoded webhook: `url` is the full URL Twilio requested, `params` every
/// POST parameter received (Twilio adds parameters without notice: all of them are signed).
pub fn validate_form(
    auth_token: &str,
    url: &str,
    params: &[(String, String)],
    signature: Option<&str>,
) -> Result<(), SignatureError> {
    let signature = signature.ok_or(SignatureError::Missing)?;
    for variant in url_variants(url)? {
        if matches(&sign(auth_token, &variant, params), signature) {
            return Ok(());
        }
    }
    Err(SignatureError::Mismatch)
}

/// Validates a JSON webhook: the URL (which carries `bodySHA256`) is signed with no params, and
/// the body must hash to that value.
pub fn validate_json(
    auth_token: &str,
    url: &str,
    body: &[u8],
    signature: Option<&str>,
) -> Result<(), SignatureError> {
    validate_form(auth_token, url, &[], signature)?;
    let parsed = Url::parse(url).map_err(|_| SignatureError::BadUrl(url.to_owned()))?;
    let claimed = parsed
        .query_pairs()
        .find(|(k, _)| k == "bodySHA256")
        .map(|(_, v)| v.into_owned())
        .ok_or(SignatureError::NoBodyHash)?;
    let actual: String = sha2::Sha256::digest(body)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    if matches(&actual, &claimed.to_ascii_lowercase()) {
        Ok(())
    } else {
        Err(SignatureError::BodyHashMismatch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    /// The fixture shared by Twilio's Python, Node and Java SDK tests.
    fn official() -> Vec<(String, String)> {
        params(&[
            ("CallSid", "CA1234567890ABCDE"),
            ("Caller", "+14158675309"),
            ("Digits", "1234"),
            ("From", "+14158675309"),
            ("To", "+18005551212"),
        ])
    }

    const URL: &str = "https://mycompany.com/myapp.php?foo=1&bar=2";

    #[test]
    fn the_official_test_vector_is_reproduced() {
        assert_eq!(
            sign("12345", URL, &official()),
            "RSOYDt4T1cUTdK1PDd93/VVr8B8="
        );
        validate_form(
            "12345",
            URL,
            &official(),
            Some("RSOYDt4T1cUTdK1PDd93/VVr8B8="),
        )
        .unwrap();
    }

    #[test]
    fn a_wrong_token_a_changed_param_or_no_header_is_refused() {
        let good = sign("12345", URL, &official());
        assert_eq!(
            validate_form("54321", URL, &official(), Some(&good)),
            Err(SignatureError::Mismatch)
        );
        let mut tampered = official();
        tampered[2].1 = "9999".into();
        assert_eq!(
            validate_form("12345", URL, &tampered, Some(&good)),
            Err(SignatureError::Mismatch)
        );
        // A parameter Twilio did not send is not ignored either.
        let mut added = official();
        added.push(("Extra".into(), "x".into()));
        assert!(validate_form("12345", URL, &added, Some(&good)).is_err());
        assert_eq!(
            validate_form("12345", URL, &official(), None),
            Err(SignatureError::Missing)
        );
    }

    #[test]
    fn the_default_port_may_be_added_or_removed() {
        let signed_without = sign("12345", URL, &official());
        let with_port = "https://mycompany.com:443/myapp.php?foo=1&bar=2";
        validate_form("12345", with_port, &official(), Some(&signed_without)).unwrap();
        let signed_with = sign("12345", with_port, &official());
        validate_form("12345", URL, &official(), Some(&signed_with)).unwrap();
        let http = "http://mycompany.com/sms";
        validate_form(
            "12345",
            http,
            &[],
            Some(&sign("12345", "http://mycompany.com:80/sms", &[])),
        )
        .unwrap();
        // As in the SDKs, any port may be dropped; but a port signed is a port that must match.
        let on_8443 = "https://mycompany.com:8443/myapp.php?foo=1&bar=2";
        validate_form("12345", on_8443, &official(), Some(&signed_without)).unwrap();
        let signed_8443 = sign("12345", on_8443, &official());
        let on_9443 = "https://mycompany.com:9443/myapp.php?foo=1&bar=2";
        assert!(validate_form("12345", on_9443, &official(), Some(&signed_8443)).is_err());
    }

    #[test]
    fn repeated_params_are_deduplicated_and_sorted() {
        let repeated = params(&[
            ("MediaUrl", "b"),
            ("MediaUrl", "a"),
            ("MediaUrl", "b"),
            ("Body", "x"),
        ]);
        let expected = {
            let mut mac = Hmac::<sha1::Sha1>::new_from_slice(b"tok").unwrap();
            mac.update(b"https://h/pBodyxMediaUrlaMediaUrlb");
            STANDARD.encode(mac.finalize().into_bytes())
        };
        assert_eq!(sign("tok", "https://h/p", &repeated), expected);
    }

    #[test]
    fn a_json_body_is_checked_against_its_hash_in_the_url() {
        let body = br#"{"MessageSid":"SM1"}"#;
        let hash: String = sha2::Sha256::digest(body)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        let url = format!("https://h/status?bodySHA256={hash}");
        let signature = sign("tok", &url, &[]);
        validate_json("tok", &url, body, Some(&signature)).unwrap();
        assert_eq!(
            validate_json("tok", &url, br#"{"MessageSid":"SM2"}"#, Some(&signature)),
            Err(SignatureError::BodyHashMismatch)
        );
        let bare = "https://h/status";
        assert_eq!(
            validate_json("tok", bare, body, Some(&sign("tok", bare, &[]))),
            Err(SignatureError::NoBodyHash)
        );
    }
}
