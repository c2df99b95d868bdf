//! The nouns of the relay: who calls (User, ApiKey, Principal), what they call through (Group,
//! Account), and what it cost (Usage).

mod account;
mod group;
mod principal;
mod secret;
mod usage;

pub use account::{
    Account, AccountKind, AccountOptions, Credentials, OAuthTokens, Platform, ProxyUrl,
    pattern_matches,
};
pub use group::Group;
pub use principal::{ApiKey, IpNet, KeyHash, KeyLimits, KeyRules, Limits, Principal, User};
pub use secret::Secret;
pub use usage::{Usage, UsageRecord};

macro_rules! id_type {
    ($(#[$m:meta])* $name:ident) => {
        $(#[$m])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize)]
        #[serde(transparent)]
        pub struct $name(pub i64);

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                self.0.fmt(f)
            }
        }
    };
}

id_type!(/// A user (wallet owner).
    UserId);
id_type!(/// A relay API key.
    KeyId);
id_type!(/// A pool of accounts with one platform and price multiplier.
    GroupId);
id_type!(/// An upstream account.
    AccountId);
