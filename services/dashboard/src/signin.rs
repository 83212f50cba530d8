//! Who is looking at the dashboard, and which locations they may see: a signed-in viewer, kept in
//! a cookie sealed with the deployment's secret key (so the browser can neither read nor change
//! it) that expires by itself. Every page and action checks the location it touches against the
//! viewer's scope, on the server.

use std::fmt;

use axum::http::HeaderMap;
use axum::http::header::COOKIE;
use chrono::{DateTime, Duration, Utc};
use serde::{Deserialize, Serialize};
use whatsnap_secrets::{Sealed, SecretKey};

use crate::sso::UserContext;

/// The cookie that carries the viewer.
pub const COOKIE_NAME: &str = "whatsnap_session";

/// How long a sign-in lasts.
pub const LIFETIME: Duration = Duration::hours(8);

/// The locations a viewer may see and act on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Scope {
    /// These locations only (a GHL user in a sub-account, a location token).
    Locations { ids: Vec<String> },
    /// Every location of the deployment (an agency user, an admin token).
    All,
}

impl Scope {
    pub fn allows(&self, location: &str) -> bool {
        match self {
            Self::All => true,
            Self::Locations { ids } => ids.iter().any(|id| id == location),
        }
    }
}

/// A signed-in viewer.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Viewer {
    /// GHL's user id, or the API token's id.
    pub id: String,
    /// The name to greet them with.
    pub name: String,
    pub scope: Scope,
    /// Whether they may change things (a read-only token may not).
    pub can_write: bool,
    pub expires_at: DateTime<Utc>,
}

impl fmt::Debug for Viewer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Viewer")
            .field("id", &self.id)
            .field("scope", &self.scope)
            .field("can_write", &self.can_write)
            .finish_non_exhaustive()
    }
}

impl Viewer {
    /// The viewer a GHL user context opens: in a sub-account, that location; in the agency view,
    /// an agency admin sees every location, another agency user none (GHL gives no list).
    pub fn from_ghl(context: &UserContext, now: DateTime<Utc>) -> Result<Self, String> {
        let scope = match (&context.active_location, context.kind.as_str()) {
            (Some(location), _) if !location.trim().is_empty() => Scope::Locations {
                ids: vec![location.trim().to_owned()],
            },
            (_, "agency") if context.role == "admin" => Scope::All,
            _ => {
                return Err(
                    "open whatsnap from inside a sub-account: only agency admins see every location"
                        .into(),
                );
            }
        };
        Ok(Self {
            id: context.user_id.clone(),
            name: if context.user_name.trim().is_empty() {
                "GHL user".to_owned()
            } else {
                context.user_name.clone()
            },
            scope,
            can_write: true,
            expires_at: now + LIFETIME,
        })
    }

    /// The cookie's value: the viewer sealed with `key`.
    pub fn seal(&self, key: &SecretKey) -> String {
        let json = serde_json::to_string(self).expect("a viewer serializes");
        key.seal(&json).as_str().to_owned()
    }

    /// The viewer a request's cookie carries, when it opens with `key` and has not expired.
    pub fn from_request(headers: &HeaderMap, key: &SecretKey, now: DateTime<Utc>) -> Option<Self> {
        let sealed = cookie(headers, COOKIE_NAME)?;
        let opened = key.open(&Sealed::from_stored(sealed)).ok()?;
        let viewer: Viewer = serde_json::from_str(opened.expose()).ok()?;
        (viewer.expires_at > now).then_some(viewer)
    }

    /// The `Set-Cookie` header that signs the viewer in. `SameSite=None; Secure` lets the page
    /// work inside GHL's iframe; `secure` is off only for plain-HTTP local runs.
    pub fn set_cookie(&self, key: &SecretKey, secure: bool) -> String {
        let attributes = if secure {
            "; Secure; SameSite=None"
        } else {
            "; SameSite=Lax"
        };
        format!(
            "{COOKIE_NAME}={}; Path=/app; HttpOnly; Max-Age={}{attributes}",
            self.seal(key),
            LIFETIME.num_seconds()
        )
    }
}

/// The `Set-Cookie` header that signs out.
pub fn clear_cookie() -> String {
    format!("{COOKIE_NAME}=; Path=/app; HttpOnly; Max-Age=0")
}

/// The CSRF token of the viewer's sign-in, for the forms and scripts of its pages to send
/// back: the sign-in (viewer and expiry) sealed with the deployment's key, so another site can
/// neither read nor make one, and it stops working when the sign-in does.
pub fn csrf_token(viewer: &Viewer, key: &SecretKey) -> String {
    key.seal(&csrf_subject(viewer)).as_str().to_owned()
}

/// Whether `token` is the CSRF token of this viewer's sign-in.
pub fn check_csrf(viewer: &Viewer, key: &SecretKey, token: &str) -> bool {
    key.open(&Sealed::from_stored(token.trim().to_owned()))
        .is_ok_and(|opened| opened.expose() == csrf_subject(viewer))
}

fn csrf_subject(viewer: &Viewer) -> String {
    format!("csrf {} {}", viewer.id, viewer.expires_at.timestamp())
}

fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(key, _)| *key == name)
        .map(|(_, value)| value.to_owned())
}

#[cfg(test)]
mod tests {
    use axum::http::HeaderValue;
    use base64::Engine as _;

    use super::*;

    fn new_key() -> SecretKey {
        let bytes: [u8; 32] = rand::random();
        SecretKey::from_base64(&base64::engine::general_purpose::STANDARD.encode(bytes)).unwrap()
    }

    fn context(active_location: Option<&str>, kind: &str, role: &str) -> UserContext {
        serde_json::from_value(serde_json::json!({
            "userId": "u1", "companyId": "c1", "role": role, "type": kind,
            "userName": "Ana", "activeLocation": active_location,
        }))
        .unwrap()
    }

    fn request_with(cookie: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(COOKIE, HeaderValue::from_str(cookie).unwrap());
        headers
    }

    #[test]
    fn a_sub_account_user_sees_that_location_only() {
        let viewer =
            Viewer::from_ghl(&context(Some("loc-a"), "location", "user"), Utc::now()).unwrap();
        assert!(viewer.scope.allows("loc-a"));
        assert!(!viewer.scope.allows("loc-b"));
    }

    #[test]
    fn only_agency_admins_see_every_location() {
        let admin = Viewer::from_ghl(&context(None, "agency", "admin"), Utc::now()).unwrap();
        assert!(admin.scope.allows("anything"));
        assert!(Viewer::from_ghl(&context(None, "agency", "user"), Utc::now()).is_err());
    }

    #[test]
    fn a_csrf_token_holds_for_its_sign_in_only() {
        let key = new_key();
        let now = Utc::now();
        let viewer = Viewer::from_ghl(&context(Some("loc-a"), "location", "user"), now).unwrap();
        let token = csrf_token(&viewer, &key);
        assert!(check_csrf(&viewer, &key, &token));
        assert!(!check_csrf(&viewer, &new_key(), &token));
        assert!(!check_csrf(&viewer, &key, ""));
        let later = Viewer::from_ghl(
            &context(Some("loc-a"), "location", "user"),
            now + Duration::minutes(5),
        )
        .unwrap();
        assert!(!check_csrf(&later, &key, &token), "another sign-in");
    }

    #[test]
    fn the_cookie_opens_only_with_the_key_and_until_it_expires() {
        let key = new_key();
        let now = Utc::now();
        let viewer = Viewer::from_ghl(&context(Some("loc-a"), "location", "user"), now).unwrap();
        let cookie = format!("other=1; {COOKIE_NAME}={}", viewer.seal(&key));
        assert_eq!(
            Viewer::from_request(&request_with(&cookie), &key, now),
            Some(viewer.clone())
        );
        assert_eq!(
            Viewer::from_request(&request_with(&cookie), &new_key(), now),
            None
        );
        assert_eq!(
            Viewer::from_request(&request_with(&cookie), &key, now + LIFETIME),
            None
        );
        let forged = format!("{COOKIE_NAME}={}", r#"{"id":"x","scope":{"kind":"all"}}"#);
        assert_eq!(
            Viewer::from_request(&request_with(&forged), &key, now),
            None
        );
    }
}
