//! The vendor request for one account: URL, headers, body, and how its response must be
//! rewritten for the client. Everything account-specific happens here, once per attempt, on the
//! original request bytes (Parse's estimate and the failover copies stay on the original).
//!
//! | account | URL | auth | body |
//! |---|---|---|---|
//! | anthropic apikey | client path | `x-api-key` | model mapped |
//! | anthropic oauth / setup_token | client path (`?beta=true`) | Bearer + `oauth-2025-04-20`, account fingerprint | model mapped, `metadata.user_id`, Claude Code system block |
//! | openai apikey | `/v1/chat/completions`, `/v1/responses` | Bearer | model mapped, `stream_options.include_usage` on chat streams |
//! | openai oauth (Codex) | `/backend-api/codex/responses` | Bearer + `chatgpt-account-id` | model mapped, `store: false` |
//! | gemini apikey | `/{v}/models/{mapped}:{method}` (`alt=sse`) | `x-goog-api-key` | as sent |
//! | gemini oauth (Code Assist) | `/v1internal:{method}` | Bearer | `{model, project, request}` |

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Method};

use crate::domain::{Account, AccountKind, Credentials, Platform};
use crate::error::RelayError;
use crate::protocol::{anthropic, claude_code, gemini, json::Object, openai};
use crate::request::{Endpoint, RelayRequest};

/// How a successful response is rewritten for the client.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ResponsePlan {
    /// The client's model name, written back where the vendor names the mapped one.
    pub model_back: Option<String>,
    /// Remove Code Assist's `{"response": ...}` envelope.
    pub unwrap_code_assist: bool,
    /// The client asked for JSON but the vendor was asked to stream (the Codex backend streams
    /// only): collect the stream into the terminal event's response object.
    pub collect_responses: bool,
}

impl ResponsePlan {
    pub fn is_empty(&self) -> bool {
        self.model_back.is_none() && !self.unwrap_code_assist && !self.collect_responses
    }
}

/// A request ready to send.
pub struct Built {
    pub method: Method,
    pub url: String,
    pub headers: HeaderMap,
    pub body: Bytes,
    pub plan: ResponsePlan,
}

/// Whether `account` can serve this endpoint and model at all (selection skips the others).
pub fn fits(account: &Account, endpoint: Endpoint, model: &str) -> bool {
    if !account.serves_model(model) {
        return false;
    }
    // The ChatGPT backend speaks Responses only.
    !(account.platform == Platform::Openai
        && account.kind.is_subscription()
        && endpoint == Endpoint::ChatCompletions)
}

fn base(account: &Account) -> &str {
    account.base_url.trim_end_matches('/')
}

fn set(headers: &mut HeaderMap, name: &'static str, value: &str) -> Result<(), RelayError> {
    let v = HeaderValue::from_str(value).map_err(|_| {
        RelayError::internal(format!(
            "account setting for {name} is not a valid header value"
        ))
    })?;
    headers.insert(HeaderName::from_static(name), v);
    Ok(())
}

fn set_secret(headers: &mut HeaderMap, name: HeaderName, value: String) -> Result<(), RelayError> {
    let mut v = HeaderValue::from_str(&value)
        .map_err(|_| RelayError::internal("account credentials are not a valid header value"))?;
    v.set_sensitive(true);
    headers.insert(name, v);
    Ok(())
}

/// Puts the credentials where this platform expects them.
fn authenticate(
    headers: &mut HeaderMap,
    platform: Platform,
    creds: &Credentials,
) -> Result<(), RelayError> {
    match (creds, platform) {
        (Credentials::ApiKey(k), Platform::Anthropic) => set_secret(
            headers,
            HeaderName::from_static("x-api-key"),
            k.expose().to_owned(),
        ),
        (Credentials::ApiKey(k), Platform::Gemini) => set_secret(
            headers,
            HeaderName::from_static("x-goog-api-key"),
            k.expose().to_owned(),
        ),
        (Credentials::ApiKey(k), Platform::Openai) => set_secret(
            headers,
            http::header::AUTHORIZATION,
            format!("Bearer {}", k.expose()),
        ),
        (other, _) => {
            let token = other.bearer().expect("bearer credentials");
            set_secret(
                headers,
                http::header::AUTHORIZATION,
                format!("Bearer {}", token.expose()),
            )
        }
    }
}

/// The model to send upstream, if the account maps the client's.
fn mapped<'a>(account: &'a Account, model: &str) -> Option<String> {
    let m = account.upstream_model(model);
    (m != model).then(|| m.into_owned())
}

/// Builds the request for `account`.
pub fn build(
    ctx: &RelayRequest,
    parts: &http::request::Parts,
    body: &Bytes,
    account: &Account,
    creds: &Credentials,
) -> Result<Built, RelayError> {
    let upstream_model = mapped(account, &ctx.model);
    let mut plan = ResponsePlan {
        model_back: upstream_model.as_ref().map(|_| ctx.model.clone()),
        unwrap_code_assist: false,
        collect_responses: false,
    };
    let subscription = account.kind.is_subscription() && !matches!(creds, Credentials::ApiKey(_));
    let (url, mut headers, body) = match ctx.endpoint.dialect() {
        crate::dialect::Dialect::Anthropic => {
            let mut headers = anthropic::upstream_headers(&parts.headers);
            let mut path = parts
                .uri
                .path_and_query()
                .map(|p| p.as_str().to_owned())
                .unwrap_or_else(|| "/".into());
            let body = if subscription && account.platform == Platform::Anthropic {
                claude_code::apply_headers(&mut headers, &parts.headers, account);
                if !path.contains('?') && ctx.endpoint == Endpoint::Messages {
                    path.push_str("?beta=true");
                }
                let session = ctx.session.as_ref().map(|s| s.0.as_str());
                let from_cc = claude_code::is_claude_code(&parts.headers);
                Bytes::from(claude_code::rewrite_body(
                    body,
                    account,
                    session,
                    from_cc,
                    upstream_model.as_deref(),
                )?)
            } else if let Some(m) = &upstream_model {
                let mut o = Object::parse(body).map_err(|e| {
                    RelayError::invalid(format!("malformed JSON in request body: {e}"))
                })?;
                o.set("model", m);
                Bytes::from(o.to_vec())
            } else {
                body.clone()
            };
            (format!("{}{path}", base(account)), headers, body)
        }
        crate::dialect::Dialect::OpenAi => {
            let codex = subscription && account.platform == Platform::Openai;
            if codex && ctx.endpoint == Endpoint::ChatCompletions {
                return Err(RelayError::invalid(
                    "this account serves the Responses API only",
                ));
            }
            let mut headers = openai::upstream_headers(&parts.headers);
            if codex {
                if let Some(id) = &account.options.chatgpt_account_id {
                    set(&mut headers, "chatgpt-account-id", id)?;
                }
                if !headers.contains_key("originator") {
                    set(&mut headers, "originator", "codex_cli_rs")?;
                }
                if !headers.contains_key("openai-beta") {
                    set(&mut headers, "openai-beta", "responses=experimental")?;
                }
            }
            let body = openai::upstream_body(
                ctx.endpoint,
                body,
                upstream_model.as_deref(),
                ctx.stream,
                codex,
            )?
            .unwrap_or_else(|| body.clone());
            plan.collect_responses = codex && ctx.endpoint == Endpoint::Responses && !ctx.stream;
            let path = openai::upstream_path(ctx.endpoint, codex);
            (format!("{}{path}", base(account)), headers, body)
        }
        crate::dialect::Dialect::Gemini => {
            let route = gemini::route(parts.uri.path())
                .ok_or_else(|| RelayError::not_found("not a Gemini route"))?;
            let model = upstream_model.clone().unwrap_or_else(|| ctx.model.clone());
            let headers = gemini::upstream_headers(&parts.headers);
            if account.kind == AccountKind::Oauth && !matches!(creds, Credentials::ApiKey(_)) {
                plan.unwrap_code_assist = true;
                let body = gemini::wrap_code_assist(
                    ctx.endpoint,
                    &model,
                    account.options.project_id.as_deref(),
                    body,
                )?;
                (
                    format!(
                        "{}{}",
                        base(account),
                        gemini::code_assist_path(ctx.endpoint)
                    ),
                    headers,
                    body,
                )
            } else {
                let path = gemini::apikey_path(&route, &model, parts.uri.query());
                (format!("{}{path}", base(account)), headers, body.clone())
            }
        }
    };
    if (ctx.stream || plan.collect_responses) && !headers.contains_key(http::header::ACCEPT) {
        headers.insert(
            http::header::ACCEPT,
            HeaderValue::from_static("text/event-stream"),
        );
    }
    authenticate(&mut headers, account.platform, creds)?;
    Ok(Built {
        method: parts.method.clone(),
        url,
        headers,
        body,
        plan,
    })
}
