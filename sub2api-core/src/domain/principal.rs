use std::sync::Arc;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::{Group, GroupId, KeyId, UserId};

/// A wallet owner.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct User {
    pub id: UserId,
    pub email: String,
    pub enabled: bool,
}

/// The SHA-256 of a relay API key. Keys are random and long, so a fast hash is enough and lets
/// lookups be a single indexed equality; the plaintext is never stored.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct KeyHash(pub [u8; 32]);

impl KeyHash {
    pub fn of(key: &str) -> Self {
        KeyHash(Sha256::digest(key.as_bytes()).into())
    }

    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }
}

impl std::fmt::Debug for KeyHash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "KeyHash({}…)", &self.to_hex()[..8])
    }
}

/// Per-key limits enforced on the relay path.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyLimits {
    /// Requests in flight at once; `None` = unlimited.
    pub concurrency: Option<u32>,
    /// Requests per minute; `None` = unlimited.
    pub rpm: Option<u32>,
}

/// A relay API key (without its secret).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiKey {
    pub id: KeyId,
    pub user_id: UserId,
    pub group_id: GroupId,
    pub name: String,
    pub enabled: bool,
    pub limits: KeyLimits,
}

/// Who is calling, resolved from an API key: the user, the key and the pool it draws on.
#[derive(Clone, Debug)]
pub struct Principal {
    pub user: UserId,
    pub key: KeyId,
    pub group: Arc<Group>,
    pub limits: KeyLimits,
}

impl Principal {
    /// The money a request may hold is scaled by the group multiplier.
    pub fn multiplier(&self) -> crate::money::Multiplier {
        self.group.rate_multiplier
    }
}
