//! The operator's TOML file (`sub2api.toml`) and the `SUB2API_*` environment, shared by every
//! binary, and the idempotent seeding of the objects it declares.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use crate::domain::{
    AccountKind, AccountOptions, Credentials, KeyLimits, Limits, OAuthTokens, Platform, ProxyUrl,
    Secret,
};
use crate::ledger::{Credit, EntryKind, Ledger, LedgerError};
use crate::meter::HoldPolicy;
use crate::money::{Money, Multiplier};
use crate::relay::RelayConfig;
use crate::store::{Directory, NewAccount, NewGroup, NewKey, StoreError};

/// The whole file. Unknown keys are errors: a typo must not silently fall back to a default.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Listen address; `SUB2API_LISTEN` overrides. Default `127.0.0.1:8080`.
    pub listen: Option<String>,
    /// `sqlite://...` or `postgres://...`; `SUB2API_DATABASE_URL` overrides.
    pub database_url: Option<String>,
    /// SQLite only: `"full"` (the default) makes every settlement survive power loss before the
    /// client hears of it; `"normal"` survives a crash of the relay process (kill -9) but not of
    /// the machine, and saves an fsync per group of settlements. `SUB2API_SQLITE_SYNCHRONOUS`
    /// overrides.
    pub sqlite_synchronous: Option<String>,
    /// Enables the shared Redis scheduler; `SUB2API_REDIS_URL` overrides.
    pub redis_url: Option<String>,
    /// The admin API key (`Authorization: Bearer` on `/api/v1/admin/`); `SUB2API_ADMIN_KEY`
    /// overrides. Without one, a key is generated on first start, printed once and kept hashed.
    pub admin_key: Option<String>,
    /// A LiteLLM-format price file replacing the bundled table.
    pub pricing_file: Option<PathBuf>,
    #[serde(default)]
    pub relay: RelaySection,
    #[serde(default)]
    pub groups: Vec<GroupSeed>,
    #[serde(default)]
    pub accounts: Vec<AccountSeed>,
    #[serde(default)]
    pub users: Vec<UserSeed>,
    #[serde(default)]
    pub keys: Vec<KeySeed>,
    /// `[oauth.anthropic]`, `[oauth.openai]`, `[oauth.google]`: token endpoints and clients.
    #[serde(default)]
    pub oauth: crate::oauth::OAuthConfig,
    /// `[payments]`: user top-ups through Stripe, Alipay, WeChat Pay and EasyPay.
    #[serde(default)]
    pub payments: Option<crate::payment::PaymentsConfig>,
}

/// Request-path tunables.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RelaySection {
    pub max_body_bytes: usize,
    pub drain_timeout_secs: u64,
    pub first_byte_timeout_secs: u64,
    pub max_attempts: u32,
    /// `0` = strict holds (every body byte a token, the default); `N` = N bytes per token.
    pub hold_bytes_per_token: u32,
    pub sticky_ttl_secs: u64,
    /// The most session bindings the in-process scheduler keeps (least recently used forgotten
    /// beyond it). Redis expires its bindings by TTL instead.
    pub max_sticky_sessions: usize,
    /// How long a request waits for a free account slot, and for a free slot of its key and
    /// user.
    pub queue_wait_secs: u64,
    /// `0` (the default): off. `N`: an Anthropic stream (`"stream": true` on `/v1/messages`) that
    /// has waited N ms is answered `200` at once and sent an SSE `ping` every N ms until its
    /// answer is ready; a failure after that is an SSE `error` event instead of a status code.
    pub stream_wait_pings_after_ms: u64,
}

impl Default for RelaySection {
    fn default() -> Self {
        let r = RelayConfig::default();
        RelaySection {
            max_body_bytes: r.max_body_bytes,
            drain_timeout_secs: r.drain_timeout.as_secs(),
            first_byte_timeout_secs: r.first_byte_timeout.as_secs(),
            max_attempts: r.max_attempts,
            hold_bytes_per_token: 0,
            sticky_ttl_secs: 3600,
            max_sticky_sessions: crate::memory::SchedulerConfig::default().max_sticky_sessions,
            queue_wait_secs: 60,
            stream_wait_pings_after_ms: 0,
        }
    }
}

impl RelaySection {
    pub fn relay_config(&self) -> RelayConfig {
        RelayConfig {
            max_body_bytes: self.max_body_bytes,
            drain_timeout: Duration::from_secs(self.drain_timeout_secs),
            first_byte_timeout: Duration::from_secs(self.first_byte_timeout_secs),
            max_attempts: self.max_attempts,
            stream_wait_pings_after: (self.stream_wait_pings_after_ms > 0)
                .then(|| Duration::from_millis(self.stream_wait_pings_after_ms)),
        }
    }

    pub fn hold_policy(&self) -> HoldPolicy {
        match self.hold_bytes_per_token {
            0 => HoldPolicy::Strict,
            n => HoldPolicy::Estimated { bytes_per_token: n },
        }
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GroupSeed {
    pub name: String,
    #[serde(default = "anthropic")]
    pub platform: Platform,
    #[serde(default)]
    pub rate_multiplier: Multiplier,
}

fn anthropic() -> Platform {
    Platform::Anthropic
}

fn default_priority() -> i32 {
    50
}

fn default_concurrency() -> u32 {
    4
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AccountSeed {
    pub name: String,
    #[serde(default = "anthropic")]
    pub platform: Platform,
    #[serde(rename = "type", default = "apikey")]
    pub kind: AccountKind,
    pub api_key: Option<String>,
    pub access_token: Option<String>,
    /// `type = "oauth"`: the refresh token (access tokens are then renewed before expiry).
    #[serde(default)]
    pub refresh_token: Option<String>,
    /// When `access_token` expires: unix seconds (or ms), or an RFC 3339 time.
    #[serde(default)]
    pub expires_at: Option<ExpiresAt>,
    /// `base_url` defaults to the platform's API (`apikey`) or subscription endpoint (`oauth`).
    pub base_url: Option<String>,
    #[serde(default = "default_priority")]
    pub priority: i32,
    #[serde(default = "default_concurrency")]
    pub concurrency: u32,
    #[serde(default)]
    pub groups: Vec<String>,
    /// Client model -> upstream model (`*` wildcards allowed in keys).
    #[serde(default)]
    pub model_mapping: std::collections::BTreeMap<String, String>,
    /// Models this account serves (`*` wildcards); empty = any.
    #[serde(default)]
    pub models: Vec<String>,
    /// `socks5://`, `socks5h://`, `http://` or `https://` proxy for this account's upstream traffic.
    #[serde(default)]
    pub proxy: Option<String>,
    /// Codex OAuth accounts: the ChatGPT account id (`chatgpt-account-id`).
    #[serde(default)]
    pub chatgpt_account_id: Option<String>,
    /// Gemini Code Assist accounts: the Google Cloud project.
    #[serde(default)]
    pub project_id: Option<String>,
}

/// An expiry time in unix milliseconds, written as unix seconds, unix milliseconds or RFC 3339.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ExpiresAt(pub i64);

impl<'de> Deserialize<'de> for ExpiresAt {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Int(i64),
            Text(String),
        }
        let from_int = |n: i64| if n > 100_000_000_000 { n } else { n * 1000 };
        match Raw::deserialize(d)? {
            Raw::Int(n) => Ok(ExpiresAt(from_int(n))),
            Raw::Text(t) => match t.trim().parse::<i64>() {
                Ok(n) => Ok(ExpiresAt(from_int(n))),
                Err(_) => time::OffsetDateTime::parse(
                    t.trim(),
                    &time::format_description::well_known::Rfc3339,
                )
                .map(|t| ExpiresAt((t.unix_timestamp_nanos() / 1_000_000) as i64))
                .map_err(|_| {
                    serde::de::Error::custom("expires_at: unix seconds or an RFC 3339 time")
                }),
            },
        }
    }
}

impl AccountSeed {
    /// A seed with the defaults of the file format (tests and code that build configs).
    pub fn new(name: impl Into<String>, platform: Platform, kind: AccountKind) -> Self {
        AccountSeed {
            name: name.into(),
            platform,
            kind,
            api_key: None,
            access_token: None,
            refresh_token: None,
            expires_at: None,
            base_url: None,
            priority: default_priority(),
            concurrency: default_concurrency(),
            groups: Vec::new(),
            model_mapping: Default::default(),
            models: Vec::new(),
            proxy: None,
            chatgpt_account_id: None,
            project_id: None,
        }
    }

    fn options(&self) -> Result<AccountOptions, ConfigError> {
        let proxy = match &self.proxy {
            Some(p) => Some(
                ProxyUrl::parse(p)
                    .map_err(|e| ConfigError::Seed(format!("account `{}`: {e}", self.name)))?,
            ),
            None => None,
        };
        Ok(AccountOptions {
            model_mapping: self.model_mapping.clone(),
            models: self.models.clone(),
            proxy,
            chatgpt_account_id: self.chatgpt_account_id.clone(),
            project_id: self.project_id.clone(),
        })
    }

    fn credentials(&self) -> Result<Credentials, ConfigError> {
        let missing =
            |what: &str| ConfigError::Seed(format!("account `{}`: {what} required", self.name));
        Ok(match self.kind {
            AccountKind::Apikey => Credentials::ApiKey(Secret::new(
                self.api_key.clone().ok_or_else(|| missing("api_key"))?,
            )),
            AccountKind::Oauth => match &self.refresh_token {
                Some(refresh) => Credentials::OAuth(OAuthTokens {
                    access_token: Secret::new(self.access_token.clone().unwrap_or_default()),
                    refresh_token: Secret::new(refresh.clone()),
                    // No access token yet: expired, so the first request refreshes.
                    expires_at_ms: match (&self.access_token, self.expires_at) {
                        (None, _) => Some(0),
                        (Some(_), e) => e.map(|e| e.0),
                    },
                }),
                None => Credentials::Bearer(Secret::new(
                    self.access_token
                        .clone()
                        .ok_or_else(|| missing("access_token or refresh_token"))?,
                )),
            },
            AccountKind::SetupToken => Credentials::Bearer(Secret::new(
                self.access_token
                    .clone()
                    .ok_or_else(|| missing("access_token"))?,
            )),
        })
    }
}

fn apikey() -> AccountKind {
    AccountKind::Apikey
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserSeed {
    pub email: String,
    /// The opening balance, credited once when the user is first seeded. Changing it later does
    /// not reset a balance that has moved since; use the admin API for adjustments.
    #[serde(default)]
    pub balance_usd: Money,
    pub password: Option<String>,
    /// Requests in flight at once over all of the user's keys. Given here, it is applied at
    /// every start (the file wins over an API change); absent, the stored limit is kept.
    pub concurrency: Option<u32>,
    /// Requests per minute over all of the user's keys; applied like `concurrency`.
    pub rpm: Option<u32>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeySeed {
    pub user: String,
    pub group: String,
    /// The key itself; generated (and printed once) when absent.
    pub key: Option<String>,
    pub name: Option<String>,
    pub concurrency: Option<u32>,
    pub rpm: Option<u32>,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {0}: {1}")]
    Read(PathBuf, std::io::Error),
    #[error("invalid config {0}: {1}")]
    Parse(PathBuf, String),
    #[error("invalid seed: {0}")]
    Seed(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Ledger(#[from] LedgerError),
}

impl Config {
    /// Reads `path`, or `sub2api.toml` in the working directory if present, or nothing.
    pub fn load(path: Option<&std::path::Path>) -> Result<Config, ConfigError> {
        let (path, required) = match path {
            Some(p) => (p.to_path_buf(), true),
            None => (PathBuf::from("sub2api.toml"), false),
        };
        let mut c: Config = match std::fs::read_to_string(&path) {
            Ok(text) => toml::from_str(&text)
                .map_err(|e| ConfigError::Parse(path.clone(), e.to_string()))?,
            Err(e) if !required && e.kind() == std::io::ErrorKind::NotFound => Config::default(),
            Err(e) => return Err(ConfigError::Read(path, e)),
        };
        c.apply_env(|k| std::env::var(k).ok());
        Ok(c)
    }

    /// `SUB2API_*` variables override the file.
    pub fn apply_env(&mut self, var: impl Fn(&str) -> Option<String>) {
        if let Some(v) = var("SUB2API_LISTEN") {
            self.listen = Some(v);
        }
        if let Some(v) = var("SUB2API_DATABASE_URL") {
            self.database_url = Some(v);
        }
        if let Some(v) = var("SUB2API_REDIS_URL") {
            self.redis_url = Some(v);
        }
        if let Some(v) = var("SUB2API_SQLITE_SYNCHRONOUS") {
            self.sqlite_synchronous = Some(v);
        }
        if let Some(v) = var("SUB2API_ADMIN_KEY") {
            self.admin_key = Some(v);
        }
    }

    pub fn listen(&self) -> &str {
        self.listen.as_deref().unwrap_or("127.0.0.1:8080")
    }

    pub fn database_url(&self) -> &str {
        self.database_url
            .as_deref()
            .unwrap_or("sqlite://data/sub2api.db")
    }
}

/// What seeding did that the operator must see once.
#[derive(Debug, Default)]
pub struct SeedReport {
    /// Keys generated because the file gave none: `(user email, key name, plaintext key)`.
    pub generated_keys: Vec<(String, String, Secret)>,
    pub users_created: usize,
}

/// Applies the file's seed objects. Idempotent: running it again changes nothing, and a user's
/// opening balance is credited through the ledger under the key `seed:<email>`, so it is credited
/// exactly once however often (or however interrupted) seeding runs.
pub async fn apply_seed(
    config: &Config,
    dir: &dyn Directory,
    ledger: &dyn Ledger,
) -> Result<SeedReport, ConfigError> {
    let mut report = SeedReport::default();
    for g in &config.groups {
        dir.upsert_group(NewGroup {
            name: g.name.clone(),
            platform: g.platform,
            rate_multiplier: g.rate_multiplier,
        })
        .await?;
    }
    let existing = if config.accounts.iter().any(|a| a.kind == AccountKind::Oauth) {
        dir.accounts().await?
    } else {
        Vec::new()
    };
    let statuses = if existing.is_empty() {
        Vec::new()
    } else {
        dir.account_statuses().await?
    };
    for a in &config.accounts {
        let mut credentials = a.credentials()?;
        // Refresh tokens rotate: once the relay has refreshed a seeded OAuth account, the file's
        // token is spent, so a restart keeps the stored tokens. The file's tokens apply again
        // only when the stored ones died (the account was disabled).
        if let Credentials::OAuth(_) = credentials
            && let Some(old) = existing.iter().find(|x| x.name == a.name)
            && !statuses.iter().any(|(id, s)| {
                *id == old.id
                    && matches!(s, crate::account_provider::AccountStatus::Disabled { .. })
            })
            && let Ok(stored @ Credentials::OAuth(_)) = dir.account_credentials(old.id).await
        {
            credentials = stored;
        }
        let options = a.options()?;
        let default_base = match a.kind {
            AccountKind::Apikey => a.platform.default_base_url(),
            _ => a.platform.default_oauth_base_url(),
        };
        let base_url = a
            .base_url
            .clone()
            .unwrap_or_else(|| default_base.to_owned());
        if !(base_url.starts_with("http://") || base_url.starts_with("https://")) {
            return Err(ConfigError::Seed(format!(
                "account `{}`: base_url must be http(s)",
                a.name
            )));
        }
        if a.concurrency == 0 {
            return Err(ConfigError::Seed(format!(
                "account `{}`: concurrency must be at least 1",
                a.name
            )));
        }
        dir.upsert_account(NewAccount {
            name: a.name.clone(),
            platform: a.platform,
            kind: a.kind,
            base_url,
            priority: a.priority,
            concurrency: a.concurrency,
            groups: a.groups.clone(),
            credentials,
            options,
        })
        .await?;
    }
    for u in &config.users {
        if !u.email.contains('@') {
            return Err(ConfigError::Seed(format!(
                "user `{}`: not an email address",
                u.email
            )));
        }
        if u.balance_usd.is_negative() {
            return Err(ConfigError::Seed(format!(
                "user `{}`: balance_usd must not be negative",
                u.email
            )));
        }
        if u.concurrency == Some(0) || u.rpm == Some(0) {
            return Err(ConfigError::Seed(format!(
                "user `{}`: concurrency and rpm must be at least 1 (omit them for no limit)",
                u.email
            )));
        }
        let (user, created) = dir.ensure_user(&u.email).await?;
        report.users_created += created as usize;
        if u.concurrency.is_some() || u.rpm.is_some() {
            let limits = Limits {
                concurrency: u.concurrency,
                rpm: u.rpm,
            };
            if user.limits != limits {
                dir.set_user_limits(user.id, &limits).await?;
            }
        }
        let out = ledger
            .credit(Credit {
                user_id: user.id,
                amount: u.balance_usd,
                idempotency_key: format!("seed:{}", u.email),
                kind: EntryKind::Credit,
                memo: "opening balance from the seed file".into(),
            })
            .await?;
        if !out.replayed {
            tracing::info!(email = %u.email, balance = %u.balance_usd, "seeded opening balance");
        }
    }
    for k in &config.keys {
        let user = dir.user_by_email(&k.user).await?.ok_or_else(|| {
            ConfigError::Seed(format!("key for `{}`: no such user in [[users]]", k.user))
        })?;
        let group = dir.group_by_name(&k.group).await?.ok_or_else(|| {
            ConfigError::Seed(format!("key for `{}`: no such group `{}`", k.user, k.group))
        })?;
        let name = k
            .name
            .clone()
            .unwrap_or_else(|| format!("seed-{}", group.name));
        let limits = KeyLimits {
            concurrency: k.concurrency,
            rpm: k.rpm,
        };
        let key = match &k.key {
            Some(key) => Secret::new(key.clone()),
            None => {
                let existing = dir.keys_of(user.id).await?;
                if existing
                    .iter()
                    .any(|x| x.name == name && x.group_id == group.id)
                {
                    continue;
                }
                let key = generate_key();
                report
                    .generated_keys
                    .push((k.user.clone(), name.clone(), key.clone()));
                key
            }
        };
        dir.ensure_key(NewKey {
            user_id: user.id,
            group_id: group.id,
            name,
            key,
            limits,
        })
        .await?;
    }
    Ok(report)
}

/// A new relay API key: `sk-` and 48 hex characters of OS randomness.
pub fn generate_key() -> Secret {
    let bytes: [u8; 24] = rand::random();
    Secret::new(format!("sk-{}", hex::encode(bytes)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory::{MemoryDirectory, MemoryLedger};

    const FILE: &str = r#"
        [[groups]]
        name = "default"
        platform = "anthropic"
        rate_multiplier = "1.5"

        [[accounts]]
        name = "a1"
        api_key = "sk-ant-1"
        base_url = "http://127.0.0.1:9"
        groups = ["default"]

        [[users]]
        email = "alice@example.com"
        balance_usd = "10.00"

        [[keys]]
        user = "alice@example.com"
        group = "default"
        key = "sk-alice"

        [[keys]]
        user = "alice@example.com"
        group = "default"
        name = "generated"
    "#;

    #[tokio::test]
    async fn seeding_twice_changes_nothing() {
        let c: Config = toml::from_str(FILE).unwrap();
        let dir = MemoryDirectory::new();
        let ledger = MemoryLedger::new();
        let r1 = apply_seed(&c, &dir, &ledger).await.unwrap();
        assert_eq!(r1.generated_keys.len(), 1);
        let user = dir
            .user_by_email("alice@example.com")
            .await
            .unwrap()
            .unwrap();
        // Spend some, then seed again: the balance must not be reset.
        ledger
            .credit(Credit {
                user_id: user.id,
                amount: Money::usd(-3),
                idempotency_key: "spend".into(),
                kind: EntryKind::Adjustment,
                memo: String::new(),
            })
            .await
            .unwrap();
        let r2 = apply_seed(&c, &dir, &ledger).await.unwrap();
        assert!(r2.generated_keys.is_empty());
        assert_eq!(ledger.balance(user.id).await.unwrap().total, Money::usd(7));
        assert_eq!(dir.keys_of(user.id).await.unwrap().len(), 2);
        assert_eq!(
            dir.groups().await.unwrap()[0].rate_multiplier,
            Multiplier::parse("1.5").unwrap()
        );
    }

    #[tokio::test]
    async fn seeded_user_limits_reach_the_principal_and_follow_the_file() {
        let file = |limits: &str| {
            toml::from_str::<Config>(&format!(
                "[[groups]]\nname = \"g\"\nplatform = \"anthropic\"\n\
                 [[users]]\nemail = \"bob@example.com\"\n{limits}\n\
                 [[keys]]\nuser = \"bob@example.com\"\ngroup = \"g\"\nkey = \"sk-bob\"\nrpm = 9\n"
            ))
            .unwrap()
        };
        let dir = MemoryDirectory::new();
        let ledger = MemoryLedger::new();
        apply_seed(&file("concurrency = 2\nrpm = 30"), &dir, &ledger)
            .await
            .unwrap();
        let p = dir
            .principal(&crate::domain::KeyHash::of("sk-bob"))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            p.user_limits,
            Limits {
                concurrency: Some(2),
                rpm: Some(30)
            }
        );
        assert_eq!(p.limits.rpm, Some(9));
        // A file without limits keeps what is stored; one with limits replaces them.
        apply_seed(&file(""), &dir, &ledger).await.unwrap();
        let u = dir.user_by_email("bob@example.com").await.unwrap().unwrap();
        assert_eq!(u.limits.concurrency, Some(2));
        apply_seed(&file("rpm = 5"), &dir, &ledger).await.unwrap();
        let u = dir.user_by_email("bob@example.com").await.unwrap().unwrap();
        assert_eq!(
            u.limits,
            Limits {
                concurrency: None,
                rpm: Some(5)
            }
        );
        assert!(
            apply_seed(&file("concurrency = 0"), &dir, &ledger)
                .await
                .is_err()
        );
    }

    #[test]
    fn rejects_unknown_fields_and_float_balances() {
        assert!(toml::from_str::<Config>("[[users]]\nemail='a@b'\nbalance='1'").is_err());
        assert!(toml::from_str::<Config>("[[users]]\nemail='a@b'\nbalance_usd=1.5").is_err());
        assert!(toml::from_str::<Config>("[[users]]\nemail='a@b'\nbalance_usd=2").is_ok());
    }
}
