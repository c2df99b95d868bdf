//! Secrets of the API: argon2id password hashes, session tokens, the admin key, and the login
//! rate limiter.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};
use sha2::{Digest, Sha256};

use crate::domain::Secret;

pub fn sha256(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

/// Compares two digests in time independent of where they differ.
pub fn ct_eq(a: &[u8; 32], b: &[u8; 32]) -> bool {
    let mut diff = 0u8;
    for i in 0..32 {
        diff |= a[i] ^ b[i];
    }
    std::hint::black_box(diff) == 0
}

/// Argon2id cost of new hashes (verification reads the cost from the stored hash).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PasswordParams {
    pub memory_kib: u32,
    pub iterations: u32,
    pub parallelism: u32,
}

impl Default for PasswordParams {
    /// OWASP's recommendation for argon2id: 19 MiB, 2 iterations, 1 lane.
    fn default() -> Self {
        PasswordParams {
            memory_kib: 19 * 1024,
            iterations: 2,
            parallelism: 1,
        }
    }
}

impl PasswordParams {
    /// A cheap setting for tests (never for production).
    pub fn insecure_fast() -> Self {
        PasswordParams {
            memory_kib: 64,
            iterations: 1,
            parallelism: 1,
        }
    }
}

/// Hashes a password into a PHC string (`$argon2id$v=19$m=...`). Runs on the blocking pool.
pub async fn hash_password(password: &str, params: PasswordParams) -> Result<String, String> {
    let password = Secret::new(password);
    let salt: [u8; 16] = rand::random();
    tokio::task::spawn_blocking(move || {
        let p = Params::new(
            params.memory_kib,
            params.iterations,
            params.parallelism,
            None,
        )
        .map_err(|e| e.to_string())?;
        let salt = SaltString::encode_b64(&salt).map_err(|e| e.to_string())?;
        Argon2::new(Algorithm::Argon2id, Version::V0x13, p)
            .hash_password(password.expose().as_bytes(), &salt)
            .map(|h| h.to_string())
            .map_err(|e| e.to_string())
    })
    .await
    .map_err(|e| e.to_string())?
}

/// Checks a password against a stored PHC string. Runs on the blocking pool.
pub async fn verify_password(password: &str, phc: &str) -> bool {
    let password = Secret::new(password);
    let phc = phc.to_owned();
    tokio::task::spawn_blocking(move || {
        PasswordHash::new(&phc).is_ok_and(|h| {
            Argon2::default()
                .verify_password(password.expose().as_bytes(), &h)
                .is_ok()
        })
    })
    .await
    .unwrap_or(false)
}

/// A hash to verify against when the user does not exist, so a login takes as long either way.
pub(crate) async fn dummy_verify(params: PasswordParams) {
    static DUMMY: tokio::sync::OnceCell<String> = tokio::sync::OnceCell::const_new();
    if let Ok(h) = DUMMY
        .get_or_try_init(|| hash_password("not a real password", params))
        .await
    {
        let _ = verify_password("still not it", h).await;
    }
}

/// A new session token: 32 random bytes, hex, with a prefix that says what it is.
pub fn new_session_token() -> (Secret, [u8; 32]) {
    let bytes: [u8; 32] = rand::random();
    let token = format!("s2a_{}", hex::encode(bytes));
    let digest = sha256(token.as_bytes());
    (Secret::new(token), digest)
}

/// Counts failures per key (an email, a client address) in a sliding window.
pub struct LoginLimiter {
    max: u32,
    window: Duration,
    failures: Mutex<HashMap<String, Vec<Instant>>>,
}

impl LoginLimiter {
    pub fn new(max: u32, window: Duration) -> Self {
        LoginLimiter {
            max: max.max(1),
            window,
            failures: Mutex::new(HashMap::new()),
        }
    }

    /// `Err(seconds to wait)` when any of `keys` has used up its failures.
    pub fn check(&self, keys: &[String]) -> Result<(), u64> {
        let now = Instant::now();
        let mut f = self.failures.lock().unwrap();
        let mut wait = None;
        for k in keys {
            if let Some(v) = f.get_mut(k) {
                v.retain(|t| now.duration_since(*t) < self.window);
                if v.len() as u32 >= self.max {
                    let oldest = v[0];
                    let secs = self
                        .window
                        .saturating_sub(now.duration_since(oldest))
                        .as_secs()
                        .max(1);
                    wait = Some(wait.map_or(secs, |w: u64| w.max(secs)));
                }
            }
        }
        wait.map_or(Ok(()), Err)
    }

    pub fn fail(&self, keys: &[String]) {
        let now = Instant::now();
        let mut f = self.failures.lock().unwrap();
        if f.len() > 100_000 {
            f.retain(|_, v| {
                v.last()
                    .is_some_and(|t| now.duration_since(*t) < self.window)
            });
        }
        for k in keys {
            let v = f.entry(k.clone()).or_default();
            v.push(now);
            if v.len() > self.max as usize * 2 {
                v.remove(0);
            }
        }
    }

    pub fn succeed(&self, key: &str) {
        self.failures.lock().unwrap().remove(key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn passwords_hash_and_verify() {
        let h = hash_password("correct horse", PasswordParams::insecure_fast())
            .await
            .unwrap();
        assert!(h.starts_with("$argon2id$"));
        assert!(verify_password("correct horse", &h).await);
        assert!(!verify_password("wrong horse", &h).await);
        assert!(!verify_password("x", "not a hash").await);
    }

    #[test]
    fn limiter_blocks_after_max_failures() {
        let l = LoginLimiter::new(2, Duration::from_secs(60));
        let k = vec!["a@b.c".to_owned()];
        assert!(l.check(&k).is_ok());
        l.fail(&k);
        l.fail(&k);
        assert!(l.check(&k).unwrap_err() <= 60);
        l.succeed("a@b.c");
        assert!(l.check(&k).is_ok());
    }

    #[test]
    fn digests_compare() {
        assert!(ct_eq(&sha256(b"x"), &sha256(b"x")));
        assert!(!ct_eq(&sha256(b"x"), &sha256(b"y")));
    }
}
