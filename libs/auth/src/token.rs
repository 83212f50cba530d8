//! API tokens: `wsn_` and 32 random bytes in base64url. Only their SHA-256 is ever stored; the
//! token's id (what people list and revoke) is the start of that hash, so a presented token
//! leads straight to its own stream.

use std::fmt;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use rand::RngCore;
use sha2::{Digest, Sha256};
use whatsnap_events::{AggregateKind, LocationId, StreamId};

const PREFIX: &str = "wsn_";
/// 32 bytes in unpadded base64url.
const ENCODED_LEN: usize = 43;
/// Hex characters of the hash that make a token's id.
const ID_LEN: usize = 24;

/// Why a text is not an API token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("an API token starts with wsn_ followed by 43 base64url characters")]
    Malformed,
}

/// An API token. It never prints: `Debug` shows its id only.
#[derive(Clone, PartialEq, Eq)]
pub struct ApiToken(String);

impl ApiToken {
    /// A new random token.
    pub fn generate() -> Self {
        let mut bytes = [0u8; 32];
        rand::rng().fill_bytes(&mut bytes);
        Self(format!("{PREFIX}{}", URL_SAFE_NO_PAD.encode(bytes)))
    }

    /// A token derived from a secret every process of a deployment shares, for `purpose`: the
    /// same in each, known to none that lacks the secret.
    pub fn derived(purpose: &str, secret: &str) -> Self {
        let mut hasher = Sha256::new();
        hasher.update(purpose.as_bytes());
        hasher.update([0]);
        hasher.update(secret.as_bytes());
        Self(format!(
            "{PREFIX}{}",
            URL_SAFE_NO_PAD.encode(hasher.finalize())
        ))
    }

    pub fn parse(text: &str) -> Result<Self, TokenError> {
        let text = text.trim();
        let encoded = text.strip_prefix(PREFIX).ok_or(TokenError::Malformed)?;
        if encoded.len() != ENCODED_LEN || URL_SAFE_NO_PAD.decode(encoded).is_err() {
            return Err(TokenError::Malformed);
        }
        Ok(Self(text.to_owned()))
    }

    /// The token itself, to show once or to send in a header.
    pub fn expose(&self) -> &str {
        &self.0
    }

    pub fn hash(&self) -> TokenHash {
        TokenHash(hex(&Sha256::digest(self.0.as_bytes())))
    }
}

impl fmt::Debug for ApiToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ApiToken({})", self.hash().id())
    }
}

/// The SHA-256 of a token, hex: what the log keeps.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenHash(String);

impl TokenHash {
    pub fn from_hex(hex: String) -> Self {
        Self(hex)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The token's id: the first 24 hex characters of its hash.
    pub fn id(&self) -> String {
        self.0[..ID_LEN].to_owned()
    }

    /// Compared in constant time, so the time a check takes tells nothing about the hash.
    pub fn matches(&self, other: &TokenHash) -> bool {
        use subtle::ConstantTimeEq;
        self.0.as_bytes().ct_eq(other.0.as_bytes()).into()
    }
}

/// The stream that records a token's issue and revocation.
pub fn token_stream(token_id: &str) -> Option<StreamId> {
    let valid = token_id.len() == ID_LEN && token_id.bytes().all(|b| b.is_ascii_hexdigit());
    valid
        .then(|| StreamId::new(LocationId::agency(), AggregateKind::ApiToken, token_id).ok())
        .flatten()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_generated_token_parses_and_never_prints() {
        let token = ApiToken::generate();
        assert_eq!(ApiToken::parse(token.expose()).unwrap(), token);
        assert!(!format!("{token:?}").contains(token.expose()));
        assert!(token_stream(&token.hash().id()).is_some());
    }

    #[test]
    fn texts_that_are_not_tokens_are_refused() {
        for bad in [
            "",
            "wsn_",
            "abc",
            "wsn_short",
            &format!("xyz_{}", "a".repeat(43)),
        ] {
            assert_eq!(ApiToken::parse(bad), Err(TokenError::Malformed), "{bad:?}");
        }
        assert!(token_stream("../etc").is_none());
    }
}
