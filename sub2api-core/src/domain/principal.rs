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
    /// Concurrency and RPM over all of the user's keys together, on top of each key's own: a
    /// user cannot multiply their share of the pool by creating more keys.
    #[serde(default)]
    pub limits: Limits,
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

/// Rate limits of one scope (a key, or a user across all their keys), enforced on the relay path.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Limits {
    /// Requests in flight at once; `None` = unlimited.
    pub concurrency: Option<u32>,
    /// Requests per minute; `None` = unlimited.
    pub rpm: Option<u32>,
}

impl Limits {
    /// Whether nothing is limited (the limiter then has nothing to do for this scope).
    pub fn is_unlimited(&self) -> bool {
        self.concurrency.is_none() && self.rpm.is_none()
    }
}

/// The limits of one key (the name the key APIs have always used).
pub type KeyLimits = Limits;

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
    /// The key's own limits.
    pub limits: KeyLimits,
    /// The owner's limits, shared by all of their keys (and, with Redis, by every node).
    pub user_limits: Limits,
    /// Quota, expiry and IP allowlist of the key, enforced on the relay path.
    pub rules: KeyRules,
}

/// The rules of a key beyond its rate limits: how much it may spend in total, until when it
/// works, and from where. Checked by the auth layer (expiry, IP) and the reserve layer (quota).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyRules {
    /// The most this key may ever spend (settled charges plus holds in flight); `None` = no cap.
    pub quota: Option<crate::money::Money>,
    /// Unix ms from which the key stops working; `None` = never.
    pub expires_at_ms: Option<i64>,
    /// Client addresses the key works from; empty = anywhere.
    pub ip_allowlist: Vec<IpNet>,
}

impl KeyRules {
    pub fn is_expired(&self, now_ms: i64) -> bool {
        self.expires_at_ms.is_some_and(|at| at <= now_ms)
    }

    /// Whether a client at `ip` may use the key (`None`: the address is unknown, which only an
    /// empty allowlist accepts).
    pub fn allows_ip(&self, ip: Option<std::net::IpAddr>) -> bool {
        if self.ip_allowlist.is_empty() {
            return true;
        }
        ip.is_some_and(|ip| self.ip_allowlist.iter().any(|n| n.contains(ip)))
    }
}

/// An IP address or a CIDR block (`203.0.113.7`, `10.0.0.0/8`, `2001:db8::/32`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct IpNet {
    pub addr: std::net::IpAddr,
    pub prefix: u8,
}

impl IpNet {
    pub fn contains(&self, ip: std::net::IpAddr) -> bool {
        use std::net::IpAddr;
        let ip = match ip {
            // An IPv4 client seen through a dual-stack socket.
            IpAddr::V6(v6) if self.addr.is_ipv4() => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            other => other,
        };
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX.checked_shl(32 - self.prefix as u32).unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX.checked_shl(128 - self.prefix as u32).unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

impl std::str::FromStr for IpNet {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let addr: std::net::IpAddr = addr
            .parse()
            .map_err(|_| format!("`{s}` is not an IP address or CIDR block"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) => p
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= max)
                .ok_or_else(|| format!("`{s}`: prefix must be 0..={max}"))?,
        };
        Ok(IpNet { addr, prefix })
    }
}

impl TryFrom<String> for IpNet {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        s.parse()
    }
}

impl From<IpNet> for String {
    fn from(n: IpNet) -> String {
        n.to_string()
    }
}

impl std::fmt::Display for IpNet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let max = if self.addr.is_ipv4() { 32 } else { 128 };
        if self.prefix == max {
            write!(f, "{}", self.addr)
        } else {
            write!(f, "{}/{}", self.addr, self.prefix)
        }
    }
}

impl Principal {
    /// The money a request may hold is scaled by the group multiplier.
    pub fn multiplier(&self) -> crate::money::Multiplier {
        self.group.rate_multiplier
    }
}
