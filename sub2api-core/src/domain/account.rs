use std::borrow::Cow;
use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::{AccountId, GroupId, Secret};

/// The vendor an account (and a group) speaks to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Platform {
    Anthropic,
    Openai,
    Gemini,
}

impl Platform {
    pub fn as_str(self) -> &'static str {
        match self {
            Platform::Anthropic => "anthropic",
            Platform::Openai => "openai",
            Platform::Gemini => "gemini",
        }
    }

    pub fn default_base_url(self) -> &'static str {
        match self {
            Platform::Anthropic => "https://api.anthropic.com",
            Platform::Openai => "https://api.openai.com",
            Platform::Gemini => "https://generativelanguage.googleapis.com",
        }
    }

    /// Where subscription (OAuth) accounts of this platform are served: Claude Pro/Max use the
    /// public API, ChatGPT/Codex the ChatGPT backend, Gemini CLI accounts Code Assist.
    pub fn default_oauth_base_url(self) -> &'static str {
        match self {
            Platform::Anthropic => "https://api.anthropic.com",
            Platform::Openai => "https://chatgpt.com",
            Platform::Gemini => "https://cloudcode-pa.googleapis.com",
        }
    }
}

impl std::str::FromStr for Platform {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "anthropic" | "claude" => Ok(Platform::Anthropic),
            "openai" => Ok(Platform::Openai),
            "gemini" => Ok(Platform::Gemini),
            other => Err(format!(
                "unknown platform `{other}` (anthropic, openai, gemini)"
            )),
        }
    }
}

/// How an account authenticates upstream.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AccountKind {
    /// A vendor API key.
    Apikey,
    /// A subscription signed in through OAuth (refreshable access token).
    Oauth,
    /// A long-lived Claude setup token.
    SetupToken,
}

impl AccountKind {
    /// Subscription credentials (OAuth or a setup token), which carry the vendor's identity
    /// policy (Bearer auth, beta flags, a client fingerprint) rather than an API key's.
    pub fn is_subscription(self) -> bool {
        matches!(self, AccountKind::Oauth | AccountKind::SetupToken)
    }
}

/// An upstream account as the scheduler sees it: everything but its secret.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Account {
    pub id: AccountId,
    pub name: String,
    pub platform: Platform,
    pub kind: AccountKind,
    /// Where requests for this account go (the vendor's API, or any compatible server).
    pub base_url: String,
    /// Lower is preferred.
    pub priority: i32,
    /// Requests this account may have upstream at once.
    pub concurrency: u32,
    pub groups: Vec<GroupId>,
    pub enabled: bool,
    /// Per-account request shaping: model mapping and allowlist, proxy, vendor account ids.
    #[serde(default)]
    pub options: AccountOptions,
}

impl Account {
    /// The model to ask upstream for when a client asks for `model` (see
    /// [`AccountOptions::model_mapping`]).
    pub fn upstream_model<'a>(&'a self, model: &'a str) -> Cow<'a, str> {
        self.options.map_model(model)
    }

    /// Whether this account may serve `model` (the allowlist; empty allows everything).
    pub fn serves_model(&self, model: &str) -> bool {
        self.options.models.is_empty()
            || self
                .options
                .models
                .iter()
                .any(|p| pattern_matches(p, model))
    }
}

/// Settings of one account that shape its upstream requests. None of them is secret except the
/// proxy's password, which [`ProxyUrl`] keeps out of logs.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AccountOptions {
    /// Client model -> upstream model. Keys are exact ids or patterns with `*` (any run of
    /// characters); an exact key wins, then the longest matching pattern. The response's `model`
    /// is rewritten back to what the client asked.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub model_mapping: BTreeMap<String, String>,
    /// Models (ids or `*` patterns) this account may serve; empty = any. Selection skips accounts
    /// that do not serve the requested model.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub models: Vec<String>,
    /// Upstream proxy for this account (`http://`, `https://`, `socks5://`, `socks5h://`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub proxy: Option<ProxyUrl>,
    /// ChatGPT account id of a Codex OAuth account (`chatgpt-account-id` header).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub chatgpt_account_id: Option<String>,
    /// Google Cloud project of a Gemini Code Assist account.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub project_id: Option<String>,
}

impl AccountOptions {
    pub fn is_empty(&self) -> bool {
        *self == AccountOptions::default()
    }

    /// Applies [`AccountOptions::model_mapping`].
    pub fn map_model<'a>(&'a self, model: &'a str) -> Cow<'a, str> {
        if self.model_mapping.is_empty() {
            return Cow::Borrowed(model);
        }
        if let Some(to) = self.model_mapping.get(model) {
            return Cow::Borrowed(to);
        }
        self.model_mapping
            .iter()
            .filter(|(from, _)| from.contains('*') && pattern_matches(from, model))
            .max_by_key(|(from, _)| from.len())
            .map_or(Cow::Borrowed(model), |(_, to)| Cow::Borrowed(to.as_str()))
    }
}

/// Glob match with `*` as the only metacharacter (any run of characters, also empty).
pub fn pattern_matches(pattern: &str, s: &str) -> bool {
    let Some((first, rest)) = pattern.split_once('*') else {
        return pattern == s;
    };
    let Some(mut s) = s.strip_prefix(first) else {
        return false;
    };
    let mut parts: Vec<&str> = rest.split('*').collect();
    let last = parts.pop().unwrap_or("");
    for part in parts {
        match s.find(part) {
            Some(i) => s = &s[i + part.len()..],
            None => return false,
        }
    }
    s.len() >= last.len() && s.ends_with(last)
}

/// An upstream proxy URL. It may carry a password (`socks5://user:pass@host:1080`), so `Debug`
/// and `Display` show it without; [`ProxyUrl::expose`] is the way to the full URL.
#[derive(Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct ProxyUrl(String);

impl ProxyUrl {
    pub const SCHEMES: &'static [&'static str] =
        &["http://", "https://", "socks5://", "socks5h://"];

    pub fn parse(url: &str) -> Result<Self, String> {
        let url = url.trim();
        if !Self::SCHEMES.iter().any(|s| url.starts_with(s)) {
            return Err("proxy must start with http://, https://, socks5:// or socks5h://".into());
        }
        if url.len() <= url.find("://").map_or(0, |i| i + 3) {
            return Err("proxy has no host".into());
        }
        Ok(ProxyUrl(url.to_owned()))
    }

    pub fn expose(&self) -> &str {
        &self.0
    }

    /// The URL with any password replaced by `***`.
    pub fn redacted(&self) -> String {
        let Some((scheme, rest)) = self.0.split_once("://") else {
            return "[redacted]".into();
        };
        match rest.split_once('@') {
            Some((userinfo, host)) => {
                let user = userinfo.split_once(':').map_or(userinfo, |(u, _)| u);
                format!("{scheme}://{user}:***@{host}")
            }
            None => self.0.clone(),
        }
    }
}

impl TryFrom<String> for ProxyUrl {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        ProxyUrl::parse(&s)
    }
}

impl From<ProxyUrl> for String {
    fn from(p: ProxyUrl) -> String {
        p.0
    }
}

impl std::fmt::Debug for ProxyUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ProxyUrl({})", self.redacted())
    }
}

impl std::fmt::Display for ProxyUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.redacted())
    }
}

/// What is sent upstream to authenticate as an account.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Credentials {
    ApiKey(Secret),
    /// A static bearer token (a Claude setup token, or an OAuth access token without a refresh
    /// token).
    Bearer(Secret),
    /// A refreshable OAuth token pair.
    OAuth(OAuthTokens),
}

impl Credentials {
    /// The token sent as `Authorization: Bearer`, if these credentials are sent that way.
    pub fn bearer(&self) -> Option<&Secret> {
        match self {
            Credentials::ApiKey(_) => None,
            Credentials::Bearer(t) => Some(t),
            Credentials::OAuth(t) => Some(&t.access_token),
        }
    }
}

/// An OAuth access token with what is needed to renew it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OAuthTokens {
    pub access_token: Secret,
    pub refresh_token: Secret,
    /// When the access token expires (unix ms); `None` = unknown (refreshed only on a 401).
    pub expires_at_ms: Option<i64>,
}

impl OAuthTokens {
    /// True when the access token expires within `skew_ms` of `now_ms`.
    pub fn expires_within(&self, now_ms: i64, skew_ms: i64) -> bool {
        self.expires_at_ms.is_some_and(|at| at - skew_ms <= now_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns() {
        assert!(pattern_matches("gpt-4o", "gpt-4o"));
        assert!(!pattern_matches("gpt-4o", "gpt-4o-mini"));
        assert!(pattern_matches("gpt-4*", "gpt-4o-mini"));
        assert!(pattern_matches("*", "anything"));
        assert!(pattern_matches("claude-*-4-5", "claude-sonnet-4-5"));
        assert!(!pattern_matches("claude-*-4-5", "claude-sonnet-4-5-x"));
        assert!(pattern_matches("*-mini", "o4-mini"));
        assert!(!pattern_matches("a*a", "a"));
    }

    #[test]
    fn mapping_prefers_exact_then_longest_pattern() {
        let mut o = AccountOptions::default();
        o.model_mapping.insert("gpt-*".into(), "gpt-5".into());
        o.model_mapping.insert("gpt-4o*".into(), "gpt-4.1".into());
        o.model_mapping
            .insert("gpt-4o-mini".into(), "gpt-5-nano".into());
        assert_eq!(o.map_model("gpt-4o-mini"), "gpt-5-nano");
        assert_eq!(o.map_model("gpt-4o-2024"), "gpt-4.1");
        assert_eq!(o.map_model("gpt-3.5"), "gpt-5");
        assert_eq!(o.map_model("o3"), "o3");
    }

    #[test]
    fn proxy_is_redacted() {
        let p = ProxyUrl::parse("socks5://bob:hunter2@10.0.0.1:1080").unwrap();
        assert_eq!(format!("{p}"), "socks5://bob:***@10.0.0.1:1080");
        assert!(!format!("{p:?}").contains("hunter2"));
        assert_eq!(p.expose(), "socks5://bob:hunter2@10.0.0.1:1080");
        assert!(ProxyUrl::parse("ftp://x").is_err());
        let json = serde_json::to_string(&AccountOptions {
            proxy: Some(p.clone()),
            ..Default::default()
        })
        .unwrap();
        let back: AccountOptions = serde_json::from_str(&json).unwrap();
        assert_eq!(back.proxy, Some(p));
    }
}
