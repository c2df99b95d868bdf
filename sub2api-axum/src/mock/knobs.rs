//! Fault knobs: what the mock does to a request instead of (or on top of) answering it normally.
//!
//! Knobs are set for one api key ([`Scope::Key`], the value of `x-api-key` or the Bearer token)
//! or for every key ([`Scope::AllKeys`]), and per request through the `x-mock-fault` header so the
//! standalone server can be driven by curl. For each field the most specific setting wins:
//! header, then key, then all keys.
//!
//! `x-mock-fault` is a comma-separated list of items (parse errors answer 400):
//!
//! | item | effect |
//! |---|---|
//! | `429` / `rate-limit` / `rate-limit=SECS` | 429 with reset headers SECS from now (default 30) |
//! | `rate-limit-no-reset` | 429 without any reset header |
//! | `529` / `overloaded` | 529 `overloaded_error` |
//! | `401` / `unauthorized` | 401 `authentication_error` |
//! | `500` / `server-error` | 500 `api_error` |
//! | `cut-after=N` | stream ends abruptly after N events |
//! | `error-after=N` | `event: error` (overloaded_error) after N events |
//! | `times=N` | the fault above hits only the first N requests of this key with this header value |
//! | `first-byte-ms=MS` | delay before the response head |
//! | `event-delay-ms=MS` | delay between stream events |
//! | `words=N` | reply length in words |

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::usage::Usage;

/// Reply length when nothing else is configured.
pub const DEFAULT_REPLY_WORDS: usize = 12;

/// Which requests a knob applies to.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Scope {
    /// Every request, whatever its key (a key's own knobs still take precedence).
    AllKeys,
    /// Requests whose `x-api-key` or Bearer token equals this string.
    Key(String),
}

impl From<&str> for Scope {
    fn from(key: &str) -> Self {
        Scope::Key(key.to_owned())
    }
}

impl From<String> for Scope {
    fn from(key: String) -> Self {
        Scope::Key(key)
    }
}

impl From<&String> for Scope {
    fn from(key: &String) -> Self {
        Scope::Key(key.clone())
    }
}

/// A vendor failure to inject on `POST /v1/messages`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Fault {
    /// 429 `rate_limit_error`. `retry_after_secs` becomes `retry-after`; `reset_at` becomes
    /// `anthropic-ratelimit-{requests,tokens,input-tokens,output-tokens}-reset` (RFC 3339) and
    /// `anthropic-ratelimit-unified-reset` (unix seconds). `None` leaves the header(s) out, so a
    /// 429 with no reset information at all can be tested too.
    RateLimited {
        retry_after_secs: Option<u64>,
        reset_at: Option<SystemTime>,
    },
    /// 529 `overloaded_error`.
    Overloaded,
    /// 401 `authentication_error` (a revoked or wrong upstream key).
    Unauthorized,
    /// 500 `api_error`.
    ServerError,
    /// Stream: send N events, then end the HTTP response abruptly (no `message_stop`, no final
    /// chunk; the connection is closed). Non-stream: a 200 head, half of the JSON, then the same
    /// abrupt end.
    CutAfter(usize),
    /// Stream: send N events, then `event: error` with `overloaded_error`, then end cleanly.
    /// Non-stream: answers 529 `overloaded_error` (what Anthropic does before any byte).
    ErrorEventAfter(usize),
}

impl Fault {
    /// A 429 whose every reset header points `wait` from now.
    pub fn rate_limited_for(wait: Duration) -> Self {
        Fault::RateLimited {
            retry_after_secs: Some(ceil_secs(wait)),
            reset_at: Some(SystemTime::now() + wait),
        }
    }

    /// A 429 whose reset headers point at `at` (`retry-after` = seconds until then, rounded up).
    pub fn rate_limited_until(at: SystemTime) -> Self {
        let wait = at.duration_since(SystemTime::now()).unwrap_or_default();
        Fault::RateLimited {
            retry_after_secs: Some(ceil_secs(wait)),
            reset_at: Some(at),
        }
    }

    /// A 429 with no reset information (the "plan needs extra usage" case).
    pub fn rate_limited_without_reset() -> Self {
        Fault::RateLimited {
            retry_after_secs: None,
            reset_at: None,
        }
    }
}

fn ceil_secs(d: Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}

/// One setting; apply with [`MockState::set`](super::MockState::set).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Knob {
    /// Every matching request gets this fault (until cleared).
    Fault(Fault),
    /// The next N matching requests get this fault, later ones succeed ("fail N times").
    FailTimes(Fault, u32),
    /// Delay before the response head (time to first byte).
    FirstByteDelay(Duration),
    /// Delay between stream events.
    EventDelay(Duration),
    /// Words in the reply (output tokens before `max_tokens` caps them). Default 12.
    ReplyWords(usize),
    /// Report exactly this usage instead of the computed one.
    Usage(Usage),
    /// Also put the input-side fields into `message_delta.usage` (Anthropic sometimes does).
    FullDeltaUsage(bool),
}

/// A fault with an optional remaining count (`FailTimes`).
#[derive(Clone, Debug)]
pub(crate) struct FaultRule {
    pub fault: Fault,
    pub remaining: Option<u32>,
}

impl FaultRule {
    /// The fault for this request, consuming one of the remaining failures; `None` when spent.
    pub fn take(&mut self) -> Option<Fault> {
        match &mut self.remaining {
            None => Some(self.fault.clone()),
            Some(0) => None,
            Some(n) => {
                *n -= 1;
                Some(self.fault.clone())
            }
        }
    }
}

/// The knobs of one scope; `None` means "not set here, ask the next scope".
#[derive(Clone, Debug, Default)]
pub(crate) struct KnobSet {
    pub fault: Option<FaultRule>,
    pub first_byte_delay: Option<Duration>,
    pub event_delay: Option<Duration>,
    pub reply_words: Option<usize>,
    pub usage: Option<Usage>,
    pub full_delta_usage: Option<bool>,
}

impl KnobSet {
    pub fn apply(&mut self, knob: Knob) {
        match knob {
            Knob::Fault(fault) => {
                self.fault = Some(FaultRule {
                    fault,
                    remaining: None,
                })
            }
            Knob::FailTimes(fault, n) => {
                self.fault = Some(FaultRule {
                    fault,
                    remaining: Some(n),
                })
            }
            Knob::FirstByteDelay(d) => self.first_byte_delay = Some(d),
            Knob::EventDelay(d) => self.event_delay = Some(d),
            Knob::ReplyWords(n) => self.reply_words = Some(n),
            Knob::Usage(u) => self.usage = Some(u),
            Knob::FullDeltaUsage(b) => self.full_delta_usage = Some(b),
        }
    }
}

/// Everything but the fault, resolved for one request.
#[derive(Clone, Debug)]
pub(crate) struct Plan {
    pub first_byte_delay: Duration,
    pub event_delay: Duration,
    pub reply_words: usize,
    pub usage: Option<Usage>,
    pub full_delta_usage: bool,
}

impl Plan {
    /// Merges the layers, most specific first.
    pub fn resolve(layers: &[&KnobSet]) -> Plan {
        fn first<T>(layers: &[&KnobSet], f: impl Fn(&KnobSet) -> Option<T>) -> Option<T> {
            layers.iter().find_map(|k| f(k))
        }
        Plan {
            first_byte_delay: first(layers, |k| k.first_byte_delay).unwrap_or_default(),
            event_delay: first(layers, |k| k.event_delay).unwrap_or_default(),
            reply_words: first(layers, |k| k.reply_words).unwrap_or(DEFAULT_REPLY_WORDS),
            usage: first(layers, |k| k.usage.clone()),
            full_delta_usage: first(layers, |k| k.full_delta_usage).unwrap_or(false),
        }
    }
}

/// A parsed `x-mock-fault` header.
#[derive(Clone, Debug)]
pub(crate) struct HeaderKnobs {
    /// The header value, which with the api key names the `times=N` counter.
    pub raw: String,
    pub fault: Option<Fault>,
    pub times: Option<u32>,
    /// Non-fault knobs (its `fault` stays `None`).
    pub set: KnobSet,
}

/// Parses an `x-mock-fault` value (see the module docs for the syntax).
pub(crate) fn parse_fault_header(raw: &str) -> Result<HeaderKnobs, String> {
    let mut out = HeaderKnobs {
        raw: raw.to_owned(),
        fault: None,
        times: None,
        set: KnobSet::default(),
    };
    for item in raw.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let (name, value) = match item.split_once('=') {
            Some((n, v)) => (n.trim(), Some(v.trim())),
            None => (item, None),
        };
        let number = |what: &str| -> Result<u64, String> {
            value
                .ok_or_else(|| format!("`{name}` needs `={what}`"))?
                .parse::<u64>()
                .map_err(|_| format!("`{item}`: {what} must be a non-negative integer"))
        };
        let fault = match name {
            "429" | "rate-limit" => {
                let secs = if value.is_some() { number("SECS")? } else { 30 };
                Some(Fault::rate_limited_for(Duration::from_secs(secs)))
            }
            "rate-limit-no-reset" => Some(Fault::rate_limited_without_reset()),
            "529" | "overloaded" => Some(Fault::Overloaded),
            "401" | "unauthorized" => Some(Fault::Unauthorized),
            "500" | "server-error" => Some(Fault::ServerError),
            "cut-after" => Some(Fault::CutAfter(number("N")? as usize)),
            "error-after" => Some(Fault::ErrorEventAfter(number("N")? as usize)),
            "times" => {
                out.times = Some(u32::try_from(number("N")?).map_err(|_| "times too large")?);
                None
            }
            "first-byte-ms" => {
                out.set.first_byte_delay = Some(Duration::from_millis(number("MS")?));
                None
            }
            "event-delay-ms" => {
                out.set.event_delay = Some(Duration::from_millis(number("MS")?));
                None
            }
            "words" => {
                out.set.reply_words = Some(number("N")? as usize);
                None
            }
            _ => return Err(format!("unknown item `{item}`")),
        };
        if let Some(fault) = fault {
            if out.fault.is_some() {
                return Err("more than one fault".to_owned());
            }
            out.fault = Some(fault);
        }
    }
    if out.times.is_some() && out.fault.is_none() {
        return Err("`times` without a fault".to_owned());
    }
    Ok(out)
}

/// `YYYY-MM-DDTHH:MM:SSZ` for a time, as in `anthropic-ratelimit-*-reset`.
pub fn rfc3339(t: SystemTime) -> String {
    let secs = unix_secs(t);
    let (y, m, d) = civil_from_days((secs / 86_400) as i64);
    let rem = secs % 86_400;
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Whole seconds since the unix epoch (0 before it).
pub fn unix_secs(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// Days since 1970-01-01 to a proleptic Gregorian date (Howard Hinnant's algorithm), so the mock
/// needs no date crate.
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}
