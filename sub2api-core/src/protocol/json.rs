//! Small, exact JSON edits without building a DOM of the whole body.
//!
//! Request bodies can be megabytes of conversation, and what the relay changes per account is a
//! handful of top-level fields (`model`, `stream_options`, `store`, `metadata`, `system`).
//! [`Object`] reads only the top level (values stay raw, in their original bytes and order) and
//! writes it back with the edits. [`replace_strings_at`] rewrites string values at given key
//! paths in a response payload, leaving every other byte as it was.

use std::borrow::Cow;

use serde::Serialize;
use serde::de::{Deserializer, MapAccess, Visitor};
use serde_json::value::RawValue;

/// The top level of a JSON object, values raw, order kept.
pub struct Object<'a> {
    entries: Vec<(String, Cow<'a, RawValue>)>,
}

impl<'a> Object<'a> {
    /// Parses `bytes` as an object (an error for anything else, or malformed JSON).
    pub fn parse(bytes: &'a [u8]) -> Result<Self, serde_json::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Vec<(String, Cow<'de, RawValue>)>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<M: MapAccess<'de>>(self, mut map: M) -> Result<Self::Value, M::Error> {
                let mut entries = Vec::with_capacity(map.size_hint().unwrap_or(8));
                while let Some((k, v)) = map.next_entry::<String, &'de RawValue>()? {
                    entries.push((k, Cow::Borrowed(v)));
                }
                Ok(entries)
            }
        }
        let mut de = serde_json::Deserializer::from_slice(bytes);
        let entries = (&mut de).deserialize_map(V)?;
        de.end()?;
        Ok(Object { entries })
    }

    pub fn get(&self, key: &str) -> Option<&RawValue> {
        self.entries
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_ref())
    }

    /// A value parsed into `T` (`None` when absent or of another shape).
    pub fn get_as<T: serde::de::DeserializeOwned>(&self, key: &str) -> Option<T> {
        serde_json::from_str(self.get(key)?.get()).ok()
    }

    pub fn contains(&self, key: &str) -> bool {
        self.get(key).is_some()
    }

    /// Sets `key` (in place when present, else appended).
    pub fn set(&mut self, key: &str, value: &impl Serialize) {
        let raw = serde_json::value::to_raw_value(value).expect("serializable value");
        self.set_raw(key, raw);
    }

    pub fn set_raw(&mut self, key: &str, raw: Box<RawValue>) {
        match self.entries.iter_mut().find(|(k, _)| k == key) {
            Some((_, v)) => *v = Cow::Owned(raw),
            None => self.entries.push((key.to_owned(), Cow::Owned(raw))),
        }
    }

    /// Puts `key` first (in place of any existing value).
    pub fn set_first(&mut self, key: &str, value: &impl Serialize) {
        self.remove(key);
        let raw = serde_json::value::to_raw_value(value).expect("serializable value");
        self.entries.insert(0, (key.to_owned(), Cow::Owned(raw)));
    }

    pub fn remove(&mut self, key: &str) -> Option<Cow<'a, RawValue>> {
        let i = self.entries.iter().position(|(k, _)| k == key)?;
        Some(self.entries.remove(i).1)
    }

    pub fn to_vec(&self) -> Vec<u8> {
        let len: usize = self
            .entries
            .iter()
            .map(|(k, v)| k.len() + v.get().len() + 4)
            .sum();
        let mut out = Vec::with_capacity(len + 2);
        out.push(b'{');
        for (i, (k, v)) in self.entries.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            serde_json::to_writer(&mut out, k).expect("string key");
            out.push(b':');
            out.extend_from_slice(v.get().as_bytes());
        }
        out.push(b'}');
        out
    }
}

/// Rewrites every string value found at one of `paths` (keys from the root, objects only) to
/// `value`; `None` when nothing matched (the input is unchanged). Bytes elsewhere are kept as
/// they are, so a payload is never re-serialized. Malformed input is left alone.
pub fn replace_strings_at(json: &[u8], paths: &[&[&str]], value: &str) -> Option<Vec<u8>> {
    struct Frame<'j> {
        object: bool,
        expect_key: bool,
        key: Option<&'j [u8]>,
    }
    let b = json;
    let mut stack: Vec<Frame<'_>> = Vec::new();
    let mut out: Option<Vec<u8>> = None;
    let mut copied = 0;
    let mut i = 0;
    let replacement = serde_json::to_vec(value).expect("string");
    while i < b.len() {
        match b[i] {
            b'{' => {
                stack.push(Frame {
                    object: true,
                    expect_key: true,
                    key: None,
                });
                i += 1;
            }
            b'[' => {
                stack.push(Frame {
                    object: false,
                    expect_key: false,
                    key: None,
                });
                i += 1;
            }
            b'}' | b']' => {
                stack.pop();
                i += 1;
            }
            b',' => {
                if let Some(f) = stack.last_mut()
                    && f.object
                {
                    f.expect_key = true;
                }
                i += 1;
            }
            b'"' => {
                let start = i;
                i += 1;
                while i < b.len() && b[i] != b'"' {
                    i += if b[i] == b'\\' { 2 } else { 1 };
                }
                if i >= b.len() {
                    return None;
                }
                i += 1;
                let inner = &b[start + 1..i - 1];
                let Some(top) = stack.last_mut() else {
                    continue;
                };
                if top.object && top.expect_key {
                    top.key = Some(inner);
                    top.expect_key = false;
                    continue;
                }
                if !top.object || !stack.iter().all(|f| f.object) {
                    continue;
                }
                let matches = paths.iter().any(|p| {
                    p.len() == stack.len()
                        && p.iter()
                            .zip(&stack)
                            .all(|(k, f)| f.key == Some(k.as_bytes()))
                });
                if matches && inner != value.as_bytes() {
                    let o = out.get_or_insert_with(|| Vec::with_capacity(json.len() + 16));
                    o.extend_from_slice(&b[copied..start]);
                    o.extend_from_slice(&replacement);
                    copied = i;
                }
            }
            _ => i += 1,
        }
    }
    let mut o = out?;
    o.extend_from_slice(&b[copied..]);
    Some(o)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn top_level_edits_keep_order_and_raw_values() {
        let body = br#"{"model":"a","messages":[{"role":"user","content":"x \u00e9"}], "n": 1.50}"#;
        let mut o = Object::parse(body).unwrap();
        assert_eq!(o.get_as::<String>("model").as_deref(), Some("a"));
        o.set("model", &"b");
        o.set("store", &false);
        o.set_first("first", &1);
        assert_eq!(
            String::from_utf8(o.to_vec()).unwrap(),
            r#"{"first":1,"model":"b","messages":[{"role":"user","content":"x \u00e9"}],"n":1.50,"store":false}"#
        );
        assert!(Object::parse(b"[1]").is_err());
        assert!(Object::parse(b"{\"a\":1} x").is_err());
    }

    #[test]
    fn strings_at_paths() {
        let p: &[&[&str]] = &[&["model"], &["message", "model"]];
        let ev = br#"{"type":"message_start","message":{"id":"m","model":"claude-opus-4-5-20251101","content":[{"type":"tool_use","input":{"model":"keep"}}],"x":{"model":"keep"}}}"#;
        let out = replace_strings_at(ev, p, "claude-3-opus").unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            r#"{"type":"message_start","message":{"id":"m","model":"claude-3-opus","content":[{"type":"tool_use","input":{"model":"keep"}}],"x":{"model":"keep"}}}"#
        );
        let chunk =
            br#"{"id":"c","model":"gpt-4.1", "choices":[{"delta":{"content":"\"model\":\"x\""}}]}"#;
        let out = replace_strings_at(chunk, p, "gpt-4o").unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            r#"{"id":"c","model":"gpt-4o", "choices":[{"delta":{"content":"\"model\":\"x\""}}]}"#
        );
        assert!(replace_strings_at(br#"{"model":"gpt-4o"}"#, p, "gpt-4o").is_none());
        assert!(replace_strings_at(br#"{"other":1}"#, p, "x").is_none());
    }
}
