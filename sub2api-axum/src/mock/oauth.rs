//! The vendors' OAuth token endpoints, mocked: `POST /v1/oauth/token` (Claude, JSON),
//! `POST /oauth/token` (OpenAI, form-encoded) and `POST /token` (Google, form-encoded).
//!
//! Refresh tokens rotate as the real ones do: a refresh token works once, the reply carries a new
//! one, and reusing a spent one answers `400 invalid_grant` — so a relay that refreshes the same
//! account twice at once loses it here too. Tests grant refresh tokens with
//! [`OAuthMock::grant`], count calls with [`OAuthMock::refreshes`], and slow the endpoint with
//! [`OAuthMock::set_delay`] to widen races. Authorization codes are accepted when a PKCE
//! `code_verifier` (43+ characters) comes with them.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::response::Response;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use bytes::Bytes;
use http::{HeaderMap, Method, StatusCode, Uri};
use serde_json::{Value, json};

use super::dialect::{json_reply, respond};
use super::state::{ArrivingRequest, MockState};

/// The ChatGPT account id the mock puts into OpenAI id_tokens.
pub const MOCK_CHATGPT_ACCOUNT_ID: &str = "mock-chatgpt-account";

#[derive(Default)]
struct Inner {
    valid_refresh: HashSet<String>,
    next: u64,
    expires_in: Option<u64>,
    refreshes: u64,
    exchanges: u64,
    rejected: u64,
    delay: Duration,
    access_tokens: Vec<String>,
}

/// Token endpoint state; cheap to clone.
#[derive(Clone, Default)]
pub struct OAuthMock {
    inner: Arc<Mutex<Inner>>,
}

impl std::fmt::Debug for OAuthMock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let i = self.lock();
        f.debug_struct("OAuthMock")
            .field("refreshes", &i.refreshes)
            .field("exchanges", &i.exchanges)
            .finish()
    }
}

impl OAuthMock {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Makes `refresh_token` valid (once).
    pub fn grant(&self, refresh_token: &str) {
        self.lock().valid_refresh.insert(refresh_token.to_owned());
    }

    /// `expires_in` of issued tokens (default 3600).
    pub fn set_expires_in(&self, secs: u64) {
        self.lock().expires_in = Some(secs);
    }

    /// Delay before each token reply.
    pub fn set_delay(&self, d: Duration) {
        self.lock().delay = d;
    }

    /// Successful refreshes so far.
    pub fn refreshes(&self) -> u64 {
        self.lock().refreshes
    }

    /// Successful code exchanges so far.
    pub fn exchanges(&self) -> u64 {
        self.lock().exchanges
    }

    /// Refused grants (spent or unknown refresh tokens, bad codes).
    pub fn rejected(&self) -> u64 {
        self.lock().rejected
    }

    /// Access tokens issued, oldest first.
    pub fn access_tokens(&self) -> Vec<String> {
        self.lock().access_tokens.clone()
    }

    /// Issues a new pair; the refresh token is valid once.
    fn issue(&self) -> (String, String, u64) {
        let mut i = self.lock();
        i.next += 1;
        let n = i.next;
        let access = format!("mock-access-{n}");
        let refresh = format!("mock-refresh-{n}");
        i.valid_refresh.insert(refresh.clone());
        i.access_tokens.push(access.clone());
        (access, refresh, i.expires_in.unwrap_or(3600))
    }
}

fn params(headers: &HeaderMap, body: &[u8]) -> Value {
    let json_body = headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|c| c.starts_with("application/json"));
    if json_body {
        return serde_json::from_slice(body).unwrap_or(Value::Null);
    }
    let mut m = serde_json::Map::new();
    for kv in String::from_utf8_lossy(body).split('&') {
        if let Some((k, v)) = kv.split_once('=') {
            m.insert(decode(k), Value::String(decode(v)));
        }
    }
    Value::Object(m)
}

fn decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            if let Ok(x) =
                u8::from_str_radix(std::str::from_utf8(&b[i + 1..i + 3]).unwrap_or("zz"), 16)
            {
                out.push(x);
                i += 3;
                continue;
            }
        }
        out.push(if b[i] == b'+' { b' ' } else { b[i] });
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn id_token(account_id: &str) -> String {
    let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"none","typ":"JWT"}"#);
    let claims = json!({
        "email": "mock@example.com",
        "https://api.openai.com/auth": {"chatgpt_account_id": account_id, "chatgpt_plan_type": "plus"},
    });
    format!(
        "{header}.{}.mock-signature",
        URL_SAFE_NO_PAD.encode(claims.to_string())
    )
}

/// Every token route.
pub(crate) async fn token(
    State((state, oauth)): State<(MockState, OAuthMock)>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let guard = state.begin(ArrivingRequest {
        method: &method,
        uri: &uri,
        headers: &headers,
        body: &body,
        api_key: None,
        model: None,
        stream: false,
    });
    let delay = oauth.lock().delay;
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    let p = params(&headers, &body);
    let s = |k: &str| p.get(k).and_then(Value::as_str).unwrap_or("").to_owned();
    let invalid = |oauth: &OAuthMock, guard, what: &str| {
        oauth.lock().rejected += 1;
        respond(
            guard,
            StatusCode::BAD_REQUEST,
            "application/json",
            HeaderMap::new(),
            axum::body::Body::from(
                json!({"error": "invalid_grant", "error_description": what}).to_string(),
            ),
        )
    };
    if s("client_id").is_empty() {
        return invalid(&oauth, guard, "client_id is required");
    }
    match s("grant_type").as_str() {
        "refresh_token" => {
            let rt = s("refresh_token");
            let spent = !oauth.lock().valid_refresh.remove(&rt);
            if spent {
                return invalid(&oauth, guard, "Refresh token not found or invalid");
            }
            oauth.lock().refreshes += 1;
        }
        "authorization_code" => {
            if s("code").is_empty() || s("code_verifier").len() < 43 {
                return invalid(&oauth, guard, "Invalid authorization code or code_verifier");
            }
            oauth.lock().exchanges += 1;
        }
        other => return invalid(&oauth, guard, &format!("unsupported grant_type `{other}`")),
    }
    let (access, refresh, expires_in) = oauth.issue();
    let mut reply = json!({
        "access_token": access,
        "token_type": "Bearer",
        "expires_in": expires_in,
        "scope": "user:inference",
    });
    // Google keeps the refresh token; Anthropic and OpenAI rotate it.
    if uri.path() != "/token" {
        reply["refresh_token"] = json!(refresh);
    } else {
        let rt = s("refresh_token");
        oauth.lock().valid_refresh.insert(rt);
    }
    if uri.path() == "/oauth/token" {
        reply["id_token"] = json!(id_token(MOCK_CHATGPT_ACCOUNT_ID));
    }
    if uri.path() == "/v1/oauth/token" {
        reply["organization"] = json!({"uuid": "mock-org"});
        reply["account"] = json!({"uuid": "mock-account", "email_address": "mock@example.com"});
    }
    json_reply(guard, &reply)
}
