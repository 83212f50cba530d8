//! Encryption at rest for the credentials whatsnap keeps — Twilio auth tokens, GHL tokens. A
//! credential is sealed with XChaCha20-Poly1305 under the deployment's [`SecretKey`] before it
//! goes into an event, and opened only where it is used. Neither the key nor an opened secret
//! ever shows in `Debug` output.
//!
//! The key is 32 random bytes, given base64-encoded in `WHATSNAP_SECRET_KEY` (every process of a
//! distributed deployment needs the same one), or, for the embedded setup, kept in a key file
//! created on first start (see `whatsnap serve --help` for where).
//!
//! [`mask`] shows personal data (phone numbers, message bodies) in logs and error texts
//! without showing it.

pub mod mask;

use std::fmt;
use std::io::Write as _;
use std::path::Path;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use chacha20poly1305::aead::{Aead, AeadCore, KeyInit, OsRng};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use serde::{Deserialize, Serialize};

const VERSION: &str = "v1";
const NONCE_LEN: usize = 24;

#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error("the secret key must be 32 bytes, base64-encoded (e.g. `openssl rand -base64 32`)")]
    BadKey,
    #[error("the secret key file {path}: {source}")]
    KeyFile {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("a sealed secret is malformed")]
    Malformed,
    #[error("a sealed secret does not open with this key: was WHATSNAP_SECRET_KEY changed?")]
    WrongKey,
}

/// The key that seals and opens credentials.
#[derive(Clone)]
pub struct SecretKey(XChaCha20Poly1305);

impl fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SecretKey(********)")
    }
}

impl SecretKey {
    /// A key from its base64 text.
    pub fn from_base64(text: &str) -> Result<Self, SecretError> {
        let bytes = STANDARD
            .decode(text.trim())
            .map_err(|_| SecretError::BadKey)?;
        if bytes.len() != 32 {
            return Err(SecretError::BadKey);
        }
        Ok(Self(
            XChaCha20Poly1305::new_from_slice(&bytes).map_err(|_| SecretError::BadKey)?,
        ))
    }

    /// A new random key, as base64 text ([`SecretKey::from_base64`] reads it).
    pub fn generate_base64() -> String {
        STANDARD.encode(XChaCha20Poly1305::generate_key(&mut OsRng))
    }

    /// The key in `path`, created (readable by its owner only) when there is none yet.
    pub fn load_or_create(path: &Path) -> Result<Self, SecretError> {
        let key_file = |source| SecretError::KeyFile {
            path: path.display().to_string(),
            source,
        };
        match std::fs::read_to_string(path) {
            Ok(text) => Self::from_base64(&text),
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
                let text = Self::generate_base64();
                // Written whole under a temporary name, then linked into place: two processes
                // starting at once both end up with the one key that got there first.
                let temporary = path.with_extension(format!("tmp{}", std::process::id()));
                let mut options = std::fs::OpenOptions::new();
                options.write(true).create(true).truncate(true);
                #[cfg(unix)]
                {
                    use std::os::unix::fs::OpenOptionsExt;
                    options.mode(0o600);
                }
                let mut file = options.open(&temporary).map_err(key_file)?;
                file.write_all(text.as_bytes()).map_err(key_file)?;
                file.sync_all().map_err(key_file)?;
                let linked = std::fs::hard_link(&temporary, path);
                let _ = std::fs::remove_file(&temporary);
                match linked {
                    Ok(()) => Self::from_base64(&text),
                    Err(err) if err.kind() == std::io::ErrorKind::AlreadyExists => {
                        Self::from_base64(&std::fs::read_to_string(path).map_err(key_file)?)
                    }
                    Err(err) => Err(key_file(err)),
                }
            }
            Err(err) => Err(key_file(err)),
        }
    }

    pub fn seal(&self, secret: &str) -> Sealed {
        let nonce = XChaCha20Poly1305::generate_nonce(&mut OsRng);
        let ciphertext = self
            .0
            .encrypt(&nonce, secret.as_bytes())
            .expect("encrypting in memory cannot fail");
        let mut bytes = nonce.to_vec();
        bytes.extend(ciphertext);
        Sealed(format!("{VERSION}:{}", STANDARD.encode(bytes)))
    }

    pub fn open(&self, sealed: &Sealed) -> Result<Opened, SecretError> {
        let encoded = sealed
            .0
            .strip_prefix(VERSION)
            .and_then(|rest| rest.strip_prefix(':'))
            .ok_or(SecretError::Malformed)?;
        let bytes = STANDARD
            .decode(encoded)
            .map_err(|_| SecretError::Malformed)?;
        if bytes.len() <= NONCE_LEN {
            return Err(SecretError::Malformed);
        }
        let (nonce, ciphertext) = bytes.split_at(NONCE_LEN);
        let plain = self
            .0
            .decrypt(XNonce::from_slice(nonce), ciphertext)
            .map_err(|_| SecretError::WrongKey)?;
        String::from_utf8(plain)
            .map(Opened)
            .map_err(|_| SecretError::Malformed)
    }
}

/// A sealed credential, as stored: `v1:<base64 of nonce and ciphertext>`.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Sealed(String);

impl Sealed {
    /// A sealed value as it was stored (`v1:…`); opening it checks it.
    pub fn from_stored(stored: String) -> Self {
        Self(stored)
    }

    /// The sealed value as it is stored.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Sealed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Sealed(..)")
    }
}

/// An opened credential: use it with [`Opened::expose`], never print it.
pub struct Opened(String);

impl Opened {
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Opened {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Opened(********)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> SecretKey {
        SecretKey::from_base64(&STANDARD.encode([7u8; 32])).unwrap()
    }

    #[test]
    fn a_sealed_secret_opens_with_its_key_only() {
        let sealed = key().seal("twilio-auth-token");
        let stored = serde_json::to_string(&sealed).unwrap();
        assert!(!stored.contains("twilio-auth-token"));
        let back: Sealed = serde_json::from_str(&stored).unwrap();
        assert_eq!(key().open(&back).unwrap().expose(), "twilio-auth-token");
        let other = SecretKey::from_base64(&STANDARD.encode([8u8; 32])).unwrap();
        assert!(matches!(other.open(&back), Err(SecretError::WrongKey)));
        // The same secret sealed twice differs (random nonce).
        assert_ne!(key().seal("x"), key().seal("x"));
    }

    #[test]
    fn secrets_and_keys_never_print() {
        let sealed = key().seal("token");
        let opened = key().open(&sealed).unwrap();
        for shown in [
            format!("{:?}", key()),
            format!("{sealed:?}"),
            format!("{opened:?}"),
        ] {
            assert!(
                !shown.contains("token") && !shown.contains("BwcH"),
                "{shown}"
            );
        }
    }

    #[test]
    fn a_key_file_is_created_once_and_reused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secret.key");
        let sealed = SecretKey::load_or_create(&path).unwrap().seal("s");
        let again = SecretKey::load_or_create(&path).unwrap();
        assert_eq!(again.open(&sealed).unwrap().expose(), "s");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        assert!(matches!(
            SecretKey::from_base64("short"),
            Err(SecretError::BadKey)
        ));
    }
}
