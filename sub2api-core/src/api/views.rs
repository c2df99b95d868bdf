//! JSON views of records: what the API shows. Secrets have no view: a credential, a password
//! hash or a stored key never reaches a response (a new key's plaintext is added to the one
//! answer that creates it).

use serde_json::{Value, json};

use super::schema::{format_time, out};
use super::store::{
    CodeStatus, CodeValue, GroupRecord, KeyRecord, OrderView, PlanRecord, RedeemCodeRecord,
    SubscriptionRecord, UsageBucket, UserRecord,
};
use crate::account_provider::AccountStatus;
use crate::domain::{Account, AccountKind, Group, UsageRecord};
use crate::ledger::Balance;
use crate::subscription::{WindowLength, WindowSpec};

fn opt_time(ms: Option<i64>) -> Value {
    ms.map_or(Value::Null, |t| Value::String(format_time(t)))
}

pub fn user(u: &UserRecord, balance: Option<Balance>) -> Value {
    let b = balance.unwrap_or_default();
    json!({
        "id": u.id,
        "email": u.email,
        "enabled": u.enabled,
        "is_admin": u.is_admin,
        "concurrency": u.limits.concurrency,
        "rpm": u.limits.rpm,
        "balance_usd": b.total.to_string(),
        "held_usd": b.held.to_string(),
        "available_usd": b.available().to_string(),
        "created_at": format_time(u.created_at_ms),
    })
}

pub fn user_schema() -> Value {
    out::obj(&[
        ("id", out::int()),
        ("email", out::string()),
        ("enabled", out::boolean()),
        ("is_admin", out::boolean()),
        ("concurrency", out::nullable_int()),
        ("rpm", out::nullable_int()),
        ("balance_usd", out::usd()),
        ("held_usd", out::usd()),
        ("available_usd", out::usd()),
        ("created_at", out::time()),
    ])
}

pub fn key(k: &KeyRecord, group: Option<&Group>) -> Value {
    json!({
        "id": k.id,
        "user_id": k.user_id,
        "group_id": k.group_id,
        "group": group.map(|g| g.name.clone()),
        "name": k.name,
        "enabled": k.enabled,
        "hint": k.hint,
        "quota_usd": k.rules.quota.map(|q| q.to_string()),
        "quota_used_usd": k.rules.quota.map(|_| k.quota_used.to_string()),
        "expires_at": opt_time(k.rules.expires_at_ms),
        "ip_allowlist": k.rules.ip_allowlist.iter().map(|n| n.to_string()).collect::<Vec<_>>(),
        "concurrency": k.limits.concurrency,
        "rpm": k.limits.rpm,
        "created_at": format_time(k.created_at_ms),
    })
}

pub fn key_schema() -> Value {
    out::obj(&[
        ("id", out::int()),
        ("user_id", out::int()),
        ("group_id", out::int()),
        ("group", out::nullable_string()),
        ("name", out::string()),
        ("enabled", out::boolean()),
        ("hint", out::string()),
        ("quota_usd", out::nullable_usd()),
        ("quota_used_usd", out::nullable_usd()),
        ("expires_at", out::nullable_time()),
        ("ip_allowlist", out::array(out::string())),
        ("concurrency", out::nullable_int()),
        ("rpm", out::nullable_int()),
        ("created_at", out::time()),
    ])
}

pub fn new_key_schema() -> Value {
    let mut s = key_schema();
    s["properties"]["key"] =
        json!({"type": "string", "description": "the key itself, shown this once"});
    s
}

fn kind_str(k: AccountKind) -> Value {
    serde_json::to_value(k).unwrap_or(Value::Null)
}

pub fn status(s: &AccountStatus) -> Value {
    match s {
        AccountStatus::Ready => json!({"state": "ready"}),
        AccountStatus::CoolingDown { until_ms, reason } => {
            json!({"state": "cooling_down", "until": format_time(*until_ms), "reason": reason})
        }
        AccountStatus::Disabled { reason } => json!({"state": "disabled", "reason": reason}),
    }
}

/// An account without its credentials; a proxy is shown without its password.
pub fn account(a: &Account, groups: &[Group], st: &AccountStatus) -> Value {
    let mut options = serde_json::to_value(&a.options).unwrap_or_else(|_| json!({}));
    if let (Some(o), Some(p)) = (options.as_object_mut(), a.options.proxy.as_ref()) {
        o.insert("proxy".into(), Value::String(p.redacted()));
    }
    json!({
        "id": a.id,
        "name": a.name,
        "platform": a.platform.as_str(),
        "type": kind_str(a.kind),
        "base_url": a.base_url,
        "priority": a.priority,
        "concurrency": a.concurrency,
        "groups": a.groups.iter().filter_map(|id| groups.iter().find(|g| g.id == *id).map(|g| g.name.clone())).collect::<Vec<_>>(),
        "enabled": a.enabled,
        "status": status(st),
        "options": options,
    })
}

pub fn account_schema() -> Value {
    out::obj(&[
        ("id", out::int()),
        ("name", out::string()),
        ("platform", out::string()),
        ("type", out::string()),
        ("base_url", out::string()),
        ("priority", out::int()),
        ("concurrency", out::int()),
        ("groups", out::array(out::string())),
        ("enabled", out::boolean()),
        (
            "status",
            out::obj(&[
                ("state", out::string()),
                ("until", out::nullable_time()),
                ("reason", out::nullable_string()),
            ]),
        ),
        ("options", out::any_object()),
    ])
}

pub fn window(w: &WindowSpec) -> Value {
    let mut v = json!({"kind": w.length.kind_str(), "limit_usd": w.limit.to_string()});
    if let WindowLength::Rolling { ms } = w.length {
        v["hours"] = json!(ms as f64 / 3_600_000.0);
        v["minutes"] = json!(ms / 60_000);
    }
    v
}

pub fn window_schema() -> Value {
    out::obj(&[
        ("kind", out::string()),
        ("hours", json!({"type": "number"})),
        ("minutes", out::int()),
        ("limit_usd", out::usd()),
    ])
}

pub fn group(g: &GroupRecord, default_plan: Option<&PlanRecord>) -> Value {
    json!({
        "id": g.group.id,
        "name": g.group.name,
        "platform": g.group.platform.as_str(),
        "rate_multiplier": g.group.rate_multiplier.to_string(),
        "billing_mode": g.billing_mode.as_str(),
        "user_rates": g.user_rates.iter().map(|r| json!({"user_id": r.user_id, "rate_multiplier": r.rate_multiplier.to_string()})).collect::<Vec<_>>(),
        "subscription_days": default_plan.map(|p| p.duration_days),
        "subscription_windows": default_plan.map(|p| p.windows.iter().map(window).collect::<Vec<_>>()),
    })
}

pub fn group_schema() -> Value {
    out::obj(&[
        ("id", out::int()),
        ("name", out::string()),
        ("platform", out::string()),
        ("rate_multiplier", out::string()),
        (
            "billing_mode",
            json!({"type": "string", "enum": ["wallet", "subscription", "both"]}),
        ),
        (
            "user_rates",
            out::array(out::obj(&[
                ("user_id", out::int()),
                ("rate_multiplier", out::string()),
            ])),
        ),
        ("subscription_days", out::nullable_int()),
        (
            "subscription_windows",
            json!({"type": ["array", "null"], "items": window_schema()}),
        ),
    ])
}

pub fn plan(p: &PlanRecord) -> Value {
    json!({
        "id": p.id,
        "name": p.name,
        "group_id": p.group_id,
        "duration_days": p.duration_days,
        "windows": p.windows.iter().map(window).collect::<Vec<_>>(),
        "enabled": p.enabled,
        "price_minor": p.price_minor,
        "currency": p.currency,
    })
}

pub fn plan_schema() -> Value {
    out::obj(&[
        ("id", out::int()),
        ("name", out::string()),
        ("group_id", out::int()),
        ("duration_days", out::int()),
        ("windows", out::array(window_schema())),
        ("enabled", out::boolean()),
        ("price_minor", out::nullable_int()),
        ("currency", out::nullable_string()),
    ])
}

pub fn subscription(s: &SubscriptionRecord, now_ms: i64) -> Value {
    let status = if s.revoked {
        "revoked"
    } else if s.expires_at_ms <= now_ms {
        "expired"
    } else if s.starts_at_ms > now_ms {
        "scheduled"
    } else {
        "active"
    };
    json!({
        "id": s.id,
        "user_id": s.user_id,
        "plan_id": s.plan_id,
        "group_id": s.group_id,
        "starts_at": format_time(s.starts_at_ms),
        "expires_at": format_time(s.expires_at_ms),
        "status": status,
    })
}

pub fn subscription_schema() -> Value {
    out::obj(&[
        ("id", out::int()),
        ("user_id", out::int()),
        ("plan_id", out::int()),
        ("group_id", out::int()),
        ("starts_at", out::time()),
        ("expires_at", out::time()),
        (
            "status",
            json!({"type": "string", "enum": ["active", "scheduled", "expired", "revoked"]}),
        ),
    ])
}

pub fn code(c: &RedeemCodeRecord, now_ms: i64) -> Value {
    let status = match c.status {
        CodeStatus::Unused if c.expires_at_ms.is_some_and(|e| e <= now_ms) => "expired",
        CodeStatus::Unused => "unused",
        CodeStatus::Used => "used",
        CodeStatus::Disabled => "disabled",
    };
    let mut v = json!({
        "code": c.code,
        "batch_id": c.batch_id,
        "status": status,
        "created_at": format_time(c.created_at_ms),
        "expires_at": opt_time(c.expires_at_ms),
        "used_by": c.used_by,
        "used_at": opt_time(c.used_at_ms),
    });
    match &c.value {
        CodeValue::Balance { amount } => {
            v["kind"] = json!("balance");
            v["amount_usd"] = json!(amount.to_string());
        }
        CodeValue::Plan { plan_id, days } => {
            v["kind"] = json!("plan");
            v["plan_id"] = json!(plan_id);
            v["days"] = json!(days);
        }
    }
    v
}

pub fn code_schema() -> Value {
    out::obj(&[
        ("code", out::string()),
        ("batch_id", out::string()),
        (
            "kind",
            json!({"type": "string", "enum": ["balance", "plan"]}),
        ),
        ("amount_usd", out::nullable_usd()),
        ("plan_id", out::nullable_int()),
        ("days", out::nullable_int()),
        (
            "status",
            json!({"type": "string", "enum": ["unused", "used", "disabled", "expired"]}),
        ),
        ("created_at", out::time()),
        ("expires_at", out::nullable_time()),
        ("used_by", out::nullable_int()),
        ("used_at", out::nullable_time()),
    ])
}

pub fn order(o: &OrderView) -> Value {
    json!({
        "id": o.id,
        "out_trade_no": o.out_trade_no,
        "user_id": o.user_id,
        "provider": o.provider,
        "amount_minor": o.amount_minor,
        "currency": o.currency,
        "credit_usd": o.credit.to_string(),
        "status": o.status,
        "kind": o.kind,
        "plan_id": o.plan_id,
        "created_at": format_time(o.created_at_ms),
        "paid_at": opt_time(o.paid_at_ms),
    })
}

pub fn order_schema() -> Value {
    out::obj(&[
        ("id", out::int()),
        ("out_trade_no", out::string()),
        ("user_id", out::int()),
        ("provider", out::string()),
        ("amount_minor", out::int()),
        ("currency", out::string()),
        ("credit_usd", out::usd()),
        ("status", out::string()),
        ("kind", out::string()),
        ("plan_id", out::nullable_int()),
        ("created_at", out::time()),
        ("paid_at", out::nullable_time()),
    ])
}

/// One usage row; `admin` adds which upstream account served it.
pub fn usage(r: &UsageRecord, admin: bool) -> Value {
    let mut v = json!({
        "request_id": r.request_id,
        "user_id": r.user_id,
        "key_id": r.key_id,
        "model": r.model,
        "input_tokens": r.usage.input_tokens,
        "output_tokens": r.usage.output_tokens,
        "cache_creation_tokens": r.usage.cache_creation_tokens(),
        "cache_read_tokens": r.usage.cache_read_tokens,
        "cost_usd": r.cost.to_string(),
        "stream": r.stream,
        "ending": r.ending,
        "duration_ms": r.duration_ms,
        "created_at": format_time(r.created_at),
    });
    if admin {
        v["account_id"] = json!(r.account_id);
    }
    v
}

pub fn usage_schema(admin: bool) -> Value {
    let mut fields = vec![
        ("request_id", out::string()),
        ("user_id", out::int()),
        ("key_id", out::int()),
        ("model", out::string()),
        ("input_tokens", out::int()),
        ("output_tokens", out::int()),
        ("cache_creation_tokens", out::int()),
        ("cache_read_tokens", out::int()),
        ("cost_usd", out::usd()),
        ("stream", out::boolean()),
        ("ending", out::string()),
        ("duration_ms", out::int()),
        ("created_at", out::time()),
    ];
    if admin {
        fields.push(("account_id", out::nullable_int()));
    }
    out::obj(&fields)
}

pub fn bucket(b: &UsageBucket) -> Value {
    json!({
        "key": b.key,
        "requests": b.requests,
        "input_tokens": b.input_tokens,
        "output_tokens": b.output_tokens,
        "cache_creation_tokens": b.cache_creation_tokens,
        "cache_read_tokens": b.cache_read_tokens,
        "cost_usd": b.cost.to_string(),
    })
}

pub fn summary_schema() -> Value {
    out::obj(&[
        ("by", out::string()),
        (
            "items",
            out::array(out::obj(&[
                ("key", out::string()),
                ("requests", out::int()),
                ("input_tokens", out::int()),
                ("output_tokens", out::int()),
                ("cache_creation_tokens", out::int()),
                ("cache_read_tokens", out::int()),
                ("cost_usd", out::usd()),
            ])),
        ),
        (
            "total",
            out::obj(&[("requests", out::int()), ("cost_usd", out::usd())]),
        ),
    ])
}
