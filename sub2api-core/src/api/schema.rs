//! A small, derive-free description of request inputs: each field has a name, a [`Ty`] and a
//! description. The same description validates a request (field-level errors, before a handler
//! runs) and becomes the route's JSON Schema in the OpenAPI document.

use serde_json::{Map, Value, json};

use super::ApiError;
use crate::money::{Money, Multiplier};

/// The type of an input field.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ty {
    /// A non-empty string of at most `max` characters.
    Str {
        max: usize,
    },
    /// An email address.
    Email,
    /// A password (8 to 256 characters).
    Password,
    /// An exact USD amount: a decimal string (`"10.50"`) or an integer; never a float.
    Usd {
        allow_negative: bool,
    },
    /// A rate multiplier: a decimal string (`"1.5"`) or an integer, not negative.
    Multiplier,
    /// An integer in `min..=max`.
    Int {
        min: i64,
        max: i64,
    },
    Bool,
    /// An RFC 3339 time (`2025-03-14T00:00:00Z`), a date (`2025-03-14`, UTC midnight) or unix ms.
    Time,
    /// One of the listed strings.
    Enum(&'static [&'static str]),
    /// A list of strings (each at most 256 characters), at most `max` items.
    StrList {
        max: usize,
    },
    /// A list of objects (described in the route's docs), at most `max` items.
    ObjList {
        max: usize,
    },
    /// A JSON object, checked by the handler.
    Object,
    /// A positive integer id.
    Id,
}

/// Where a parameter travels.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum In {
    Path,
    Query,
    Body,
}

/// One input of a route.
#[derive(Clone, Copy, Debug)]
pub struct Field {
    pub name: &'static str,
    pub ty: Ty,
    pub required: bool,
    pub desc: &'static str,
}

pub const fn req(name: &'static str, ty: Ty, desc: &'static str) -> Field {
    Field {
        name,
        ty,
        required: true,
        desc,
    }
}

pub const fn opt(name: &'static str, ty: Ty, desc: &'static str) -> Field {
    Field {
        name,
        ty,
        required: false,
        desc,
    }
}

pub const STR: Ty = Ty::Str { max: 200 };
pub const USD: Ty = Ty::Usd {
    allow_negative: false,
};
pub const SIGNED_USD: Ty = Ty::Usd {
    allow_negative: true,
};
pub const LIMIT: Ty = Ty::Int { min: 1, max: 1000 };
pub const OFFSET: Ty = Ty::Int {
    min: 0,
    max: i32::MAX as i64,
};

fn bad(field: &str, message: impl Into<String>) -> ApiError {
    ApiError::field(field, message)
}

/// Parses a time input into unix ms.
pub fn parse_time(v: &Value) -> Result<i64, String> {
    const MSG: &str = "expected an RFC 3339 time (2025-03-14T00:00:00Z), a date (2025-03-14) or unix milliseconds";
    match v {
        Value::Number(n) => n.as_i64().filter(|x| *x >= 0).ok_or_else(|| MSG.to_owned()),
        Value::String(s) => parse_time_str(s).ok_or_else(|| MSG.to_owned()),
        _ => Err(MSG.to_owned()),
    }
}

pub fn parse_time_str(s: &str) -> Option<i64> {
    let s = s.trim();
    if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) {
        return s.parse().ok();
    }
    if let Ok(t) = time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339) {
        return i64::try_from(t.unix_timestamp_nanos() / 1_000_000).ok();
    }
    let fmt = time::macros::format_description!("[year]-[month]-[day]");
    let d = time::Date::parse(s, &fmt).ok()?;
    Some(d.midnight().assume_utc().unix_timestamp() * 1000)
}

/// Formats unix ms as RFC 3339 (UTC, millisecond precision).
pub fn format_time(ms: i64) -> String {
    let t = time::OffsetDateTime::from_unix_timestamp_nanos(ms as i128 * 1_000_000)
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    let fmt = time::macros::format_description!(
        "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z"
    );
    t.format(&fmt).unwrap_or_default()
}

/// Normalises and checks an email address.
pub fn check_email(s: &str) -> Result<String, String> {
    let s = s.trim().to_ascii_lowercase();
    let ok = s.len() <= 254
        && !s.chars().any(|c| c.is_whitespace() || c.is_control())
        && matches!(s.split_once('@'), Some((local, domain)) if !local.is_empty() && !domain.is_empty() && !domain.contains('@') && !domain.starts_with('.') && !domain.ends_with('.'));
    if ok {
        Ok(s)
    } else {
        Err("not an email address".into())
    }
}

fn money_of(v: &Value) -> Result<Money, String> {
    match v {
        Value::String(s) => Money::parse_usd(s).map_err(|e| e.to_string()),
        Value::Number(n) => match n.as_i64() {
            Some(i) => i
                .checked_mul(crate::money::NANOS_PER_USD)
                .map(Money::from_nanos)
                .ok_or_else(|| "amount out of range".into()),
            None => Err("amounts are exact decimal strings such as \"10.50\", never floats".into()),
        },
        _ => Err("expected a decimal string such as \"10.50\"".into()),
    }
}

fn multiplier_of(v: &Value) -> Result<Multiplier, String> {
    match v {
        Value::String(s) => Multiplier::parse(s).map_err(|e| e.to_string()),
        Value::Number(n) => match n.as_i64() {
            Some(i) if i >= 0 => Ok(Multiplier::from_ppm(i.saturating_mul(1_000_000))),
            Some(_) => Err("a multiplier is not negative".into()),
            None => {
                Err("multipliers are exact decimal strings such as \"1.5\", never floats".into())
            }
        },
        _ => Err("expected a decimal string such as \"1.5\"".into()),
    }
}

/// Checks one value against its type. Returns a message for the field on failure.
pub fn check(ty: Ty, v: &Value) -> Result<(), String> {
    match ty {
        Ty::Str { max } => match v.as_str() {
            Some(s) if s.trim().is_empty() => Err("must not be empty".into()),
            Some(s) if s.chars().count() > max => Err(format!("at most {max} characters")),
            Some(s) if s.chars().any(char::is_control) => {
                Err("must not contain control characters".into())
            }
            Some(_) => Ok(()),
            None => Err("expected a string".into()),
        },
        Ty::Email => check_email(v.as_str().ok_or("expected a string")?).map(|_| ()),
        Ty::Password => match v.as_str() {
            Some(s) if s.chars().count() < 8 => Err("at least 8 characters".into()),
            Some(s) if s.chars().count() > 256 => Err("at most 256 characters".into()),
            Some(_) => Ok(()),
            None => Err("expected a string".into()),
        },
        Ty::Usd { allow_negative } => {
            let m = money_of(v)?;
            if m.is_negative() && !allow_negative {
                return Err("must not be negative".into());
            }
            Ok(())
        }
        Ty::Multiplier => multiplier_of(v).map(|_| ()),
        Ty::Int { min, max } => match v.as_i64() {
            Some(i) if i < min || i > max => Err(format!("must be between {min} and {max}")),
            Some(_) => Ok(()),
            None => Err("expected an integer".into()),
        },
        Ty::Bool => v
            .as_bool()
            .map(|_| ())
            .ok_or_else(|| "expected true or false".into()),
        Ty::Time => parse_time(v).map(|_| ()),
        Ty::Enum(options) => match v.as_str() {
            Some(s) if options.contains(&s) => Ok(()),
            _ => Err(format!("expected one of: {}", options.join(", "))),
        },
        Ty::StrList { max } => match v.as_array() {
            Some(a) if a.len() > max => Err(format!("at most {max} items")),
            Some(a)
                if a.iter().all(|x| {
                    x.as_str()
                        .is_some_and(|s| !s.trim().is_empty() && s.len() <= 256)
                }) =>
            {
                Ok(())
            }
            _ => Err("expected a list of non-empty strings".into()),
        },
        Ty::ObjList { max } => match v.as_array() {
            Some(a) if a.len() > max => Err(format!("at most {max} items")),
            Some(a) if a.iter().all(Value::is_object) => Ok(()),
            _ => Err("expected a list of objects".into()),
        },
        Ty::Object => v
            .is_object()
            .then_some(())
            .ok_or_else(|| "expected an object".into()),
        Ty::Id => match v.as_i64() {
            Some(i) if i >= 1 => Ok(()),
            _ => Err("expected a positive integer id".into()),
        },
    }
}

/// Validates a JSON body against `fields`: an object, no unknown fields, required fields present,
/// each field of its type. `null` counts as absent for optional fields.
pub fn validate_body(fields: &[Field], body: &Value) -> Result<(), ApiError> {
    let Some(obj) = body.as_object() else {
        return Err(ApiError::bad_request(
            "invalid_json",
            "the request body must be a JSON object",
        ));
    };
    for name in obj.keys() {
        if !fields.iter().any(|f| f.name == name) {
            return Err(bad(name, format!("unknown field `{name}`")));
        }
    }
    for f in fields {
        match obj.get(f.name) {
            None | Some(Value::Null) if f.required => return Err(bad(f.name, "is required")),
            None | Some(Value::Null) => {}
            Some(v) => check(f.ty, v).map_err(|m| bad(f.name, m))?,
        }
    }
    Ok(())
}

/// Validates path or query parameters (strings) and turns them into JSON values of their type.
pub fn validate_params(
    fields: &[Field],
    given: &[(String, String)],
    kind: In,
) -> Result<Map<String, Value>, ApiError> {
    let mut out = Map::new();
    if kind == In::Query {
        for (k, _) in given {
            if !fields.iter().any(|f| f.name == k) {
                return Err(bad(k, format!("unknown query parameter `{k}`")));
            }
        }
    }
    for f in fields {
        let raw = given
            .iter()
            .rev()
            .find(|(k, _)| k == f.name)
            .map(|(_, v)| v.as_str());
        let raw = match raw {
            None | Some("") if f.required => return Err(bad(f.name, "is required")),
            None | Some("") => continue,
            Some(r) => r,
        };
        let v = match f.ty {
            Ty::Int { .. } | Ty::Id => match raw.parse::<i64>() {
                Ok(i) => Value::from(i),
                Err(_) => return Err(bad(f.name, "expected an integer")),
            },
            Ty::Bool => match raw {
                "true" | "1" => Value::Bool(true),
                "false" | "0" => Value::Bool(false),
                _ => return Err(bad(f.name, "expected true or false")),
            },
            _ => Value::String(raw.to_owned()),
        };
        check(f.ty, &v).map_err(|m| bad(f.name, m))?;
        out.insert(f.name.to_owned(), v);
    }
    Ok(out)
}

/// Typed access to a validated object.
#[derive(Clone, Debug, Default)]
pub struct Values(pub Map<String, Value>);

impl Values {
    pub fn get(&self, name: &str) -> Option<&Value> {
        self.0.get(name).filter(|v| !v.is_null())
    }

    pub fn has(&self, name: &str) -> bool {
        self.get(name).is_some()
    }

    /// Present and explicitly `null` (used to clear an optional setting).
    pub fn is_null(&self, name: &str) -> bool {
        matches!(self.0.get(name), Some(Value::Null))
    }

    pub fn str(&self, name: &str) -> Option<String> {
        self.get(name)
            .and_then(Value::as_str)
            .map(|s| s.trim().to_owned())
    }

    pub fn raw_str(&self, name: &str) -> Option<String> {
        self.get(name).and_then(Value::as_str).map(str::to_owned)
    }

    pub fn req_str(&self, name: &str) -> Result<String, ApiError> {
        self.str(name).ok_or_else(|| bad(name, "is required"))
    }

    pub fn email(&self, name: &str) -> Result<Option<String>, ApiError> {
        self.str(name)
            .map(|s| check_email(&s).map_err(|m| bad(name, m)))
            .transpose()
    }

    pub fn i64(&self, name: &str) -> Option<i64> {
        self.get(name).and_then(Value::as_i64)
    }

    pub fn u32(&self, name: &str) -> Option<u32> {
        self.i64(name).and_then(|i| u32::try_from(i).ok())
    }

    pub fn bool(&self, name: &str) -> Option<bool> {
        self.get(name).and_then(Value::as_bool)
    }

    pub fn usd(&self, name: &str) -> Result<Option<Money>, ApiError> {
        self.get(name)
            .map(|v| money_of(v).map_err(|m| bad(name, m)))
            .transpose()
    }

    pub fn multiplier(&self, name: &str) -> Result<Option<Multiplier>, ApiError> {
        self.get(name)
            .map(|v| multiplier_of(v).map_err(|m| bad(name, m)))
            .transpose()
    }

    pub fn time(&self, name: &str) -> Result<Option<i64>, ApiError> {
        self.get(name)
            .map(|v| parse_time(v).map_err(|m| bad(name, m)))
            .transpose()
    }

    pub fn str_list(&self, name: &str) -> Option<Vec<String>> {
        self.get(name).and_then(Value::as_array).map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .map(|s| s.trim().to_owned())
                .collect()
        })
    }
}

// ---- JSON Schema for the OpenAPI document ----

/// The JSON Schema of a field type.
pub fn ty_schema(ty: Ty) -> Value {
    match ty {
        Ty::Str { max } => json!({"type": "string", "minLength": 1, "maxLength": max}),
        Ty::Email => json!({"type": "string", "format": "email"}),
        Ty::Password => {
            json!({"type": "string", "format": "password", "minLength": 8, "maxLength": 256})
        }
        Ty::Usd { allow_negative } => json!({
            "oneOf": [{"type": "string", "pattern": if allow_negative { "^-?[0-9]+(\\.[0-9]{1,9})?$" } else { "^[0-9]+(\\.[0-9]{1,9})?$" }}, {"type": "integer"}],
            "description": "exact USD amount as a decimal string (never a float)"
        }),
        Ty::Multiplier => {
            json!({"oneOf": [{"type": "string", "pattern": "^[0-9]+(\\.[0-9]{1,6})?$"}, {"type": "integer", "minimum": 0}]})
        }
        Ty::Int { min, max } => json!({"type": "integer", "minimum": min, "maximum": max}),
        Ty::Bool => json!({"type": "boolean"}),
        Ty::Time => {
            json!({"oneOf": [{"type": "string", "format": "date-time"}, {"type": "string", "format": "date"}, {"type": "integer", "description": "unix ms"}]})
        }
        Ty::Enum(options) => json!({"type": "string", "enum": options}),
        Ty::StrList { max } => {
            json!({"type": "array", "maxItems": max, "items": {"type": "string"}})
        }
        Ty::ObjList { max } => {
            json!({"type": "array", "maxItems": max, "items": {"type": "object"}})
        }
        Ty::Object => json!({"type": "object"}),
        Ty::Id => json!({"type": "integer", "minimum": 1}),
    }
}

/// The JSON Schema of a request body.
pub fn body_schema(fields: &[Field]) -> Value {
    let mut props = Map::new();
    for f in fields {
        let mut s = ty_schema(f.ty);
        if let Some(o) = s.as_object_mut() {
            o.insert("description".into(), Value::String(f.desc.to_owned()));
        }
        props.insert(f.name.to_owned(), s);
    }
    let required: Vec<&str> = fields
        .iter()
        .filter(|f| f.required)
        .map(|f| f.name)
        .collect();
    let mut s = json!({"type": "object", "additionalProperties": false, "properties": props});
    if !required.is_empty() {
        s["required"] = json!(required);
    }
    s
}

/// Response schema builders (documentation only).
pub mod out {
    use serde_json::{Map, Value, json};

    pub fn string() -> Value {
        json!({"type": "string"})
    }
    pub fn nullable_string() -> Value {
        json!({"type": ["string", "null"]})
    }
    pub fn usd() -> Value {
        json!({"type": "string", "description": "exact USD decimal"})
    }
    pub fn nullable_usd() -> Value {
        json!({"type": ["string", "null"], "description": "exact USD decimal"})
    }
    pub fn time() -> Value {
        json!({"type": "string", "format": "date-time"})
    }
    pub fn nullable_time() -> Value {
        json!({"type": ["string", "null"], "format": "date-time"})
    }
    pub fn int() -> Value {
        json!({"type": "integer"})
    }
    pub fn nullable_int() -> Value {
        json!({"type": ["integer", "null"]})
    }
    pub fn boolean() -> Value {
        json!({"type": "boolean"})
    }
    pub fn any_object() -> Value {
        json!({"type": "object"})
    }
    pub fn array(items: Value) -> Value {
        json!({"type": "array", "items": items})
    }
    pub fn obj(fields: &[(&str, Value)]) -> Value {
        let mut props = Map::new();
        for (k, v) in fields {
            props.insert((*k).to_owned(), v.clone());
        }
        json!({"type": "object", "properties": props})
    }
    /// `{"items": [...], "limit", "offset", "has_more"}`.
    pub fn page(item: Value) -> Value {
        obj(&[
            ("items", array(item)),
            ("limit", int()),
            ("offset", int()),
            ("has_more", boolean()),
        ])
    }
    pub fn list(item: Value) -> Value {
        obj(&[("items", array(item))])
    }
}
