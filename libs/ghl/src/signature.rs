//! Checking that a request really comes from GHL (`ghl-api.md` §6.3). GHL signs the raw body:
//! `X-GHL-Signature` with Ed25519 (the only signature on the conversation provider's delivery
//! URL), and, on older webhooks, `X-WH-Signature` with RSA-SHA256 (PKCS#1 v1.5). As GHL's SDK
//! does, an Ed25519 signature, when present, is the only one checked. The keys are GHL's
//! published ones by default and configuration otherwise, since GHL may rotate them.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use ed25519_dalek::Verifier as _;
use ed25519_dalek::pkcs8::DecodePublicKey as _;
use rsa::pkcs1v15::VerifyingKey as RsaVerifyingKey;

/// GHL's published Ed25519 webhook key.
pub const GHL_ED25519_PEM: &str = "-----BEGIN PUBLIC KEY-----
MCowBQYDK2VwAyEAi2HR1srL4o18O8BRa7gVJY7G7bupbN3H9AwJrHCDiOg=
-----END PUBLIC KEY-----
";

/// GHL's published legacy RSA webhook key.
pub const GHL_RSA_PEM: &str = "-----BEGIN PUBLIC KEY-----
MIICIjANBgkqhkiG9w0BAQEFAAOCAg8AMIICCgKCAgEAokvo/r9tVgcfZ5DysOSC
Frm602qYV0MaAiNnX9O8KxMbiyRKWeL9JpCpVpt4XHIcBOK4u3cLSqJGOLaPuXw6
dO0t6Q/ZVdAV5Phz+ZtzPL16iCGeK9po6D6JHBpbi989mmzMryUnQJezlYJ3DVfB
csedpinheNnyYeFXolrJvcsjDtfAeRx5ByHQmTnSdFUzuAnC9/GepgLT9SM4nCpv
uxmZMxrJt5Rw+VUaQ9B8JSvbMPpez4peKaJPZHBbU3OdeCVx5klVXXZQGNHOs8gF
3kvoV5rTnXV0IknLBXlcKKAQLZcY/Q9rG6Ifi9c+5vqlvHPCUJFT5XUGG5RKgOKU
J062fRtN+rLYZUV+BjafxQauvC8wSWeYja63VSUruvmNj8xkx2zE/Juc+yjLjTXp
IocmaiFeAO6fUtNjDeFVkhf5LNb59vECyrHD2SQIrhgXpO4Q3dVNA5rw576PwTzN
h/AMfHKIjE4xQA1SZuYJmNnmVZLIZBlQAF9Ntd03rfadZ+yDiOXCCs9FkHibELhC
HULgCsnuDJHcrGNd5/Ddm5hxGQ0ASitgHeMZ0kcIOwKDOzOU53lDza6/Y09T7sYJ
PQe7z0cvj7aE4B+Ax1ZoZGPzpJlZtGXCsu9aTEGEnKzmsFqwcSsnw3JB31IGKAyk
T1hhTiaCeIY/OwwwNUY2yvcCAwEAAQ==
-----END PUBLIC KEY-----
";

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    #[error("the request carries no GHL signature (X-GHL-Signature or X-WH-Signature)")]
    Missing,
    #[error("the {0} signature does not match the body")]
    Mismatch(&'static str),
    #[error("the {0} signature is not base64 of a signature")]
    Malformed(&'static str),
    #[error("the configured GHL {which} key is not a PEM public key: {reason}")]
    BadKey { which: &'static str, reason: String },
}

/// A signature header with something in it: empty and `N/A` count as absent.
fn present(header: Option<&str>) -> Option<&str> {
    header
        .map(str::trim)
        .filter(|v| !v.is_empty() && *v != "N/A")
}

/// Which signature vouched for a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    Ed25519,
    RsaSha256,
}

/// The public keys GHL signs with.
#[derive(Clone, Debug)]
pub struct WebhookKeys {
    ed25519: ed25519_dalek::VerifyingKey,
    rsa: RsaVerifyingKey<sha2::Sha256>,
}

impl WebhookKeys {
    /// GHL's published keys.
    pub fn published() -> Self {
        Self::from_pem(GHL_ED25519_PEM, GHL_RSA_PEM).expect("the published keys parse")
    }

    pub fn from_pem(ed25519_pem: &str, rsa_pem: &str) -> Result<Self, SignatureError> {
        let ed25519 =
            ed25519_dalek::VerifyingKey::from_public_key_pem(ed25519_pem).map_err(|e| {
                SignatureError::BadKey {
                    which: "Ed25519",
                    reason: e.to_string(),
                }
            })?;
        let rsa = rsa::RsaPublicKey::from_public_key_pem(rsa_pem).map_err(|e| {
            SignatureError::BadKey {
                which: "RSA",
                reason: e.to_string(),
            }
        })?;
        Ok(Self {
            ed25519,
            rsa: RsaVerifyingKey::new(rsa),
        })
    }

    /// Checks the signature headers of a request against its raw `body`. A header holding
    /// `N/A`, which GHL has been seen to send, counts as absent.
    pub fn verify(
        &self,
        x_ghl_signature: Option<&str>,
        x_wh_signature: Option<&str>,
        body: &[u8],
    ) -> Result<Scheme, SignatureError> {
        if let Some(signature) = present(x_ghl_signature) {
            let bytes = STANDARD
                .decode(signature)
                .map_err(|_| SignatureError::Malformed("X-GHL-Signature"))?;
            let signature = ed25519_dalek::Signature::from_slice(&bytes)
                .map_err(|_| SignatureError::Malformed("X-GHL-Signature"))?;
            return self
                .ed25519
                .verify(body, &signature)
                .map(|()| Scheme::Ed25519)
                .map_err(|_| SignatureError::Mismatch("X-GHL-Signature"));
        }
        if let Some(signature) = present(x_wh_signature) {
            let bytes = STANDARD
                .decode(signature)
                .map_err(|_| SignatureError::Malformed("X-WH-Signature"))?;
            let signature = rsa::pkcs1v15::Signature::try_from(bytes.as_slice())
                .map_err(|_| SignatureError::Malformed("X-WH-Signature"))?;
            return self
                .rsa
                .verify(body, &signature)
                .map(|()| Scheme::RsaSha256)
                .map_err(|_| SignatureError::Mismatch("X-WH-Signature"));
        }
        Err(SignatureError::Missing)
    }
}

#[cfg(test)]
mod tests {
    use ed25519_dalek::Signer as _;
    use ed25519_dalek::pkcs8::EncodePublicKey as _;
    use rsa::pkcs1v15::SigningKey;
    use rsa::signature::SignatureEncoding as _;

    use super::*;

    const BODY: &[u8] = br#"{"type":"SMS","locationId":"ve9EPM428h8vShlRW1KT","contactId":"c1","messageId":"m1","message":"Yes, until 6pm","phone":"+14155550100"}"#;

    struct Signers {
        ed25519: ed25519_dalek::SigningKey,
        rsa: SigningKey<sha2::Sha256>,
        keys: WebhookKeys,
    }

    fn signers() -> Signers {
        let ed25519 = ed25519_dalek::SigningKey::generate(&mut rand_core::OsRng);
        let rsa_private = rsa::RsaPrivateKey::new(&mut rand_core::OsRng, 1024).unwrap();
        let keys = WebhookKeys::from_pem(
            &ed25519
                .verifying_key()
                .to_public_key_pem(Default::default())
                .unwrap(),
            &rsa_private
                .to_public_key()
                .to_public_key_pem(Default::default())
                .unwrap(),
        )
        .unwrap();
        Signers {
            ed25519,
            rsa: SigningKey::new(rsa_private),
            keys,
        }
    }

    #[test]
    fn ghls_published_keys_load() {
        WebhookKeys::published();
        let err = WebhookKeys::from_pem("nope", GHL_RSA_PEM).unwrap_err();
        assert!(
            matches!(
                err,
                SignatureError::BadKey {
                    which: "Ed25519",
                    ..
                }
            ),
            "{err}"
        );
    }

    #[test]
    fn an_ed25519_signature_over_the_raw_body_is_checked_and_wins() {
        let s = signers();
        let good = STANDARD.encode(s.ed25519.sign(BODY).to_bytes());
        assert_eq!(s.keys.verify(Some(&good), None, BODY), Ok(Scheme::Ed25519));
        let mut tampered = BODY.to_vec();
        tampered[10] ^= 1;
        assert_eq!(
            s.keys.verify(Some(&good), None, &tampered),
            Err(SignatureError::Mismatch("X-GHL-Signature"))
        );
        // No fall back to RSA when an Ed25519 signature is present but wrong.
        let rsa = STANDARD.encode(s.rsa.sign(&tampered).to_bytes());
        assert!(s.keys.verify(Some(&good), Some(&rsa), &tampered).is_err());
        assert_eq!(
            s.keys.verify(Some("not base64!"), None, BODY),
            Err(SignatureError::Malformed("X-GHL-Signature"))
        );
    }

    #[test]
    fn the_legacy_rsa_signature_is_checked_when_alone() {
        let s = signers();
        let good = STANDARD.encode(s.rsa.sign(BODY).to_bytes());
        assert_eq!(
            s.keys.verify(None, Some(&good), BODY),
            Ok(Scheme::RsaSha256)
        );
        assert_eq!(
            s.keys.verify(Some("N/A"), Some(&good), BODY),
            Ok(Scheme::RsaSha256)
        );
        assert_eq!(
            s.keys.verify(None, Some(&good), b"{}"),
            Err(SignatureError::Mismatch("X-WH-Signature"))
        );
        assert_eq!(
            s.keys.verify(None, None, BODY),
            Err(SignatureError::Missing)
        );
        assert_eq!(
            s.keys.verify(Some("N/A"), Some(" "), BODY),
            Err(SignatureError::Missing)
        );
        // GHL's own key does not accept our test signatures.
        assert!(
            WebhookKeys::published()
                .verify(None, Some(&good), BODY)
                .is_err()
        );
    }
}
