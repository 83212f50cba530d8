//! GHL's single sign-on for pages embedded in GHL (a custom page or a custom menu link). The
//! page asks GHL for the user's context (`REQUEST_USER_DATA`); GHL answers with the context
//! encrypted under the app's Shared Secret the way CryptoJS encrypts with a passphrase: OpenSSL's
//! format, base64 of `Salted__` + an 8-byte salt + the ciphertext, AES-256-CBC with PKCS#7
//! padding, key and IV derived from the passphrase and salt by `EVP_BytesToKey` (MD5, one round).
//! Only the server knows the secret, so a context that opens is one GHL wrote.

use std::fmt;

use aes::cipher::{BlockDecryptMut, KeyIvInit, block_padding::Pkcs7};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use md5::{Digest, Md5};
use serde::Deserialize;

type Aes256CbcDec = cbc::Decryptor<aes::Aes256>;

const MAGIC: &[u8] = b"Salted__";
const SALT_LEN: usize = 8;
const KEY_LEN: usize = 32;
const IV_LEN: usize = 16;

/// The app's Shared Secret (GHL Marketplace: Advanced Settings > Auth > Shared Secret).
#[derive(Clone)]
pub struct SharedSecret(String);

impl SharedSecret {
    pub fn new(secret: impl Into<String>) -> Self {
        Self(secret.into())
    }

    fn as_bytes(&self) -> &[u8] {
        self.0.as_bytes()
    }
}

impl fmt::Debug for SharedSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SharedSecret(********)")
    }
}

/// Who GHL says is looking at the page.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct UserContext {
    pub user_id: String,
    #[serde(default)]
    pub company_id: String,
    /// `admin` or `user`.
    #[serde(default)]
    pub role: String,
    /// `agency` or `location`.
    #[serde(rename = "type", default)]
    pub kind: String,
    #[serde(default)]
    pub user_name: String,
    #[serde(default)]
    pub email: String,
    /// The sub-account the page is open in; absent in the agency view.
    #[serde(default)]
    pub active_location: Option<String>,
}

impl fmt::Debug for UserContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The name and e-mail address are personal data: never in logs.
        f.debug_struct("UserContext")
            .field("user_id", &self.user_id)
            .field("company_id", &self.company_id)
            .field("role", &self.role)
            .field("kind", &self.kind)
            .field("active_location", &self.active_location)
            .finish_non_exhaustive()
    }
}

/// Why a context did not open.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SsoError {
    #[error("the user context is not GHL's encrypted format")]
    Malformed,
    #[error("the user context does not open with this app's Shared Secret")]
    WrongSecret,
    #[error("the user context opened but is not what GHL sends: {0}")]
    Unreadable(String),
}

/// Opens the user context GHL gave the page.
pub fn open(secret: &SharedSecret, payload: &str) -> Result<UserContext, SsoError> {
    let bytes = STANDARD
        .decode(payload.trim())
        .map_err(|_| SsoError::Malformed)?;
    let rest = bytes.strip_prefix(MAGIC).ok_or(SsoError::Malformed)?;
    if rest.len() <= SALT_LEN || !(rest.len() - SALT_LEN).is_multiple_of(16) {
        return Err(SsoError::Malformed);
    }
    let (salt, ciphertext) = rest.split_at(SALT_LEN);
    let (key, iv) = key_and_iv(secret.as_bytes(), salt);
    let plain = Aes256CbcDec::new(&key.into(), &iv.into())
        .decrypt_padded_vec_mut::<Pkcs7>(ciphertext)
        .map_err(|_| SsoError::WrongSecret)?;
    let context: UserContext =
        serde_json::from_slice(&plain).map_err(|e| SsoError::Unreadable(e.to_string()))?;
    if context.user_id.trim().is_empty() {
        return Err(SsoError::Unreadable("no userId".into()));
    }
    Ok(context)
}

/// OpenSSL's `EVP_BytesToKey` with MD5 and one round: blocks of MD5(previous block, passphrase,
/// salt) until there are enough bytes for the key and the IV.
fn key_and_iv(passphrase: &[u8], salt: &[u8]) -> ([u8; KEY_LEN], [u8; IV_LEN]) {
    let mut derived = Vec::with_capacity(KEY_LEN + IV_LEN + 16);
    let mut block: Vec<u8> = Vec::new();
    while derived.len() < KEY_LEN + IV_LEN {
        let mut md5 = Md5::new();
        md5.update(&block);
        md5.update(passphrase);
        md5.update(salt);
        block = md5.finalize().to_vec();
        derived.extend_from_slice(&block);
    }
    let mut key = [0; KEY_LEN];
    let mut iv = [0; IV_LEN];
    key.copy_from_slice(&derived[..KEY_LEN]);
    iv.copy_from_slice(&derived[KEY_LEN..KEY_LEN + IV_LEN]);
    (key, iv)
}

/// Encrypts `plain` as CryptoJS does with a passphrase: what GHL does to the user context.
/// For tests and for the fake GHL page.
pub fn seal_like_ghl(secret: &SharedSecret, plain: &str, salt: [u8; SALT_LEN]) -> String {
    use aes::cipher::BlockEncryptMut;
    type Aes256CbcEnc = cbc::Encryptor<aes::Aes256>;
    let (key, iv) = key_and_iv(secret.as_bytes(), &salt);
    let ciphertext = Aes256CbcEnc::new(&key.into(), &iv.into())
        .encrypt_padded_vec_mut::<Pkcs7>(plain.as_bytes());
    let mut bytes = MAGIC.to_vec();
    bytes.extend_from_slice(&salt);
    bytes.extend(ciphertext);
    STANDARD.encode(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    const CONTEXT: &str = r#"{"userId":"u1","companyId":"c1","role":"admin","type":"location","activeLocation":"loc-a","userName":"Ana","email":"ana@example.com"}"#;

    #[test]
    fn a_context_ghl_encrypted_opens_with_the_shared_secret() {
        let secret = SharedSecret::new("shh");
        let payload = seal_like_ghl(&secret, CONTEXT, *b"12345678");
        let context = open(&secret, &payload).unwrap();
        assert_eq!(context.user_id, "u1");
        assert_eq!(context.active_location.as_deref(), Some("loc-a"));
        assert_eq!(context.kind, "location");
        assert!(!format!("{context:?}").contains("ana@example.com"));
    }

    #[test]
    fn openssl_derives_the_key_and_iv_the_same_way() {
        // `openssl enc -aes-256-cbc -md md5 -pass pass:secret -S 0001020304050607 -P`
        let (key, iv) = key_and_iv(b"secret", &[0, 1, 2, 3, 4, 5, 6, 7]);
        let hex = |bytes: &[u8]| bytes.iter().map(|b| format!("{b:02X}")).collect::<String>();
        let expected = std::process::Command::new("openssl")
            .args([
                "enc",
                "-aes-256-cbc",
                "-md",
                "md5",
                "-pass",
                "pass:secret",
                "-S",
                "0001020304050607",
                "-P",
            ])
            .output();
        let Ok(expected) = expected else {
            // No openssl binary: the round trip test above still holds.
            return;
        };
        let text = String::from_utf8_lossy(&expected.stdout);
        assert!(text.contains(&format!("key={}", hex(&key))), "{text}");
        assert!(text.contains(&format!("iv ={}", hex(&iv))), "{text}");
    }

    #[test]
    fn another_secret_or_a_tampered_payload_is_refused() {
        let payload = seal_like_ghl(&SharedSecret::new("shh"), CONTEXT, *b"abcdefgh");
        assert!(open(&SharedSecret::new("other"), &payload).is_err());
        assert_eq!(
            open(&SharedSecret::new("shh"), "not base64!"),
            Err(SsoError::Malformed)
        );
        assert_eq!(
            open(&SharedSecret::new("shh"), &STANDARD.encode("plain text")),
            Err(SsoError::Malformed)
        );
        let mut bytes = STANDARD.decode(&payload).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 0x55;
        assert!(open(&SharedSecret::new("shh"), &STANDARD.encode(bytes)).is_err());
    }

    #[test]
    fn a_context_without_a_user_is_refused() {
        let secret = SharedSecret::new("shh");
        let payload = seal_like_ghl(&secret, r#"{"companyId":"c1"}"#, *b"12345678");
        assert!(matches!(
            open(&secret, &payload),
            Err(SsoError::Unreadable(_))
        ));
    }
}
