//! Protection of the dashboard's forms against cross-site requests. The sign-in cookie is
//! `SameSite=None` so that the pages work inside GHL's iframe, which means a browser sends it
//! with a form another site posts; so every form carries a token bound to the sign-in, which
//! such a site cannot know, and every action checks it before anything else.
//!
//! The token is a hash of the sealed cookie: the cookie is `HttpOnly` and sealed with the
//! deployment's key (random each time a viewer signs in), so only a page of this dashboard,
//! rendered for this sign-in, has it; it changes when the viewer signs in again.

use axum::http::HeaderMap;
use base64::Engine as _;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::signin::{COOKIE_NAME, cookie};

/// The token for the sign-in a request carries; none without one.
pub fn token(headers: &HeaderMap) -> Option<String> {
    cookie(headers, COOKIE_NAME).map(|sealed| token_for(&sealed))
}

fn token_for(sealed_cookie: &str) -> String {
    let mut hash = Sha256::new();
    hash.update(b"whatsnap dashboard csrf v1\0");
    hash.update(sealed_cookie.as_bytes());
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(hash.finalize())
}

/// Whether `given` is the token of the sign-in the request carries.
pub fn verify(headers: &HeaderMap, given: &str) -> bool {
    match token(headers) {
        Some(expected) => expected.as_bytes().ct_eq(given.as_bytes()).into(),
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use axum::http::HeaderValue;
    use axum::http::header::COOKIE;

    use super::*;

    fn signed_in(value: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(
            COOKIE,
            HeaderValue::from_str(&format!("{COOKIE_NAME}={value}")).unwrap(),
        );
        headers
    }

    #[test]
    fn only_the_token_of_the_same_sign_in_passes() {
        let mine = signed_in("sealed-one");
        let token = token(&mine).unwrap();
        assert!(verify(&mine, &token));
        assert!(!verify(&signed_in("sealed-two"), &token));
        assert!(!verify(&mine, ""));
        assert!(!verify(&HeaderMap::new(), &token));
    }
}
