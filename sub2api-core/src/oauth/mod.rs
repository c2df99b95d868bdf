//! OAuth subscription accounts: onboarding (PKCE authorize URL, code exchange) and token
//! refresh for Claude Pro/Max, ChatGPT/Codex and Gemini Code Assist accounts.
//!
//! - [`start`] makes a [`PendingAuthorization`] (its PKCE verifier and what account to create)
//!   and the authorize URL the operator opens; the pending authorization is kept in the
//!   [`Directory`](crate::store::Directory) so the exchange may happen in another process (the
//!   CLI) or on another node (the admin API).
//! - [`complete`] exchanges the code the vendor showed for tokens and saves the account.
//! - [`TokenClient::refresh`] renews an access token; the account provider calls it before expiry
//!   and once after a 401, single-flight per account (a per-account mutex in process, a
//!   [`RefreshLock`] across the cluster), because refresh tokens rotate and two concurrent
//!   refreshes lose the account (`invalid_grant`).
//!
//! Endpoints and client ids are the vendors' public ones (PROTOCOLS.md), each overridable in
//! `[oauth.anthropic]`, `[oauth.openai]` and `[oauth.google]`.

mod client;
pub mod pkce;
mod refresh;

pub use client::{OAuthError, TokenClient, TokenSet};
pub use refresh::{ProcessRefreshLock, RefreshGuard, RefreshLock};

use serde::{Deserialize, Serialize};

use crate::account_provider::now_ms;
use crate::domain::{
    Account, AccountKind, AccountOptions, Credentials, OAuthTokens, Platform, Secret,
};
use crate::store::{Directory, NewAccount, StoreError};

/// One vendor's OAuth endpoints as configured; unset fields take the vendor's defaults.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ProviderSettings {
    pub token_url: Option<String>,
    pub authorize_url: Option<String>,
    pub client_id: Option<String>,
    pub client_secret: Option<String>,
    pub redirect_uri: Option<String>,
    pub scope: Option<String>,
}

/// `[oauth]`: the three vendors' endpoints.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OAuthConfig {
    pub anthropic: ProviderSettings,
    pub openai: ProviderSettings,
    pub google: ProviderSettings,
}

/// Resolved endpoints of one vendor.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Endpoints {
    pub token_url: String,
    pub authorize_url: String,
    pub client_id: String,
    pub client_secret: Option<String>,
    pub redirect_uri: String,
    pub scope: String,
}

/// Claude Code's public OAuth client.
pub const ANTHROPIC_CLIENT_ID: &str = "9d1c250a-e61b-44d9-88ed-5944d1962f5e";
/// The scope of a setup token (inference only, one year).
pub const ANTHROPIC_SETUP_TOKEN_SCOPE: &str = "user:inference";
/// Codex CLI's public OAuth client.
pub const OPENAI_CLIENT_ID: &str = "app_EMoamEEZ73f0CkXaXp7hrann";
/// Gemini CLI's public ("installed application") OAuth client, as published in its source.
pub const GOOGLE_CLIENT_ID: &str =
    "681255809395-oo8ft2oprdrnp9e3aqf6av3hmdib135j.apps.googleusercontent.com";
pub const GOOGLE_CLIENT_SECRET: &str = "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";

impl OAuthConfig {
    pub fn endpoints(&self, platform: Platform) -> Endpoints {
        let (s, d) = match platform {
            Platform::Anthropic => (
                &self.anthropic,
                Endpoints {
                    token_url: "https://platform.claude.com/v1/oauth/token".into(),
                    authorize_url: "https://claude.ai/oauth/authorize".into(),
                    client_id: ANTHROPIC_CLIENT_ID.into(),
                    client_secret: None,
                    redirect_uri: "https://platform.claude.com/oauth/code/callback".into(),
                    scope: "org:create_api_key user:profile user:inference user:sessions:claude_code user:mcp_servers user:file_upload".into(),
                },
            ),
            Platform::Openai => (
                &self.openai,
                Endpoints {
                    token_url: "https://auth.openai.com/oauth/token".into(),
                    authorize_url: "https://auth.openai.com/oauth/authorize".into(),
                    client_id: OPENAI_CLIENT_ID.into(),
                    client_secret: None,
                    redirect_uri: "http://localhost:1455/auth/callback".into(),
                    scope: "openid profile email offline_access".into(),
                },
            ),
            Platform::Gemini => (
                &self.google,
                Endpoints {
                    token_url: "https://oauth2.googleapis.com/token".into(),
                    authorize_url: "https://accounts.google.com/o/oauth2/v2/auth".into(),
                    client_id: GOOGLE_CLIENT_ID.into(),
                    client_secret: Some(GOOGLE_CLIENT_SECRET.into()),
                    redirect_uri: "http://localhost:8085/oauth2callback".into(),
                    scope: "https://www.googleapis.com/auth/cloud-platform https://www.googleapis.com/auth/userinfo.email https://www.googleapis.com/auth/userinfo.profile".into(),
                },
            ),
        };
        let pick = |v: &Option<String>, d: String| v.clone().filter(|v| !v.is_empty()).unwrap_or(d);
        Endpoints {
            token_url: pick(&s.token_url, d.token_url),
            authorize_url: pick(&s.authorize_url, d.authorize_url),
            client_id: pick(&s.client_id, d.client_id),
            client_secret: s.client_secret.clone().or(d.client_secret),
            redirect_uri: pick(&s.redirect_uri, d.redirect_uri),
            scope: pick(&s.scope, d.scope),
        }
    }
}

/// The account an authorization will create once it is exchanged.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct PendingAccount {
    pub name: String,
    pub groups: Vec<String>,
    pub priority: i32,
    pub concurrency: u32,
    /// `None`: the platform's subscription endpoint.
    pub base_url: Option<String>,
    pub options: AccountOptions,
}

/// An authorization that was started and not yet exchanged. Short-lived: [`PENDING_TTL_MS`].
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingAuthorization {
    pub state: String,
    pub platform: Platform,
    /// The PKCE verifier; only useful together with the code the vendor shows the operator.
    pub code_verifier: String,
    pub redirect_uri: String,
    /// A Claude setup token (inference scope, one year) rather than a full OAuth sign-in.
    pub setup_token: bool,
    pub account: PendingAccount,
    pub created_at_ms: i64,
}

impl std::fmt::Debug for PendingAuthorization {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PendingAuthorization")
            .field("platform", &self.platform)
            .field("account", &self.account.name)
            .field("setup_token", &self.setup_token)
            .finish_non_exhaustive()
    }
}

/// How long a started authorization can be completed.
pub const PENDING_TTL_MS: i64 = 30 * 60 * 1000;

/// Starts an authorization: the pending record (to save) and the URL the operator opens.
pub fn start(
    config: &OAuthConfig,
    platform: Platform,
    setup_token: bool,
    account: PendingAccount,
) -> Result<(PendingAuthorization, String), OAuthError> {
    if platform == Platform::Gemini {
        return Err(OAuthError::Unsupported("Gemini accounts are added with the refresh token of a signed-in Gemini CLI (type = \"oauth\", refresh_token, project_id)".into()));
    }
    if setup_token && platform != Platform::Anthropic {
        return Err(OAuthError::Unsupported(
            "setup tokens exist for anthropic only".into(),
        ));
    }
    let ep = config.endpoints(platform);
    let verifier = pkce::verifier();
    let state = pkce::state();
    let challenge = pkce::challenge(&verifier);
    let scope = if setup_token {
        ANTHROPIC_SETUP_TOKEN_SCOPE.to_owned()
    } else {
        ep.scope.clone()
    };
    let mut params: Vec<(&str, &str)> = Vec::new();
    if platform == Platform::Anthropic {
        params.push(("code", "true"));
    }
    params.extend([
        ("client_id", ep.client_id.as_str()),
        ("response_type", "code"),
        ("redirect_uri", ep.redirect_uri.as_str()),
        ("scope", scope.as_str()),
        ("code_challenge", challenge.as_str()),
        ("code_challenge_method", "S256"),
        ("state", state.as_str()),
    ]);
    if platform == Platform::Openai {
        params.extend([
            ("id_token_add_organizations", "true"),
            ("codex_cli_simplified_flow", "true"),
        ]);
    }
    let url = format!("{}?{}", ep.authorize_url, pkce::form(&params));
    let pending = PendingAuthorization {
        state,
        platform,
        code_verifier: verifier,
        redirect_uri: ep.redirect_uri,
        setup_token,
        account,
        created_at_ms: now_ms(),
    };
    Ok((pending, url))
}

/// What the operator pasted: Claude's page shows `code#state`, an OpenAI sign-in ends on
/// `http://localhost:1455/auth/callback?code=..&state=..` (the whole URL may be pasted), or just
/// the code.
pub fn split_code(input: &str) -> (String, Option<String>) {
    let input = input.trim();
    if let Some((_, query)) = input.split_once('?') {
        let mut code = None;
        let mut state = None;
        for kv in query.split(['&', '#']) {
            if let Some(v) = kv.strip_prefix("code=") {
                code = Some(decode(v));
            } else if let Some(v) = kv.strip_prefix("state=") {
                state = Some(decode(v));
            }
        }
        if let Some(code) = code {
            return (code, state);
        }
    }
    match input.split_once('#') {
        Some((code, state)) if !state.is_empty() => (code.to_owned(), Some(state.to_owned())),
        _ => (input.to_owned(), None),
    }
}

fn decode(v: &str) -> String {
    let hex = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
    let b = v.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match (
            b[i],
            b.get(i + 1).copied().and_then(hex),
            b.get(i + 2).copied().and_then(hex),
        ) {
            (b'%', Some(h), Some(l)) => {
                out.push(h << 4 | l);
                i += 3;
            }
            (b'+', ..) => {
                out.push(b' ');
                i += 1;
            }
            (c, ..) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The account to save for a completed authorization.
pub fn new_account(pending: &PendingAuthorization, tokens: &TokenSet) -> NewAccount {
    let expires_at_ms = tokens.expires_in.map(|s| now_ms() + s as i64 * 1000);
    let (kind, credentials) = match (&tokens.refresh_token, pending.setup_token) {
        (_, true) => (
            AccountKind::SetupToken,
            Credentials::Bearer(tokens.access_token.clone()),
        ),
        (Some(refresh), false) => (
            AccountKind::Oauth,
            Credentials::OAuth(OAuthTokens {
                access_token: tokens.access_token.clone(),
                refresh_token: refresh.clone(),
                expires_at_ms,
            }),
        ),
        (None, false) => (
            AccountKind::Oauth,
            Credentials::Bearer(tokens.access_token.clone()),
        ),
    };
    let mut options = pending.account.options.clone();
    if pending.platform == Platform::Openai && options.chatgpt_account_id.is_none() {
        options.chatgpt_account_id = tokens.chatgpt_account_id.clone();
    }
    NewAccount {
        name: pending.account.name.clone(),
        platform: pending.platform,
        kind,
        base_url: pending
            .account
            .base_url
            .clone()
            .unwrap_or_else(|| pending.platform.default_oauth_base_url().to_owned()),
        priority: pending.account.priority,
        concurrency: pending.account.concurrency.max(1),
        groups: pending.account.groups.clone(),
        credentials,
        options,
    }
}

/// Starts an authorization and keeps it in the directory: returns the URL the operator opens.
/// The CLI (`sub2api account oauth-url`) and the admin API call this.
pub async fn begin(
    dir: &dyn Directory,
    config: &OAuthConfig,
    platform: Platform,
    setup_token: bool,
    account: PendingAccount,
) -> Result<String, OAuthError> {
    if account.name.trim().is_empty() {
        return Err(OAuthError::Unsupported("the account needs a name".into()));
    }
    let (pending, url) = start(config, platform, setup_token, account)?;
    dir.save_pending_authorization(&pending).await?;
    Ok(url)
}

/// Completes an authorization from what the operator pasted: finds the pending record (by the
/// pasted state, else the newest), exchanges the code and saves the account.
pub async fn complete(
    dir: &dyn Directory,
    client: &TokenClient,
    pasted: &str,
) -> Result<Account, OAuthError> {
    let (code, state) = split_code(pasted);
    if code.is_empty() {
        return Err(OAuthError::Unsupported(
            "no authorization code given".into(),
        ));
    }
    let pending = dir
        .take_pending_authorization(state.as_deref())
        .await?
        .ok_or_else(|| {
            OAuthError::Unsupported(
                "no pending authorization: run `sub2api account oauth-url` first".into(),
            )
        })?;
    if now_ms() - pending.created_at_ms > PENDING_TTL_MS {
        return Err(OAuthError::Unsupported(
            "the authorization expired (30 minutes): start again".into(),
        ));
    }
    let tokens = client.exchange(&pending, &code, state.as_deref()).await?;
    Ok(dir.upsert_account(new_account(&pending, &tokens)).await?)
}

impl From<StoreError> for OAuthError {
    fn from(e: StoreError) -> Self {
        OAuthError::Store(e.to_string())
    }
}

/// Redacted display of a token for logs: never more than its length.
pub fn describe(token: &Secret) -> String {
    format!("[{} chars]", token.expose().len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn authorize_urls() {
        let cfg = OAuthConfig::default();
        let (p, url) = start(
            &cfg,
            Platform::Anthropic,
            false,
            PendingAccount {
                name: "c1".into(),
                ..Default::default()
            },
        )
        .unwrap();
        assert!(url.starts_with("https://claude.ai/oauth/authorize?code=true&client_id=9d1c250a-"));
        assert!(url.contains(&format!(
            "code_challenge={}",
            pkce::challenge(&p.code_verifier)
        )));
        assert!(url.contains(&format!("state={}", p.state)));
        assert!(url.contains("scope=org%3Acreate_api_key%20user%3Aprofile"));
        let (_, url) = start(&cfg, Platform::Openai, false, PendingAccount::default()).unwrap();
        assert!(url.starts_with(
            "https://auth.openai.com/oauth/authorize?client_id=app_EMoamEEZ73f0CkXaXp7hrann"
        ));
        assert!(url.contains("redirect_uri=http%3A%2F%2Flocalhost%3A1455%2Fauth%2Fcallback"));
        let (_, url) = start(&cfg, Platform::Anthropic, true, PendingAccount::default()).unwrap();
        assert!(url.contains("scope=user%3Ainference&"));
        assert!(start(&cfg, Platform::Gemini, false, PendingAccount::default()).is_err());
    }

    #[test]
    fn overrides_keep_other_defaults() {
        let cfg: OAuthConfig =
            toml::from_str("[anthropic]\ntoken_url = \"http://127.0.0.1:1/token\"").unwrap();
        let ep = cfg.endpoints(Platform::Anthropic);
        assert_eq!(ep.token_url, "http://127.0.0.1:1/token");
        assert_eq!(ep.client_id, ANTHROPIC_CLIENT_ID);
        assert_eq!(
            cfg.endpoints(Platform::Openai).token_url,
            "https://auth.openai.com/oauth/token"
        );
    }

    #[test]
    fn pasted_codes() {
        assert_eq!(split_code("abc#st"), ("abc".into(), Some("st".into())));
        assert_eq!(split_code(" abc "), ("abc".into(), None));
        assert_eq!(
            split_code("http://localhost:1455/auth/callback?code=a%2Fb&scope=x&state=s1"),
            ("a/b".into(), Some("s1".into()))
        );
    }
}
