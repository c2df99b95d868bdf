//! Failover classifies, it does not blindly retry (DESIGN §4). Each upstream failure before the
//! first byte is turned into account state (parked until the vendor's reset, short cooldown,
//! disabled) and the request moves to another account, a bounded number of times. Client faults
//! (400/404/413/422) go back as they are. Nothing is retried once the response has been handed on:
//! this layer only ever sees response heads.
//!
//! ```
//! use std::sync::Arc;
//! use sub2api_core::layer::failover::FailoverLayer;
//! use sub2api_core::memory::MemoryAccountProvider;
//! let layer = FailoverLayer::new(Arc::new(MemoryAccountProvider::new(vec![])), 3, Default::default());
//! # let _ = layer;
//! ```

use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures_util::future::BoxFuture;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::BodyExt;
use tower::{Layer, Service};

use crate::account_provider::{AccountProvider, Outcome, now_ms};
use crate::body::{RelayBody, full};
use crate::domain::{Account, AccountId, AccountKind};
use crate::error::RelayError;
use crate::layer::meter::ServedBy;
use crate::layer::upstream::UsedCredential;
use crate::metrics::Metrics;

/// Accounts already tried for this request (read by the schedule layer).
#[derive(Clone, Debug, Default)]
pub struct Excluded(pub Vec<AccountId>);

/// What an upstream answer means for the request and the account.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    Success,
    /// The client's fault: return it as is, the account is fine.
    ClientFault,
    /// Park or disable the account as the outcome says and try another.
    Retry(Outcome),
}

/// Cooldown after a 429 that carried no reset information. Short on purpose: a subscription 429
/// without a reset may only mean the plan needs extra usage, so the account is not parked on a guess.
pub const UNKNOWN_RESET_COOLDOWN: Duration = Duration::from_secs(30);
pub const OVERLOADED_COOLDOWN: Duration = Duration::from_secs(15);
pub const SERVER_ERROR_COOLDOWN: Duration = Duration::from_secs(5);
pub const UNREACHABLE_COOLDOWN: Duration = Duration::from_secs(10);

/// How long an account whose vendor quota is used up (OpenAI `insufficient_quota`) is parked:
/// it needs an operator to top it up, but retrying it every request helps nobody.
pub const QUOTA_COOLDOWN: Duration = Duration::from_secs(3600);

/// The classification table, from the status line and headers alone.
pub fn classify(
    status: StatusCode,
    headers: &HeaderMap,
    kind: AccountKind,
    now_ms: i64,
) -> Verdict {
    classify_with_body(status, headers, &[], kind, now_ms)
}

/// The classification table; a 429's body may name the reset (Codex `resets_in_seconds`, Gemini
/// `RetryInfo.retryDelay`) or say the quota is gone (`insufficient_quota`).
pub fn classify_with_body(
    status: StatusCode,
    headers: &HeaderMap,
    body: &[u8],
    kind: AccountKind,
    now_ms: i64,
) -> Verdict {
    match status.as_u16() {
        200..=299 => Verdict::Success,
        429 => Verdict::Retry(Outcome::RateLimited {
            until_ms: reset_from_body(body, now_ms)
                .or_else(|| reset_from_headers(headers, now_ms))
                .unwrap_or(now_ms + UNKNOWN_RESET_COOLDOWN.as_millis() as i64),
        }),
        529 | 503 => Verdict::Retry(Outcome::Overloaded {
            cooldown: OVERLOADED_COOLDOWN,
        }),
        500 | 502 | 504 => Verdict::Retry(Outcome::Overloaded {
            cooldown: SERVER_ERROR_COOLDOWN,
        }),
        401 | 403 => Verdict::Retry(Outcome::AuthFailed {
            reason: match kind {
                AccountKind::Apikey => format!("upstream answered {status} to the API key"),
                _ => format!("upstream answered {status} to the OAuth token"),
            },
        }),
        _ => Verdict::ClientFault,
    }
}

/// The time (unix ms) a rate limit lifts according to a 429 body: Codex's
/// `{"error":{"type":"usage_limit_reached","resets_in_seconds":N}}` (or `resets_at`, unix
/// seconds), Google's `google.rpc.RetryInfo` `retryDelay` ("22s", "1.5s"), or OpenAI's
/// `insufficient_quota` (parked for [`QUOTA_COOLDOWN`]).
pub fn reset_from_body(body: &[u8], now_ms: i64) -> Option<i64> {
    if body.is_empty() {
        return None;
    }
    let v: serde_json::Value = serde_json::from_slice(body).ok()?;
    let err = &v["error"];
    if let Some(secs) = err["resets_in_seconds"].as_f64() {
        return Some(now_ms + (secs.max(0.0) * 1000.0) as i64);
    }
    if let Some(at) = err["resets_at"].as_i64() {
        return Some(at * 1000);
    }
    if let Some(details) = err["details"].as_array() {
        for d in details {
            let is_retry = d["@type"]
                .as_str()
                .is_some_and(|t| t.ends_with("google.rpc.RetryInfo"));
            if is_retry && let Some(ms) = d["retryDelay"].as_str().and_then(duration_ms) {
                return Some(now_ms + ms);
            }
        }
    }
    let code = err["code"].as_str().or_else(|| err["type"].as_str());
    (code == Some("insufficient_quota")).then(|| now_ms + QUOTA_COOLDOWN.as_millis() as i64)
}

/// Milliseconds of a Go/OpenAI/Google style duration: `22s`, `1.5s`, `12ms`, `1m30s`, `2h0m1s`.
pub fn duration_ms(s: &str) -> Option<i64> {
    let s = s.trim();
    if s.is_empty() {
        return None;
    }
    let mut total = 0.0f64;
    let mut rest = s;
    while !rest.is_empty() {
        let num_end = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        if num_end == 0 {
            return None;
        }
        let n: f64 = rest[..num_end].parse().ok()?;
        rest = &rest[num_end..];
        let unit_end = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let scale = match &rest[..unit_end] {
            "ms" => 1.0,
            "s" | "" => 1000.0,
            "m" => 60_000.0,
            "h" => 3_600_000.0,
            _ => return None,
        };
        total += n * scale;
        rest = &rest[unit_end..];
    }
    Some(total.ceil() as i64)
}

/// The time (unix ms) a rate limit lifts, from `retry-after` (seconds or HTTP date),
/// `anthropic-ratelimit-unified-reset` (unix seconds) or the rejected unified windows, the RFC 3339
/// `anthropic-ratelimit-<kind>-reset` headers (the latest of the exhausted kinds, else the soonest),
/// Codex's `x-codex-{primary,secondary}-*` windows (the latest exhausted one), or OpenAI's
/// `x-ratelimit-reset-{requests,tokens}` durations.
pub fn reset_from_headers(headers: &HeaderMap, now_ms: i64) -> Option<i64> {
    reset_from_vendor_headers(headers, now_ms)
        .or_else(|| reset_from_openai_headers(headers, now_ms))
}

fn reset_from_openai_headers(headers: &HeaderMap, now_ms: i64) -> Option<i64> {
    let get = |n: &str| headers.get(n).and_then(|v| v.to_str().ok()).map(str::trim);
    let mut exhausted: Option<i64> = None;
    let mut latest_used: Option<i64> = None;
    for window in ["primary", "secondary"] {
        let used =
            get(&format!("x-codex-{window}-used-percent")).and_then(|v| v.parse::<f64>().ok());
        let after = get(&format!("x-codex-{window}-reset-after-seconds"))
            .and_then(|v| v.parse::<f64>().ok());
        if let Some(after) = after {
            let at = now_ms + (after.max(0.0) * 1000.0) as i64;
            latest_used = Some(latest_used.map_or(at, |x| x.max(at)));
            if used.is_some_and(|u| u >= 100.0) {
                exhausted = Some(exhausted.map_or(at, |x| x.max(at)));
            }
        }
    }
    if exhausted.is_some() {
        return exhausted;
    }
    let mut soonest: Option<i64> = None;
    for kind in ["requests", "tokens"] {
        let Some(ms) = get(&format!("x-ratelimit-reset-{kind}")).and_then(duration_ms) else {
            continue;
        };
        let at = now_ms + ms;
        if get(&format!("x-ratelimit-remaining-{kind}")) == Some("0") {
            exhausted = Some(exhausted.map_or(at, |x| x.max(at)));
        }
        soonest = Some(soonest.map_or(at, |x| x.min(at)));
    }
    exhausted.or(soonest).or(latest_used)
}

fn reset_from_vendor_headers(headers: &HeaderMap, now_ms: i64) -> Option<i64> {
    let get = |n: &str| headers.get(n).and_then(|v| v.to_str().ok()).map(str::trim);
    if let Some(v) = get("retry-after") {
        if let Ok(secs) = v.parse::<f64>() {
            return Some(now_ms + (secs.max(0.0) * 1000.0) as i64);
        }
        if let Ok(t) = httpdate::parse_http_date(v) {
            return t
                .duration_since(std::time::UNIX_EPOCH)
                .ok()
                .map(|d| d.as_millis() as i64);
        }
    }
    if let Some(secs) = get("anthropic-ratelimit-unified-reset").and_then(|v| v.parse::<i64>().ok())
    {
        return Some(secs * 1000);
    }
    let rejected_window = ["5h", "7d", "7d_opus", "7d_sonnet"]
        .iter()
        .filter(|w| get(&format!("anthropic-ratelimit-unified-{w}-status")) == Some("rejected"))
        .filter_map(|w| {
            get(&format!("anthropic-ratelimit-unified-{w}-reset"))
                .and_then(|v| v.parse::<i64>().ok())
        })
        .max();
    if let Some(secs) = rejected_window {
        return Some(secs * 1000);
    }
    let mut exhausted: Option<i64> = None;
    let mut soonest: Option<i64> = None;
    for kind in ["requests", "tokens", "input-tokens", "output-tokens"] {
        let Some(reset) = get(&format!("anthropic-ratelimit-{kind}-reset"))
            .and_then(|v| {
                time::OffsetDateTime::parse(v, &time::format_description::well_known::Rfc3339).ok()
            })
            .map(|t| (t.unix_timestamp_nanos() / 1_000_000) as i64)
        else {
            continue;
        };
        soonest = Some(soonest.map_or(reset, |s| s.min(reset)));
        if get(&format!("anthropic-ratelimit-{kind}-remaining")) == Some("0") {
            exhausted = Some(exhausted.map_or(reset, |s| s.max(reset)));
        }
    }
    exhausted.or(soonest)
}

#[derive(Clone)]
pub struct FailoverLayer {
    accounts: Arc<dyn AccountProvider>,
    max_attempts: u32,
    metrics: Arc<Metrics>,
}

impl FailoverLayer {
    /// `max_attempts` counts the first try: 3 means up to two switches.
    pub fn new(
        accounts: Arc<dyn AccountProvider>,
        max_attempts: u32,
        metrics: Arc<Metrics>,
    ) -> Self {
        FailoverLayer {
            accounts,
            max_attempts: max_attempts.max(1),
            metrics,
        }
    }
}

impl<S> Layer<S> for FailoverLayer {
    type Service = Failover<S>;
    fn layer(&self, inner: S) -> Self::Service {
        Failover {
            inner,
            layer: self.clone(),
        }
    }
}

#[derive(Clone)]
pub struct Failover<S> {
    inner: S,
    layer: FailoverLayer,
}

/// Error bodies are read whole before deciding, bounded: they are small, and a vendor that
/// streams a huge error is not worth waiting for.
const ERROR_BODY_LIMIT: usize = 64 * 1024;

async fn read_error_body(res: Response<RelayBody>) -> (Response<RelayBody>, Bytes) {
    let (parts, mut body) = res.into_parts();
    let mut buf = bytes::BytesMut::new();
    let read = async {
        while let Some(Ok(frame)) = body.frame().await {
            if let Ok(d) = frame.into_data() {
                buf.extend_from_slice(&d);
                if buf.len() > ERROR_BODY_LIMIT {
                    buf.truncate(ERROR_BODY_LIMIT);
                    break;
                }
            }
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(10), read).await;
    let bytes = buf.freeze();
    (Response::from_parts(parts, full(bytes.clone())), bytes)
}

fn clone_request(
    parts: &http::request::Parts,
    body: &Bytes,
    excluded: &[AccountId],
) -> Request<Bytes> {
    let mut r = Request::new(body.clone());
    *r.method_mut() = parts.method.clone();
    *r.uri_mut() = parts.uri.clone();
    *r.version_mut() = parts.version;
    *r.headers_mut() = parts.headers.clone();
    *r.extensions_mut() = parts.extensions.clone();
    r.extensions_mut().insert(Excluded(excluded.to_vec()));
    r
}

impl<S> Service<Request<Bytes>> for Failover<S>
where
    S: Service<Request<Bytes>, Response = Response<RelayBody>, Error = RelayError>
        + Clone
        + Send
        + 'static,
    S::Future: Send,
{
    type Response = Response<RelayBody>;
    type Error = RelayError;
    type Future = BoxFuture<'static, Result<Response<RelayBody>, RelayError>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), RelayError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<Bytes>) -> Self::Future {
        let mut inner = super::take_ready(&mut self.inner);
        let layer = self.layer.clone();
        Box::pin(async move {
            let (parts, body) = req.into_parts();
            let mut excluded: Vec<AccountId> = Vec::new();
            let mut last_failure: Option<Response<RelayBody>> = None;
            let mut refreshed = false;
            for attempt in 0..layer.max_attempts {
                if attempt > 0 {
                    Metrics::inc(&layer.metrics.failovers);
                }
                let res = match inner.call(clone_request(&parts, &body, &excluded)).await {
                    Ok(res) => res,
                    Err(e) => match e.unreachable_account.clone() {
                        Some(account) => {
                            tracing::warn!(account = %account.name, error = %e, "upstream unreachable; trying another account");
                            report(
                                &layer,
                                &account,
                                Outcome::Unreachable {
                                    cooldown: UNREACHABLE_COOLDOWN,
                                },
                            )
                            .await;
                            excluded.push(account.id);
                            continue;
                        }
                        // Nothing left to schedule: the last vendor answer says more than "no account".
                        None => return last_failure.ok_or(e),
                    },
                };
                let Some(account) = res.extensions().get::<ServedBy>().map(|s| s.0.clone()) else {
                    return Ok(res);
                };
                if res.status().is_success() {
                    if layer.accounts.status(account.id)
                        != crate::account_provider::AccountStatus::Ready
                    {
                        report(&layer, &account, Outcome::Success).await;
                    }
                    return Ok(res);
                }
                let used = res.extensions().get::<UsedCredential>().copied();
                // Read the error now: the response (and its lease) must not pin the slot, and a
                // 429's body may say when the limit lifts.
                let (res, body) = read_error_body(res).await;
                if res.status() == StatusCode::UNAUTHORIZED
                    && !refreshed
                    && let Some(used) = used
                    && layer.accounts.credentials_rejected(&account, used.0).await
                {
                    // OAuth: the token was renewed (here or by a concurrent request); once more.
                    tracing::info!(account = %account.name, "upstream refused the OAuth token; retrying with a refreshed one");
                    refreshed = true;
                    last_failure = Some(res);
                    continue;
                }
                match classify_with_body(res.status(), res.headers(), &body, account.kind, now_ms())
                {
                    Verdict::Success => return Ok(res),
                    Verdict::ClientFault => return Ok(res),
                    Verdict::Retry(outcome) => {
                        tracing::info!(account = %account.name, status = %res.status(), ?outcome, "upstream failure; failing over");
                        report(&layer, &account, outcome).await;
                        excluded.push(account.id);
                        last_failure = Some(res);
                    }
                }
            }
            last_failure.ok_or_else(|| {
                RelayError::overloaded(
                    "every upstream account failed",
                    Some(Duration::from_secs(5)),
                )
            })
        })
    }
}

/// Reported before the next attempt, so the next selection (of this request or any other)
/// already sees the account parked. Providers keep `report` fast (persistence in the background).
async fn report(layer: &FailoverLayer, account: &Arc<Account>, outcome: Outcome) {
    layer.accounts.report(account, outcome).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table() {
        let h = HeaderMap::new();
        let k = AccountKind::Apikey;
        assert_eq!(classify(StatusCode::OK, &h, k, 0), Verdict::Success);
        assert_eq!(
            classify(StatusCode::BAD_REQUEST, &h, k, 0),
            Verdict::ClientFault
        );
        assert_eq!(
            classify(StatusCode::PAYLOAD_TOO_LARGE, &h, k, 0),
            Verdict::ClientFault
        );
        assert_eq!(
            classify(StatusCode::UNPROCESSABLE_ENTITY, &h, k, 0),
            Verdict::ClientFault
        );
        assert!(matches!(
            classify(StatusCode::UNAUTHORIZED, &h, k, 0),
            Verdict::Retry(Outcome::AuthFailed { .. })
        ));
        assert!(matches!(
            classify(StatusCode::from_u16(529).unwrap(), &h, k, 0),
            Verdict::Retry(Outcome::Overloaded { .. })
        ));
        assert_eq!(
            classify(StatusCode::TOO_MANY_REQUESTS, &h, k, 1000),
            Verdict::Retry(Outcome::RateLimited {
                until_ms: 1000 + 30_000
            })
        );
    }

    #[test]
    fn vendor_signals() {
        let h = HeaderMap::new();
        let k = AccountKind::Oauth;
        let codex = br#"{"error":{"type":"usage_limit_reached","message":"limit","resets_in_seconds":1800}}"#;
        assert_eq!(
            classify_with_body(StatusCode::TOO_MANY_REQUESTS, &h, codex, k, 1000),
            Verdict::Retry(Outcome::RateLimited {
                until_ms: 1000 + 1_800_000
            })
        );
        let google = br#"{"error":{"code":429,"status":"RESOURCE_EXHAUSTED","details":[{"@type":"type.googleapis.com/google.rpc.QuotaFailure"},{"@type":"type.googleapis.com/google.rpc.RetryInfo","retryDelay":"22.5s"}]}}"#;
        assert_eq!(reset_from_body(google, 0), Some(22_500));
        let quota = br#"{"error":{"message":"quota","type":"insufficient_quota","param":null,"code":"insufficient_quota"}}"#;
        assert_eq!(
            reset_from_body(quota, 0),
            Some(QUOTA_COOLDOWN.as_millis() as i64)
        );
        let mut h = HeaderMap::new();
        h.insert("x-codex-primary-used-percent", "100".parse().unwrap());
        h.insert(
            "x-codex-primary-reset-after-seconds",
            "600".parse().unwrap(),
        );
        h.insert("x-codex-secondary-used-percent", "40".parse().unwrap());
        h.insert(
            "x-codex-secondary-reset-after-seconds",
            "90000".parse().unwrap(),
        );
        assert_eq!(reset_from_headers(&h, 0), Some(600_000));
        let mut h = HeaderMap::new();
        h.insert("x-ratelimit-remaining-tokens", "0".parse().unwrap());
        h.insert("x-ratelimit-reset-tokens", "1m30s".parse().unwrap());
        h.insert("x-ratelimit-reset-requests", "12ms".parse().unwrap());
        assert_eq!(reset_from_headers(&h, 0), Some(90_000));
        let mut h = HeaderMap::new();
        h.insert(
            "anthropic-ratelimit-unified-5h-status",
            "rejected".parse().unwrap(),
        );
        h.insert(
            "anthropic-ratelimit-unified-5h-reset",
            "1893456000".parse().unwrap(),
        );
        h.insert(
            "anthropic-ratelimit-unified-7d-status",
            "allowed".parse().unwrap(),
        );
        h.insert(
            "anthropic-ratelimit-unified-7d-reset",
            "1893999999".parse().unwrap(),
        );
        assert_eq!(reset_from_headers(&h, 0), Some(1_893_456_000_000));
        assert_eq!(duration_ms("2h0m1.5s"), Some(7_201_500));
        assert_eq!(duration_ms("x"), None);
    }

    #[test]
    fn resets() {
        let mut h = HeaderMap::new();
        h.insert(
            "anthropic-ratelimit-tokens-reset",
            "2030-01-01T00:00:00Z".parse().unwrap(),
        );
        h.insert(
            "anthropic-ratelimit-requests-reset",
            "2030-01-01T00:01:00Z".parse().unwrap(),
        );
        h.insert(
            "anthropic-ratelimit-requests-remaining",
            "0".parse().unwrap(),
        );
        assert_eq!(reset_from_headers(&h, 0), Some(1_893_456_060_000));
        h.insert(
            "anthropic-ratelimit-unified-reset",
            "1893456000".parse().unwrap(),
        );
        assert_eq!(reset_from_headers(&h, 0), Some(1_893_456_000_000));
        h.insert("retry-after", "7".parse().unwrap());
        assert_eq!(reset_from_headers(&h, 1000), Some(8000));
    }
}
