//! An Anthropic `usage` object read in place: the counters the relay bills, straight from the
//! JSON, without building a `serde_json::Value` (a map node and a `String` per key, a dozen
//! allocations for every billed response).
//!
//! It is as lenient as reading a `Value` was: a counter that is not a non-negative integer counts
//! as absent, a `cache_creation` or `server_tool_use` that is not an object is ignored, and a
//! `usage` that is not an object is `None`. Nothing the vendor adds can make the object fail to
//! parse.

use std::fmt;
use std::marker::PhantomData;

use serde::Deserialize;
use serde::de::{self, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};

/// The fields of `usage` the relay reads.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(super) struct UsageObject {
    pub input_tokens: Option<u64>,
    pub output_tokens: Option<u64>,
    pub cache_read_input_tokens: Option<u64>,
    pub cache_creation_input_tokens: Option<u64>,
    /// `cache_creation`, when it is an object: its 5m and 1h writes.
    pub cache_creation: Option<(Option<u64>, Option<u64>)>,
    /// `server_tool_use.web_search_requests`.
    pub web_search_requests: Option<u64>,
}

/// A JSON value of one expected shape; any other value is `None` (and skipped).
pub(super) struct Only<T>(pub Option<T>);

/// What [`Only`] accepts: a non-negative integer, or an object read field by field.
trait Shape: Sized {
    fn from_u64(_: u64) -> Option<Self> {
        None
    }

    fn from_map<'de, A: MapAccess<'de>>(mut map: A) -> Result<Option<Self>, A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(None)
    }
}

impl Shape for u64 {
    fn from_u64(n: u64) -> Option<u64> {
        Some(n)
    }
}

impl<'de, T: Shape> Deserialize<'de> for Only<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(OnlyVisitor(PhantomData))
    }
}

struct OnlyVisitor<T>(PhantomData<T>);

impl<'de, T: Shape> Visitor<'de> for OnlyVisitor<T> {
    type Value = Only<T>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_u64<E: de::Error>(self, n: u64) -> Result<Only<T>, E> {
        Ok(Only(T::from_u64(n)))
    }

    fn visit_i64<E: de::Error>(self, n: i64) -> Result<Only<T>, E> {
        Ok(Only(u64::try_from(n).ok().and_then(T::from_u64)))
    }

    fn visit_u128<E: de::Error>(self, _: u128) -> Result<Only<T>, E> {
        Ok(Only(None))
    }

    fn visit_i128<E: de::Error>(self, _: i128) -> Result<Only<T>, E> {
        Ok(Only(None))
    }

    fn visit_f64<E: de::Error>(self, _: f64) -> Result<Only<T>, E> {
        Ok(Only(None))
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Only<T>, E> {
        Ok(Only(None))
    }

    fn visit_str<E: de::Error>(self, _: &str) -> Result<Only<T>, E> {
        Ok(Only(None))
    }

    fn visit_bytes<E: de::Error>(self, _: &[u8]) -> Result<Only<T>, E> {
        Ok(Only(None))
    }

    fn visit_unit<E: de::Error>(self) -> Result<Only<T>, E> {
        Ok(Only(None))
    }

    fn visit_none<E: de::Error>(self) -> Result<Only<T>, E> {
        Ok(Only(None))
    }

    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Only<T>, D::Error> {
        Only::deserialize(d)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Only<T>, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(Only(None))
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Only<T>, A::Error> {
        T::from_map(map).map(Only)
    }
}

/// Keys are matched without allocating (escaped keys included); unknown ones are skipped.
#[derive(Deserialize)]
#[serde(field_identifier, rename_all = "snake_case")]
enum UsageKey {
    InputTokens,
    OutputTokens,
    CacheReadInputTokens,
    CacheCreationInputTokens,
    CacheCreation,
    ServerToolUse,
    #[serde(other)]
    Other,
}

#[derive(Deserialize)]
#[serde(field_identifier, rename_all = "snake_case")]
enum SplitKey {
    #[serde(rename = "ephemeral_5m_input_tokens")]
    Ephemeral5m,
    #[serde(rename = "ephemeral_1h_input_tokens")]
    Ephemeral1h,
    #[serde(other)]
    Other,
}

#[derive(Deserialize)]
#[serde(field_identifier, rename_all = "snake_case")]
enum ToolKey {
    WebSearchRequests,
    #[serde(other)]
    Other,
}

/// `cache_creation`: the 5m and 1h writes.
struct Split(Option<u64>, Option<u64>);

/// `server_tool_use`: the web searches.
struct ServerToolUse(Option<u64>);

/// Reads one field's value; a key given twice keeps the last value, as a JSON object does.
fn count<'de, A: MapAccess<'de>>(map: &mut A) -> Result<Option<u64>, A::Error> {
    Ok(map.next_value::<Only<u64>>()?.0)
}

impl Shape for UsageObject {
    fn from_map<'de, A: MapAccess<'de>>(mut map: A) -> Result<Option<Self>, A::Error> {
        let mut u = UsageObject::default();
        while let Some(key) = map.next_key::<UsageKey>()? {
            match key {
                UsageKey::InputTokens => u.input_tokens = count(&mut map)?,
                UsageKey::OutputTokens => u.output_tokens = count(&mut map)?,
                UsageKey::CacheReadInputTokens => u.cache_read_input_tokens = count(&mut map)?,
                UsageKey::CacheCreationInputTokens => {
                    u.cache_creation_input_tokens = count(&mut map)?
                }
                UsageKey::CacheCreation => {
                    u.cache_creation = map.next_value::<Only<Split>>()?.0.map(|s| (s.0, s.1))
                }
                UsageKey::ServerToolUse => {
                    u.web_search_requests =
                        map.next_value::<Only<ServerToolUse>>()?.0.and_then(|t| t.0)
                }
                UsageKey::Other => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(Some(u))
    }
}

impl Shape for Split {
    fn from_map<'de, A: MapAccess<'de>>(mut map: A) -> Result<Option<Self>, A::Error> {
        let mut s = Split(None, None);
        while let Some(key) = map.next_key::<SplitKey>()? {
            match key {
                SplitKey::Ephemeral5m => s.0 = count(&mut map)?,
                SplitKey::Ephemeral1h => s.1 = count(&mut map)?,
                SplitKey::Other => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(Some(s))
    }
}

impl Shape for ServerToolUse {
    fn from_map<'de, A: MapAccess<'de>>(mut map: A) -> Result<Option<Self>, A::Error> {
        let mut t = ServerToolUse(None);
        while let Some(key) = map.next_key::<ToolKey>()? {
            match key {
                ToolKey::WebSearchRequests => t.0 = count(&mut map)?,
                ToolKey::Other => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(Some(t))
    }
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use super::*;

    fn read(v: &Value) -> Option<UsageObject> {
        serde_json::from_str::<Only<UsageObject>>(&v.to_string())
            .unwrap()
            .0
    }

    /// What reading through `serde_json::Value` (the way it was done before) gives.
    fn by_value(v: &Value) -> Option<UsageObject> {
        let get = |v: &Value, k: &str| v.get(k).and_then(Value::as_u64);
        v.is_object().then(|| UsageObject {
            input_tokens: get(v, "input_tokens"),
            output_tokens: get(v, "output_tokens"),
            cache_read_input_tokens: get(v, "cache_read_input_tokens"),
            cache_creation_input_tokens: get(v, "cache_creation_input_tokens"),
            cache_creation: v.get("cache_creation").filter(|s| s.is_object()).map(|s| {
                (
                    get(s, "ephemeral_5m_input_tokens"),
                    get(s, "ephemeral_1h_input_tokens"),
                )
            }),
            web_search_requests: v
                .get("server_tool_use")
                .and_then(|s| get(s, "web_search_requests")),
        })
    }

    #[test]
    fn reads_what_a_value_would_have_given() {
        let cases = [
            json!({"input_tokens": 26, "output_tokens": 1, "cache_read_input_tokens": 3,
                   "cache_creation_input_tokens": 7,
                   "cache_creation": {"ephemeral_5m_input_tokens": 4, "ephemeral_1h_input_tokens": 3},
                   "server_tool_use": {"web_search_requests": 2}, "service_tier": "standard"}),
            json!({"output_tokens": 12}),
            // Not non-negative integers: absent.
            json!({"input_tokens": -1, "output_tokens": 1.5, "cache_read_input_tokens": "3",
                   "cache_creation_input_tokens": null, "cache_creation": [1, 2],
                   "server_tool_use": 5}),
            json!({"cache_creation": null, "server_tool_use": {"web_search_requests": {"n": 1}}}),
            json!({"cache_creation": {"ephemeral_5m_input_tokens": true, "other": {"a": [1, {}]}}}),
            // Unknown keys with nested values, a key given twice (the last wins), huge numbers.
            json!({"extra": {"input_tokens": 99}, "input_tokens": 1, "output_tokens": 18446744073709551615u64}),
            json!({}),
            json!(5),
            json!("usage"),
            json!([{"input_tokens": 1}]),
            json!(null),
        ];
        for v in &cases {
            assert_eq!(read(v), by_value(v), "{v}");
        }
        let twice = r#"{"input_tokens": 1, "input_tokens": 2}"#;
        let u = serde_json::from_str::<Only<UsageObject>>(twice)
            .unwrap()
            .0
            .unwrap();
        assert_eq!(u.input_tokens, Some(2));
        let escaped = r#"{"input\u005ftokens": 9}"#;
        let u = serde_json::from_str::<Only<UsageObject>>(escaped)
            .unwrap()
            .0
            .unwrap();
        assert_eq!(u.input_tokens, Some(9));
    }
}
