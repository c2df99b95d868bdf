//! SHA256withRSA (PKCS#1 v1.5) signing and verification, and key loading from what operators
//! paste: PEM (PKCS#8 `PRIVATE KEY`, PKCS#1 `RSA PRIVATE KEY`, SPKI `PUBLIC KEY`, PKCS#1
//! `RSA PUBLIC KEY`) or the bare base64 body Alipay's key tool prints.

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use rsa::pkcs1::{DecodeRsaPrivateKey, DecodeRsaPublicKey};
use rsa::pkcs1v15::{Signature, SigningKey, VerifyingKey};
use rsa::pkcs8::{DecodePrivateKey, DecodePublicKey};
use rsa::signature::{SignatureEncoding, Signer, Verifier};
use rsa::{RsaPrivateKey, RsaPublicKey};
use sha2::Sha256;

fn body_der(text: &str) -> Option<Vec<u8>> {
    let b64: String = text
        .lines()
        .filter(|l| !l.starts_with("-----"))
        .flat_map(|l| l.chars())
        .filter(|c| !c.is_whitespace())
        .collect();
    B64.decode(b64).ok()
}

pub fn private_key(text: &str) -> Result<RsaPrivateKey, String> {
    let t = text.trim();
    if t.contains("BEGIN PRIVATE KEY") {
        return RsaPrivateKey::from_pkcs8_pem(t).map_err(|e| e.to_string());
    }
    if t.contains("BEGIN RSA PRIVATE KEY") {
        return RsaPrivateKey::from_pkcs1_pem(t).map_err(|e| e.to_string());
    }
    let der = body_der(t).ok_or("not PEM or base64")?;
    RsaPrivateKey::from_pkcs8_der(&der)
        .or_else(|_| RsaPrivateKey::from_pkcs1_der(&der))
        .map_err(|e| e.to_string())
}

pub fn public_key(text: &str) -> Result<RsaPublicKey, String> {
    let t = text.trim();
    if t.contains("BEGIN PUBLIC KEY") {
        return RsaPublicKey::from_public_key_pem(t).map_err(|e| e.to_string());
    }
    if t.contains("BEGIN RSA PUBLIC KEY") {
        return RsaPublicKey::from_pkcs1_pem(t).map_err(|e| e.to_string());
    }
    let der = body_der(t).ok_or("not PEM or base64")?;
    RsaPublicKey::from_public_key_der(&der)
        .or_else(|_| RsaPublicKey::from_pkcs1_der(&der))
        .map_err(|e| e.to_string())
}

/// base64(SHA256withRSA(key, msg)).
pub fn sign(key: &RsaPrivateKey, msg: &[u8]) -> String {
    let sk = SigningKey::<Sha256>::new(key.clone());
    B64.encode(sk.sign(msg).to_vec())
}

/// Checks a base64 SHA256withRSA signature.
pub fn verify(key: &RsaPublicKey, msg: &[u8], sig_b64: &str) -> bool {
    let Ok(raw) = B64.decode(sig_b64.trim()) else {
        return false;
    };
    let Ok(sig) = Signature::try_from(raw.as_slice()) else {
        return false;
    };
    VerifyingKey::<Sha256>::new(key.clone())
        .verify(msg, &sig)
        .is_ok()
}

#[cfg(test)]
mod tests {
    use super::super::test_keys::*;
    use super::*;

    #[test]
    fn sign_verify_and_key_forms() {
        let k = private_key(ALIPAY_APP_PRIVATE).unwrap();
        let p = public_key(ALIPAY_APP_PUBLIC).unwrap();
        let s = sign(&k, b"a=1&b=2");
        assert!(verify(&p, b"a=1&b=2", &s));
        assert!(!verify(&p, b"a=1&b=3", &s));
        let other = public_key(ATTACKER_PUBLIC).unwrap();
        assert!(!verify(&other, b"a=1&b=2", &s));
        assert!(!verify(&p, b"a=1&b=2", "not base64!"));
        // The bare base64 body (what Alipay's tool prints) loads too.
        let bare: String = ALIPAY_APP_PUBLIC
            .lines()
            .filter(|l| !l.starts_with("-----"))
            .collect();
        assert_eq!(public_key(&bare).unwrap(), p);
        let bare: String = ALIPAY_APP_PRIVATE
            .lines()
            .filter(|l| !l.starts_with("-----"))
            .collect();
        assert_eq!(private_key(&bare).unwrap(), k);
    }
}
