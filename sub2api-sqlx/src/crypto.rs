//! Upstream credentials encrypted at rest.
//!
//! Each account's credentials are sealed with AES-256-GCM under the store's [`MasterKey`], with a
//! fresh random 96-bit nonce per write, and the account's name as associated data: a ciphertext
//! copied onto another account's row does not decrypt. The stored blob is `nonce || ciphertext+tag`.
//! A database dump without the master key reveals no credential.

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use rand::RngCore;
use sub2api_core::domain::{Credentials, OAuthTokens, Secret};

const NONCE_LEN: usize = 12;
const TAG_API_KEY: u8 = 1;
const TAG_BEARER: u8 = 2;
/// OAuth tokens: the payload is JSON `{"a": access, "r": refresh, "e": expires_at_ms}`.
const TAG_OAUTH: u8 = 3;

/// The 32-byte key that encrypts upstream credentials. Its `Debug` never shows the key.
#[derive(Clone, PartialEq, Eq)]
pub struct MasterKey([u8; 32]);

impl MasterKey {
    pub const fn new(bytes: [u8; 32]) -> Self {
        MasterKey(bytes)
    }

    /// Parses the 64 hex characters of `SUB2API_MASTER_KEY`.
    pub fn from_hex(s: &str) -> Result<Self, String> {
        let bytes = hex::decode(s.trim())
            .map_err(|_| "the master key must be 64 hex characters".to_owned())?;
        let arr: [u8; 32] = bytes
            .try_into()
            .map_err(|_| "the master key must be 64 hex characters (32 bytes)".to_owned())?;
        Ok(MasterKey(arr))
    }

    /// A new random key (for a first start without a configured key).
    pub fn generate() -> Self {
        let mut k = [0u8; 32];
        rand::rng().fill_bytes(&mut k);
        MasterKey(k)
    }

    /// The key as 64 hex characters, to be written where the operator keeps it.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    fn cipher(&self) -> Aes256Gcm {
        Aes256Gcm::new_from_slice(&self.0).expect("32-byte key")
    }
}

impl std::fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MasterKey([redacted])")
    }
}

impl From<[u8; 32]> for MasterKey {
    fn from(b: [u8; 32]) -> Self {
        MasterKey(b)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CryptoError {
    #[error("credentials cannot be decrypted (wrong master key or corrupted row)")]
    Decrypt,
    #[error("stored credentials are malformed")]
    Malformed,
}

/// Encrypts an account's credentials, bound to the account's name.
pub(crate) fn seal_credentials(
    key: &MasterKey,
    account_name: &str,
    creds: &Credentials,
) -> Vec<u8> {
    let (tag, payload) = match creds {
        Credentials::ApiKey(s) => (TAG_API_KEY, s.expose().as_bytes().to_vec()),
        Credentials::Bearer(s) => (TAG_BEARER, s.expose().as_bytes().to_vec()),
        Credentials::OAuth(t) => (
            TAG_OAUTH,
            serde_json::to_vec(&serde_json::json!({
                "a": t.access_token.expose(),
                "r": t.refresh_token.expose(),
                "e": t.expires_at_ms,
            }))
            .expect("JSON of strings"),
        ),
    };
    let mut payload = payload;
    let mut plain = Vec::with_capacity(1 + payload.len());
    plain.push(tag);
    plain.extend_from_slice(&payload);
    payload.iter_mut().for_each(|b| *b = 0);
    let mut nonce = [0u8; NONCE_LEN];
    rand::rng().fill_bytes(&mut nonce);
    let ct = key
        .cipher()
        .encrypt(
            &Nonce::from(nonce),
            Payload {
                msg: &plain,
                aad: account_name.as_bytes(),
            },
        )
        .expect("AES-GCM encryption of a short message cannot fail");
    plain.iter_mut().for_each(|b| *b = 0);
    let mut out = Vec::with_capacity(NONCE_LEN + ct.len());
    out.extend_from_slice(&nonce);
    out.extend_from_slice(&ct);
    out
}

/// Decrypts what [`seal_credentials`] produced for the same account name.
pub(crate) fn open_credentials(
    key: &MasterKey,
    account_name: &str,
    blob: &[u8],
) -> Result<Credentials, CryptoError> {
    if blob.len() < NONCE_LEN + 16 {
        return Err(CryptoError::Malformed);
    }
    let (nonce, ct) = blob.split_at(NONCE_LEN);
    let nonce: [u8; NONCE_LEN] = nonce.try_into().map_err(|_| CryptoError::Malformed)?;
    let mut plain = key
        .cipher()
        .decrypt(
            &Nonce::from(nonce),
            Payload {
                msg: ct,
                aad: account_name.as_bytes(),
            },
        )
        .map_err(|_| CryptoError::Decrypt)?;
    let result = match plain.split_first() {
        Some((&tag, rest)) => {
            let s = std::str::from_utf8(rest).map_err(|_| CryptoError::Malformed)?;
            match tag {
                TAG_API_KEY => Ok(Credentials::ApiKey(Secret::new(s))),
                TAG_BEARER => Ok(Credentials::Bearer(Secret::new(s))),
                TAG_OAUTH => {
                    #[derive(serde::Deserialize)]
                    struct T {
                        a: String,
                        r: String,
                        e: Option<i64>,
                    }
                    let t: T = serde_json::from_str(s).map_err(|_| CryptoError::Malformed)?;
                    Ok(Credentials::OAuth(OAuthTokens {
                        access_token: Secret::new(t.a),
                        refresh_token: Secret::new(t.r),
                        expires_at_ms: t.e,
                    }))
                }
                _ => Err(CryptoError::Malformed),
            }
        }
        None => Err(CryptoError::Malformed),
    };
    plain.iter_mut().for_each(|b| *b = 0);
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip_and_binding() {
        let k = MasterKey::generate();
        let c = Credentials::ApiKey(Secret::new("sk-ant-secret"));
        let blob = seal_credentials(&k, "a1", &c);
        assert!(!blob.windows(6).any(|w| w == b"secret"));
        assert_eq!(open_credentials(&k, "a1", &blob).unwrap(), c);
        assert_eq!(open_credentials(&k, "a2", &blob), Err(CryptoError::Decrypt));
        assert_eq!(
            open_credentials(&MasterKey::generate(), "a1", &blob),
            Err(CryptoError::Decrypt)
        );
        // Fresh nonce every time.
        assert_ne!(seal_credentials(&k, "a1", &c), blob);
        let o = Credentials::OAuth(OAuthTokens {
            access_token: Secret::new("acc"),
            refresh_token: Secret::new("ref"),
            expires_at_ms: Some(42),
        });
        assert_eq!(
            open_credentials(&k, "o", &seal_credentials(&k, "o", &o)).unwrap(),
            o
        );
        let b = Credentials::Bearer(Secret::new("tok"));
        assert_eq!(
            open_credentials(&k, "x", &seal_credentials(&k, "x", &b)).unwrap(),
            b
        );
    }

    #[test]
    fn hex_and_debug() {
        let k = MasterKey::generate();
        assert_eq!(MasterKey::from_hex(&k.to_hex()).unwrap(), k);
        assert!(MasterKey::from_hex("abcd").is_err());
        assert_eq!(format!("{k:?}"), "MasterKey([redacted])");
    }
}
