//! The vendors' token endpoints: code exchange and refresh.

use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::Deserialize;
use serde_json::json;

use super::{Endpoints, OAuthConfig, PendingAuthorization, pkce};
use crate::domain::{Account, Platform, ProxyUrl, Secret};
use crate::layer::upstream::ClientPool;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OAuthError {
    /// The vendor refused the grant (`invalid_grant`: the refresh token was used or revoked).
    /// Permanent: the account needs a new sign-in.
    #[error("token endpoint refused the grant ({status}): {message}")]
    Rejected { status: u16, message: String },
    /// The token endpoint could not be reached or failed (retry later).
    #[error("token endpoint unavailable: {0}")]
    Transient(String),
    #[error("{0}")]
    Unsupported(String),
    #[error("store: {0}")]
    Store(String),
}

impl OAuthError {
    /// Whether the credentials are dead (as opposed to the endpoint being down).
    pub fn is_permanent(&self) -> bool {
        matches!(self, OAuthError::Rejected { .. })
    }
}

/// What a token endpoint answered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TokenSet {
    pub access_token: Secret,
    /// A rotated refresh token (Anthropic and OpenAI rotate; Google usually keeps the old one).
    pub refresh_token: Option<Secret>,
    pub expires_in: Option<u64>,
    /// ChatGPT account id from the id_token's `https://api.openai.com/auth` claim.
    pub chatgpt_account_id: Option<String>,
}

#[derive(Deserialize)]
struct Reply {
    access_token: Option<String>,
    refresh_token: Option<String>,
    expires_in: Option<serde_json::Value>,
    id_token: Option<String>,
}

/// Talks to the token endpoints configured in `[oauth]`, through the account's proxy when it has
/// one (vendors see one address per account).
#[derive(Clone)]
pub struct TokenClient {
    config: OAuthConfig,
    clients: ClientPool,
    timeout: Duration,
}

impl TokenClient {
    pub fn new(config: OAuthConfig, clients: ClientPool) -> Self {
        TokenClient {
            config,
            clients,
            timeout: Duration::from_secs(30),
        }
    }

    pub fn config(&self) -> &OAuthConfig {
        &self.config
    }

    /// Renews an account's access token.
    pub async fn refresh(
        &self,
        account: &Account,
        refresh_token: &Secret,
    ) -> Result<TokenSet, OAuthError> {
        let ep = self.config.endpoints(account.platform);
        let rt = refresh_token.expose();
        let proxy = account.options.proxy.as_ref();
        match account.platform {
            Platform::Anthropic => {
                let body = json!({"grant_type": "refresh_token", "refresh_token": rt, "client_id": ep.client_id});
                self.post(&ep, proxy, "application/json", body.to_string())
                    .await
            }
            Platform::Openai => {
                let body = pkce::form(&[
                    ("grant_type", "refresh_token"),
                    ("client_id", &ep.client_id),
                    ("refresh_token", rt),
                    ("scope", "openid profile email"),
                ]);
                self.post(&ep, proxy, "application/x-www-form-urlencoded", body)
                    .await
            }
            Platform::Gemini => {
                let mut pairs = vec![
                    ("grant_type", "refresh_token"),
                    ("client_id", ep.client_id.as_str()),
                    ("refresh_token", rt),
                ];
                if let Some(secret) = &ep.client_secret {
                    pairs.push(("client_secret", secret));
                }
                self.post(
                    &ep,
                    proxy,
                    "application/x-www-form-urlencoded",
                    pkce::form(&pairs),
                )
                .await
            }
        }
    }

    /// Exchanges an authorization code for tokens.
    pub async fn exchange(
        &self,
        pending: &PendingAuthorization,
        code: &str,
        state: Option<&str>,
    ) -> Result<TokenSet, OAuthError> {
        let ep = self.config.endpoints(pending.platform);
        let proxy = pending.account.options.proxy.as_ref();
        match pending.platform {
            Platform::Anthropic => {
                let mut body = json!({
                    "grant_type": "authorization_code",
                    "client_id": ep.client_id,
                    "code": code,
                    "redirect_uri": pending.redirect_uri,
                    "code_verifier": pending.code_verifier,
                    "state": state.unwrap_or(&pending.state),
                });
                if pending.setup_token {
                    body["expires_in"] = json!(31_536_000);
                }
                self.post(&ep, proxy, "application/json", body.to_string())
                    .await
            }
            Platform::Openai => {
                let body = pkce::form(&[
                    ("grant_type", "authorization_code"),
                    ("client_id", &ep.client_id),
                    ("code", code),
                    ("redirect_uri", &pending.redirect_uri),
                    ("code_verifier", &pending.code_verifier),
                ]);
                self.post(&ep, proxy, "application/x-www-form-urlencoded", body)
                    .await
            }
            Platform::Gemini => Err(OAuthError::Unsupported(
                "Gemini sign-in is not supported here".into(),
            )),
        }
    }

    async fn post(
        &self,
        ep: &Endpoints,
        proxy: Option<&ProxyUrl>,
        content_type: &'static str,
        body: String,
    ) -> Result<TokenSet, OAuthError> {
        let client = self.clients.client(proxy).map_err(OAuthError::Transient)?;
        let send = client
            .post(&ep.token_url)
            .header(http::header::CONTENT_TYPE, content_type)
            .header(http::header::ACCEPT, "application/json")
            .body(body)
            .send();
        let res = match tokio::time::timeout(self.timeout, send).await {
            Ok(Ok(res)) => res,
            Ok(Err(e)) => return Err(OAuthError::Transient(e.without_url().to_string())),
            Err(_) => return Err(OAuthError::Transient("token endpoint timed out".into())),
        };
        let status = res.status();
        let bytes = tokio::time::timeout(self.timeout, res.bytes())
            .await
            .map_err(|_| OAuthError::Transient("token endpoint timed out".into()))?
            .map_err(|e| OAuthError::Transient(e.to_string()))?;
        if !status.is_success() {
            let message = error_message(&bytes);
            return Err(if status.is_client_error() {
                OAuthError::Rejected {
                    status: status.as_u16(),
                    message,
                }
            } else {
                OAuthError::Transient(format!("{status}: {message}"))
            });
        }
        let reply: Reply = serde_json::from_slice(&bytes).map_err(|e| {
            OAuthError::Transient(format!("token endpoint answered malformed JSON: {e}"))
        })?;
        let access = reply
            .access_token
            .filter(|t| !t.is_empty())
            .ok_or_else(|| {
                OAuthError::Transient("token endpoint answered without an access_token".into())
            })?;
        Ok(TokenSet {
            access_token: Secret::new(access),
            refresh_token: reply
                .refresh_token
                .filter(|t| !t.is_empty())
                .map(Secret::new),
            expires_in: reply
                .expires_in
                .and_then(|v| v.as_u64().or_else(|| v.as_str()?.parse().ok())),
            chatgpt_account_id: reply.id_token.as_deref().and_then(chatgpt_account_id),
        })
    }
}

/// `error` / `error_description` of an OAuth error reply, never echoing tokens.
fn error_message(body: &[u8]) -> String {
    let v: serde_json::Value = serde_json::from_slice(body).unwrap_or_default();
    let code = v["error"]
        .as_str()
        .or_else(|| v["error"]["type"].as_str())
        .unwrap_or("error");
    let desc = v["error_description"]
        .as_str()
        .or_else(|| v["error"]["message"].as_str())
        .unwrap_or("");
    let mut m = format!("{code} {desc}");
    m.truncate(300);
    m.trim().to_owned()
}

/// The `chatgpt_account_id` claim of an OpenAI id_token (a JWT; the token came straight from the
/// token endpoint over TLS, so its payload is read without verifying the signature).
pub fn chatgpt_account_id(id_token: &str) -> Option<String> {
    let payload = id_token.split('.').nth(1)?;
    let bytes = URL_SAFE_NO_PAD.decode(payload.trim_end_matches('=')).ok()?;
    let v: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    v["https://api.openai.com/auth"]["chatgpt_account_id"]
        .as_str()
        .map(str::to_owned)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn id_token_claim() {
        let payload = URL_SAFE_NO_PAD
            .encode(br#"{"https://api.openai.com/auth":{"chatgpt_account_id":"acc-123"}}"#);
        assert_eq!(
            chatgpt_account_id(&format!("h.{payload}.s")).as_deref(),
            Some("acc-123")
        );
        assert_eq!(chatgpt_account_id("garbage"), None);
    }

    #[test]
    fn error_messages() {
        assert_eq!(
            error_message(
                br#"{"error":"invalid_grant","error_description":"Refresh token expired"}"#
            ),
            "invalid_grant Refresh token expired"
        );
        assert_eq!(error_message(b"nope"), "error");
    }
}
