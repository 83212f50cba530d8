//! The HS256 JSON Web Token Evolution puts on its webhooks when the instance's webhook headers
//! carry a `jwt_key`: `Authorization: Bearer <JWT {iat, exp: iat + 600, app: "evolution",
//! action: "webhook"}>`, signed with the key's UTF-8 bytes (`webhook.controller.ts`,
//! connectors.md §2.2). Only verifying is needed here, and only HS256, so it is written out with
//! `hmac`/`sha2` rather than pulling in a general JWT library.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, Utc};
use hmac::{Hmac, Mac};
use serde::Deserialize;
use sha2::Sha256;

/// How far whatsnap's clock may be behind Evolution's when checking `exp` and `iat`.
pub const CLOCK_LEEWAY_SECS: i64 = 30;

/// Why a webhook's bearer token was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JwtError {
    #[error("the bearer token is not a JWT")]
    Malformed,
    #[error("the bearer token is signed with {0}, not HS256")]
    WrongAlgorithm(String),
    #[error("the bearer token's signature does not match the configured jwt_key")]
    BadSignature,
    #[error("the bearer token expired at {0}")]
    Expired(DateTime<Utc>),
    #[error("the bearer token was issued in the future")]
    NotYetValid,
    #[error("the bearer token is not an Evolution webhook token (app {app:?}, action {action:?})")]
    WrongPurpose {
        app: Option<String>,
        action: Option<String>,
    },
}

#[derive(Deserialize)]
struct Header {
    alg: String,
}

#[derive(Deserialize)]
struct Claims {
    exp: Option<i64>,
    iat: Option<i64>,
    app: Option<String>,
    action: Option<String>,
}

/// Checks `token` (without the `Bearer ` prefix) against `key` at `now`: HS256, a valid
/// signature (compared in constant time), not expired, and issued by Evolution for a webhook.
pub fn verify_webhook_token(token: &str, key: &str, now: DateTime<Utc>) -> Result<(), JwtError> {
    let mut parts = token.trim().split('.');
    let (Some(header_part), Some(payload), Some(signature), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(JwtError::Malformed);
    };
    let decode = |part: &str| {
        URL_SAFE_NO_PAD
            .decode(part)
            .map_err(|_| JwtError::Malformed)
    };
    let header: Header =
        serde_json::from_slice(&decode(header_part)?).map_err(|_| JwtError::Malformed)?;
    if header.alg != "HS256" {
        return Err(JwtError::WrongAlgorithm(header.alg));
    }
    let signature = decode(signature)?;
    let mut mac =
        Hmac::<Sha256>::new_from_slice(key.as_bytes()).expect("HMAC accepts keys of any length");
    mac.update(format!("{header_part}.{payload}").as_bytes());
    mac.verify_slice(&signature)
        .map_err(|_| JwtError::BadSignature)?;
    let claims: Claims =
        serde_json::from_slice(&decode(payload)?).map_err(|_| JwtError::Malformed)?;
    let now = now.timestamp();
    let Some(exp) = claims.exp else {
        return Err(JwtError::Malformed);
    };
    if now > exp + CLOCK_LEEWAY_SECS {
        return Err(JwtError::Expired(
            DateTime::from_timestamp(exp, 0).unwrap_or_default(),
        ));
    }
    if claims.iat.is_some_and(|iat| iat > now + CLOCK_LEEWAY_SECS) {
        return Err(JwtError::NotYetValid);
    }
    if claims.app.as_deref() != Some("evolution") || claims.action.as_deref() != Some("webhook") {
        return Err(JwtError::WrongPurpose {
            app: claims.app,
            action: claims.action,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A token made as `jsonwebtoken.sign(payload, key, {algorithm: 'HS256'})` makes it.
    fn sign(payload: &serde_json::Value, key: &str) -> String {
        let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"HS256","typ":"JWT"}"#);
        let payload = URL_SAFE_NO_PAD.encode(payload.to_string());
        let mut mac = Hmac::<Sha256>::new_from_slice(key.as_bytes()).unwrap();
        mac.update(format!("{header}.{payload}").as_bytes());
        let signature = URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes());
        format!("{header}.{payload}.{signature}")
    }

    fn now() -> DateTime<Utc> {
        DateTime::from_timestamp(1_767_000_000, 0).unwrap()
    }

    fn claims(iat: i64) -> serde_json::Value {
        serde_json::json!({"iat": iat, "exp": iat + 600, "app": "evolution", "action": "webhook"})
    }

    #[test]
    fn a_token_evolution_signed_with_the_key_is_accepted() {
        let token = sign(&claims(now().timestamp() - 5), "the-jwt-key");
        assert_eq!(verify_webhook_token(&token, "the-jwt-key", now()), Ok(()));
    }

    #[test]
    fn a_token_signed_with_another_key_is_refused() {
        let token = sign(&claims(now().timestamp()), "someone-elses-key");
        assert_eq!(
            verify_webhook_token(&token, "the-jwt-key", now()),
            Err(JwtError::BadSignature)
        );
    }

    #[test]
    fn a_token_whose_claims_were_changed_after_signing_is_refused() {
        let token = sign(&claims(now().timestamp() - 10_000), "the-jwt-key");
        let mut parts: Vec<String> = token.split('.').map(str::to_owned).collect();
        parts[1] = URL_SAFE_NO_PAD.encode(claims(now().timestamp()).to_string());
        assert_eq!(
            verify_webhook_token(&parts.join("."), "the-jwt-key", now()),
            Err(JwtError::BadSignature)
        );
    }

    #[test]
    fn an_expired_token_is_refused() {
        let token = sign(&claims(now().timestamp() - 700), "the-jwt-key");
        assert!(matches!(
            verify_webhook_token(&token, "the-jwt-key", now()),
            Err(JwtError::Expired(_))
        ));
    }

    #[test]
    fn an_unsigned_token_is_refused() {
        let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"none","typ":"JWT"}"#);
        let payload = URL_SAFE_NO_PAD.encode(claims(now().timestamp()).to_string());
        let token = format!("{header}.{payload}.");
        assert_eq!(
            verify_webhook_token(&token, "the-jwt-key", now()),
            Err(JwtError::WrongAlgorithm("none".into()))
        );
    }

    #[test]
    fn a_token_for_another_purpose_is_refused() {
        let payload = serde_json::json!({
            "iat": now().timestamp(), "exp": now().timestamp() + 600,
            "app": "evolution", "action": "login",
        });
        let token = sign(&payload, "the-jwt-key");
        assert!(matches!(
            verify_webhook_token(&token, "the-jwt-key", now()),
            Err(JwtError::WrongPurpose { .. })
        ));
    }

    #[test]
    fn garbage_is_malformed() {
        for token in ["", "abc", "a.b", "a.b.c.d", "!!.??.**"] {
            assert_eq!(
                verify_webhook_token(token, "k", now()),
                Err(JwtError::Malformed),
                "{token:?}"
            );
        }
    }
}
