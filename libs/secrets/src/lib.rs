//! Encryption at rest for the credentials whatsnap keeps — Twilio auth tokens, GHL tokens. A
//! credential is sealed with XChaCha20-Poly1305 under the deployment's [`SecretKey`] before it
//! goes into an event, and opened only where it is used. Neither the key nor an opened secret
//! ever shows in `Debug` output.
//!
//! The key is 32 random bytes, given base64-encoded in `WHATSNAP_SECRET_KEY` (every process of a
//! distributed deployment that holds credentials needs the same one), or, for the embedded setup,
//! kept in a key file created on first start (see `whatsnap serve --help` for where).
//!
//! Keys for narrower uses are derived from it ([`SecretKey::derive`]): the personal data key
//! ([`PERSONAL_DATA`]) seals the contacts' keys and received files, so that a process that
//! reads personal data but holds no credential (the internet-facing gateway) is given that key
//! alone and cannot open any tenant's Twilio or GHL tokens. A value sealed under a derived key
//! names the key's use (`v1.pd:…`), so that opening it with another key says which it needs.
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
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

const VERSION: &str = "v1";
const NONCE_LEN: usize = 24;

/// The use of the key derived for personal data (the contacts' keys, received files, the
/// dashboard's cookies): what the gateway, contacts and assignment services are given.
pub const PERSONAL_DATA: &str = "pd";

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
    #[error("a value sealed under {sealed_with} cannot be opened with {this}")]
    OtherKey {
        sealed_with: &'static str,
        this: &'static str,
    },
}

/// The key that seals and opens credentials, or one derived from it for a narrower use.
#[derive(Clone)]
pub struct SecretKey {
    cipher: XChaCha20Poly1305,
    bytes: [u8; 32],
    /// `None` for the secret key itself; a derived key's use ([`PERSONAL_DATA`], …).
    purpose: Option<&'static str>,
}

impl fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.purpose {
            None => f.write_str("SecretKey(********)"),
            Some(purpose) => write!(f, "SecretKey({purpose}, ********)"),
        }
    }
}

impl SecretKey {
    /// A key from its base64 text.
    pub fn from_base64(text: &str) -> Result<Self, SecretError> {
        let bytes = STANDARD
            .decode(text.trim())
            .map_err(|_| SecretError::BadKey)?;
        let bytes: [u8; 32] = bytes.try_into().map_err(|_| SecretError::BadKey)?;
        Ok(Self::from_bytes(bytes, None))
    }

    fn from_bytes(bytes: [u8; 32], purpose: Option<&'static str>) -> Self {
        Self {
            cipher: XChaCha20Poly1305::new(&bytes.into()),
            bytes,
            purpose,
        }
    }

    /// The personal data key given as its base64 text (`whatsnap keys personal-data` prints it
    /// from the secret key).
    pub fn personal_data_from_base64(text: &str) -> Result<Self, SecretError> {
        let mut key = Self::from_base64(text)?;
        key.purpose = Some(PERSONAL_DATA);
        Ok(key)
    }

    /// The key for `purpose`, derived from this one (HMAC-SHA256 of the purpose under this
    /// key): the same for every process that holds this key, and useless for opening what this
    /// key sealed.
    pub fn derive(&self, purpose: &'static str) -> Self {
        let mut mac =
            <Hmac<Sha256> as Mac>::new_from_slice(&self.bytes).expect("HMAC takes any key length");
        mac.update(b"whatsnap key derivation v1\0");
        mac.update(purpose.as_bytes());
        let derived: [u8; 32] = mac.finalize().into_bytes().into();
        Self::from_bytes(derived, Some(purpose))
    }

    /// The key that seals personal data: derived from the secret key, or itself when it is one.
    pub fn personal_data(&self) -> Self {
        match self.purpose {
            Some(PERSONAL_DATA) => self.clone(),
            _ => self.derive(PERSONAL_DATA),
        }
    }

    /// The key as base64 text, to hand to a process that needs it (and nothing more).
    pub fn to_base64(&self) -> String {
        STANDARD.encode(self.bytes)
    }

    /// `v1:` for the secret key, `v1.<purpose>:` for a derived one.
    fn prefix(&self) -> String {
        match self.purpose {
            None => format!("{VERSION}:"),
            Some(purpose) => format!("{VERSION}.{purpose}:"),
        }
    }

    /// What a key is, in words, for errors.
    fn name(purpose: Option<&str>) -> &'static str {
        match purpose {
            None => "the secret key (WHATSNAP_SECRET_KEY)",
            Some(PERSONAL_DATA) => "the personal data key (WHATSNAP_PERSONAL_DATA_KEY)",
            Some(_) => "a key derived from the secret key",
        }
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
            .cipher
            .encrypt(&nonce, secret.as_bytes())
            .expect("encrypting in memory cannot fail");
        let mut bytes = nonce.to_vec();
        bytes.extend(ciphertext);
        Sealed(format!("{}{}", self.prefix(), STANDARD.encode(bytes)))
    }

    pub fn open(&self, sealed: &Sealed) -> Result<Opened, SecretError> {
        let (prefix, encoded) = sealed.0.split_once(':').ok_or(SecretError::Malformed)?;
        let purpose = match prefix.strip_prefix(VERSION) {
            Some("") => None,
            Some(derived) => Some(derived.strip_prefix('.').ok_or(SecretError::Malformed)?),
            None => return Err(SecretError::Malformed),
        };
        if purpose != self.purpose {
            return Err(SecretError::OtherKey {
                sealed_with: Self::name(purpose),
                this: Self::name(self.purpose),
            });
        }
        let bytes = STANDARD
            .decode(encoded)
            .map_err(|_| SecretError::Malformed)?;
        if bytes.len() <= NONCE_LEN {
            return Err(SecretError::Malformed);
        }
        let (nonce, ciphertext) = bytes.split_at(NONCE_LEN);
        let plain = self
            .cipher
            .decrypt(XNonce::from_slice(nonce), ciphertext)
            .map_err(|_| SecretError::WrongKey)?;
        String::from_utf8(plain)
            .map(Opened)
            .map_err(|_| SecretError::Malformed)
    }
}

/// A sealed credential, as stored: `v1:<base64 of nonce and ciphertext>`, or
/// `v1.<purpose>:<…>` under a derived key.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Sealed(String);

impl Sealed {
    /// A sealed value as it was stored (`v1:…`, `v1.pd:…`); opening it checks it.
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
    fn a_derived_key_opens_only_what_it_sealed_and_says_which_key_is_needed() {
        let master = key();
        let personal = master.personal_data();
        assert_eq!(
            personal.to_base64(),
            master.derive(PERSONAL_DATA).to_base64()
        );
        assert_ne!(personal.to_base64(), master.to_base64());
        // Given alone, as the gateway is, it is the same key.
        let given = SecretKey::personal_data_from_base64(&personal.to_base64()).unwrap();
        let sealed = given.seal("a contact's key");
        assert!(sealed.as_str().starts_with("v1.pd:"));
        assert_eq!(personal.open(&sealed).unwrap().expose(), "a contact's key");
        let refused = master.open(&sealed).unwrap_err().to_string();
        assert!(refused.contains("personal data key"), "{refused}");
        // What the secret key sealed (a Twilio Auth Token) the personal data key cannot open.
        let credential = master.seal("twilio-auth-token");
        assert!(credential.as_str().starts_with("v1:"));
        let refused = personal.open(&credential).unwrap_err().to_string();
        assert!(refused.contains("WHATSNAP_SECRET_KEY"), "{refused}");
        // A forged prefix does not make the other key's ciphertext open.
        let relabelled = Sealed::from_stored(credential.as_str().replacen("v1:", "v1.pd:", 1));
        assert!(matches!(
            personal.open(&relabelled),
            Err(SecretError::WrongKey)
        ));
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
