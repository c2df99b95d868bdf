//! Admin routes, and the helpers user routes share with them. Every input is checked before the
//! first write, so a refused request changes nothing.

use std::collections::BTreeMap;
use std::time::Instant;

use serde_json::{Value, json};

use super::schema::{Values, format_time};
use super::store::{
    AccountPatch, CodeBatch, CodeValue, GroupPatch, KeyPatch, KeyRecord, NewKeyRecord,
    NewPlanRecord, NewUser, PlanRecord, UsageBucket, UsageGroupBy, UserPatch,
};
use super::{AdminStore, ApiError, Ctx, Reply, Req, auth, views};
use crate::account_provider::{AccountStatus, now_ms};
use crate::domain::{
    Account, AccountId, AccountKind, AccountOptions, Credentials, GroupId, IpNet, KeyId, KeyLimits,
    KeyRules, Limits, Platform, Secret, UserId,
};
use crate::ledger::{Balance, Credit, EntryKind, LedgerError};
use crate::money::Money;
use crate::store::{NewAccount, NewGroup, StoreError, UsageQuery};
use crate::subscription::{BillingMode, DAY_MS, MINUTE_MS, WindowLength, WindowSpec};

// ---------------------------------------------------------------- shared helpers

/// Operator settings with their defaults.
#[derive(Clone, Debug)]
pub(crate) struct Settings {
    pub registration_enabled: bool,
    pub signup_balance: Money,
    pub user_key_groups: Vec<String>,
    pub session_ttl_hours: i64,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            registration_enabled: true,
            signup_balance: Money::ZERO,
            user_key_groups: Vec::new(),
            session_ttl_hours: 24 * 7,
        }
    }
}

/// Names under this prefix are the relay's own (admin key digest, replaced price table) and never
/// shown or set through the settings routes.
pub(crate) const INTERNAL: &str = "internal.";
pub(crate) const PRICING_SETTING: &str = "internal.pricing_json";

impl Settings {
    pub async fn load(store: &dyn AdminStore) -> Result<Settings, ApiError> {
        let mut s = Settings::default();
        for (name, value) in store.settings().await? {
            let Ok(v) = serde_json::from_str::<Value>(&value) else {
                continue;
            };
            match name.as_str() {
                "registration_enabled" => {
                    s.registration_enabled = v.as_bool().unwrap_or(s.registration_enabled)
                }
                "signup_balance_usd" => {
                    s.signup_balance = v
                        .as_str()
                        .and_then(|x| Money::parse_usd(x).ok())
                        .unwrap_or(s.signup_balance)
                }
                "user_key_groups" => {
                    s.user_key_groups = v
                        .as_array()
                        .map(|a| {
                            a.iter()
                                .filter_map(|x| x.as_str().map(str::to_owned))
                                .collect()
                        })
                        .unwrap_or_default()
                }
                "session_ttl_hours" => {
                    s.session_ttl_hours =
                        v.as_i64().filter(|h| *h > 0).unwrap_or(s.session_ttl_hours)
                }
                _ => {}
            }
        }
        Ok(s)
    }

    fn view(&self) -> Value {
        json!({
            "registration_enabled": self.registration_enabled,
            "signup_balance_usd": self.signup_balance.to_string(),
            "user_key_groups": self.user_key_groups,
            "session_ttl_hours": self.session_ttl_hours,
        })
    }
}

pub(crate) async fn balance_of(ctx: &Ctx, user: UserId) -> Result<Balance, ApiError> {
    match ctx.ledger().balance(user).await {
        Ok(b) => Ok(b),
        Err(LedgerError::UnknownUser(_)) => Ok(Balance::default()),
        Err(e) => Err(ApiError::unavailable(e.to_string())),
    }
}

fn parse_allowlist(v: &Values) -> Result<Option<Vec<IpNet>>, ApiError> {
    let Some(list) = v.str_list("ip_allowlist") else {
        return Ok(None);
    };
    list.iter()
        .enumerate()
        .map(|(i, s)| {
            s.parse::<IpNet>()
                .map_err(|m| ApiError::field(&format!("ip_allowlist[{i}]"), m))
        })
        .collect::<Result<Vec<_>, _>>()
        .map(Some)
}

fn future_time(v: &Values, name: &str) -> Result<Option<i64>, ApiError> {
    match v.time(name)? {
        Some(t) if t <= now_ms() => Err(ApiError::field(name, "must be in the future")),
        other => Ok(other),
    }
}

/// Checks a key request and builds the key to store (with a fresh secret).
pub(crate) async fn build_key(
    ctx: &Ctx,
    user: UserId,
    req: &Req,
) -> Result<NewKeyRecord, ApiError> {
    let b = &req.body;
    let group_name = b.req_str("group")?;
    let group = ctx
        .store()
        .group_by_name(&group_name)
        .await?
        .ok_or_else(|| ApiError::field("group", "no such group"))?;
    let rules = KeyRules {
        quota: b.usd("quota_usd")?,
        expires_at_ms: future_time(b, "expires_at")?,
        ip_allowlist: parse_allowlist(b)?.unwrap_or_default(),
    };
    let limits = KeyLimits {
        concurrency: b.u32("concurrency"),
        rpm: b.u32("rpm"),
    };
    let name = b
        .str("name")
        .unwrap_or_else(|| format!("key-{}", &hex::encode(rand::random::<[u8; 3]>())));
    Ok(NewKeyRecord {
        user_id: user,
        group_id: group.id,
        name,
        key: crate::config::generate_key(),
        limits,
        rules,
    })
}

/// Stores a new key and answers with its plaintext, this once.
pub(crate) async fn store_key(ctx: &Ctx, new: NewKeyRecord) -> Result<Reply, ApiError> {
    let plaintext: Secret = new.key.clone();
    let key = ctx.store().create_key(new).await?;
    let groups = ctx.store().groups().await?;
    let mut v = views::key(&key, groups.iter().find(|g| g.id == key.group_id));
    v["key"] = Value::String(plaintext.expose().to_owned());
    Ok(Reply::ok(v))
}

pub(crate) fn usage_query(q: &Values) -> Result<UsageQuery, ApiError> {
    let from = q.time("from")?;
    let to = q.time("to")?;
    if let (Some(f), Some(t)) = (from, to)
        && t <= f
    {
        return Err(ApiError::field("to", "must be after `from`"));
    }
    Ok(UsageQuery {
        user_id: q.i64("user_id").map(UserId),
        key_id: q.i64("key_id").map(KeyId),
        account_id: q.i64("account_id").map(AccountId),
        model: q.str("model"),
        from_ms: from,
        to_ms: to,
        limit: q.u32("limit").unwrap_or(100),
        offset: q.u32("offset").unwrap_or(0),
    })
}

pub(crate) async fn usage_page(ctx: &Ctx, q: UsageQuery, admin: bool) -> Result<Reply, ApiError> {
    let limit = q.limit.clamp(1, 1000);
    let rows = ctx
        .api
        .parts()
        .usage_log
        .query(&UsageQuery {
            limit: limit + 1,
            ..q.clone()
        })
        .await?;
    let has_more = rows.len() > limit as usize;
    let items: Vec<Value> = rows
        .iter()
        .take(limit as usize)
        .map(|r| views::usage(r, admin))
        .collect();
    Ok(Reply::ok(
        json!({"items": items, "limit": limit, "offset": q.offset, "has_more": has_more}),
    ))
}

/// Rows the API aggregates itself when the store cannot (memory usage logs are bounded anyway).
const MAX_AGGREGATED_ROWS: u32 = 2_000_000;

pub(crate) async fn summarize(ctx: &Ctx, q: UsageQuery, req: &Req) -> Result<Reply, ApiError> {
    let by_name = req.query.str("by").unwrap_or_default();
    let by =
        UsageGroupBy::parse(&by_name).ok_or_else(|| ApiError::field("by", "unknown grouping"))?;
    let q = UsageQuery {
        limit: 0,
        offset: 0,
        ..q
    };
    let mut buckets = match ctx.store().usage_summary(&q, by).await? {
        Some(b) => b,
        None => {
            let mut map: BTreeMap<String, UsageBucket> = BTreeMap::new();
            let mut offset = 0u32;
            loop {
                let page = ctx
                    .api
                    .parts()
                    .usage_log
                    .query(&UsageQuery {
                        limit: 10_000,
                        offset,
                        ..q.clone()
                    })
                    .await?;
                for r in &page {
                    let key = match by {
                        UsageGroupBy::Day => format_time(r.created_at)[..10].to_owned(),
                        UsageGroupBy::Model => r.model.clone(),
                        UsageGroupBy::User => r.user_id.to_string(),
                        UsageGroupBy::Key => r.key_id.to_string(),
                        UsageGroupBy::Account => r
                            .account_id
                            .map_or_else(|| "none".to_owned(), |a| a.to_string()),
                    };
                    let b = map.entry(key.clone()).or_insert_with(|| UsageBucket {
                        key,
                        ..Default::default()
                    });
                    b.requests += 1;
                    b.input_tokens += r.usage.input_tokens;
                    b.output_tokens += r.usage.output_tokens;
                    b.cache_creation_tokens += r.usage.cache_creation_tokens();
                    b.cache_read_tokens += r.usage.cache_read_tokens;
                    b.cost = b.cost.saturating_add(r.cost);
                }
                offset = offset.saturating_add(page.len() as u32);
                if page.len() < 10_000 || offset >= MAX_AGGREGATED_ROWS {
                    break;
                }
            }
            map.into_values().collect()
        }
    };
    buckets.sort_by(|a, b| a.key.cmp(&b.key));
    let total_requests: u64 = buckets.iter().map(|b| b.requests).sum();
    let total_cost = buckets
        .iter()
        .fold(Money::ZERO, |acc, b| acc.saturating_add(b.cost));
    Ok(Reply::ok(json!({
        "by": by_name,
        "items": buckets.iter().map(views::bucket).collect::<Vec<_>>(),
        "total": {"requests": total_requests, "cost_usd": total_cost.to_string()},
    })))
}

// ---------------------------------------------------------------- accounts

async fn account_status(ctx: &Ctx, id: AccountId) -> Result<AccountStatus, ApiError> {
    if let Some(pool) = &ctx.api.parts().pool {
        return Ok(pool.status(id));
    }
    if let Some(accounts) = &ctx.api.parts().accounts {
        return Ok(accounts.status(id));
    }
    Ok(ctx
        .store()
        .account_statuses()
        .await?
        .into_iter()
        .find(|(a, _)| *a == id)
        .map(|(_, s)| s)
        .unwrap_or(AccountStatus::Ready))
}

async fn find_account(ctx: &Ctx, id: i64) -> Result<Account, ApiError> {
    ctx.store()
        .accounts()
        .await?
        .into_iter()
        .find(|a| a.id.0 == id)
        .ok_or_else(|| ApiError::not_found(format!("account {id}")))
}

async fn account_reply(ctx: &Ctx, id: AccountId) -> Result<Reply, ApiError> {
    let account = find_account(ctx, id.0).await?;
    let groups = ctx.store().groups().await?;
    let st = account_status(ctx, id).await?;
    Ok(Reply::ok(views::account(&account, &groups, &st)))
}

async fn reload_pool(ctx: &Ctx) {
    if let Some(pool) = &ctx.api.parts().pool
        && let Err(e) = pool.reload().await
    {
        tracing::error!(error = %e, "could not reload the account pool after an admin change");
    }
}

fn check_base_url(url: &str) -> Result<String, ApiError> {
    let url = url.trim().trim_end_matches('/');
    let rest = url
        .strip_prefix("https://")
        .or_else(|| url.strip_prefix("http://"));
    match rest {
        Some(host) if !host.is_empty() && !host.contains(char::is_whitespace) => Ok(url.to_owned()),
        _ => Err(ApiError::field(
            "base_url",
            "must be an http:// or https:// URL",
        )),
    }
}

fn parse_options(v: &Values) -> Result<Option<AccountOptions>, ApiError> {
    v.get("options")
        .map(|o| {
            serde_json::from_value::<AccountOptions>(o.clone())
                .map_err(|e| ApiError::field("options", e.to_string()))
        })
        .transpose()
}

async fn check_groups(ctx: &Ctx, names: &[String]) -> Result<(), ApiError> {
    let groups = ctx.store().groups().await?;
    for (i, n) in names.iter().enumerate() {
        if !groups.iter().any(|g| &g.name == n) {
            return Err(ApiError::field(
                &format!("groups[{i}]"),
                format!("no group named `{n}`"),
            ));
        }
    }
    Ok(())
}

fn credentials_for(kind: AccountKind, b: &Values) -> Result<Option<Credentials>, ApiError> {
    Ok(match kind {
        AccountKind::Apikey => {
            if b.has("access_token") {
                return Err(ApiError::field(
                    "access_token",
                    "an apikey account takes `api_key`",
                ));
            }
            b.raw_str("api_key")
                .map(|k| Credentials::ApiKey(Secret::new(k.trim())))
        }
        _ => {
            if b.has("api_key") {
                return Err(ApiError::field(
                    "api_key",
                    "an oauth or setup_token account takes `access_token`",
                ));
            }
            b.raw_str("access_token")
                .map(|t| Credentials::Bearer(Secret::new(t.trim())))
        }
    })
}

pub(crate) async fn list_accounts(ctx: Ctx, _req: Req) -> Result<Reply, ApiError> {
    let groups = ctx.store().groups().await?;
    let mut items = Vec::new();
    for a in ctx.store().accounts().await? {
        let st = account_status(&ctx, a.id).await?;
        items.push(views::account(&a, &groups, &st));
    }
    Ok(Reply::ok(json!({ "items": items })))
}

pub(crate) async fn create_account(ctx: Ctx, req: Req) -> Result<Reply, ApiError> {
    let b = &req.body;
    let name = b.req_str("name")?;
    let platform: Platform = b.str("platform").map_or(Ok(Platform::Anthropic), |p| {
        p.parse()
            .map_err(|m: String| ApiError::field("platform", m))
    })?;
    let kind: AccountKind = match b.str("type").as_deref() {
        None | Some("apikey") => AccountKind::Apikey,
        Some("oauth") => AccountKind::Oauth,
        Some(_) => AccountKind::SetupToken,
    };
    let credentials = credentials_for(kind, b)?.ok_or_else(|| match kind {
        AccountKind::Apikey => ApiError::field("api_key", "is required for an apikey account"),
        _ => ApiError::field("access_token", "is required for this account type"),
    })?;
    let base_url = check_base_url(
        &b.str("base_url")
            .unwrap_or_else(|| platform.default_base_url().to_owned()),
    )?;
    let groups = b.str_list("groups").unwrap_or_default();
    check_groups(&ctx, &groups).await?;
    let options = parse_options(b)?.unwrap_or_default();
    if ctx.store().accounts().await?.iter().any(|a| a.name == name) {
        return Err(ApiError::conflict(format!(
            "an account named `{name}` exists"
        )));
    }
    let account = ctx
        .store()
        .upsert_account(NewAccount {
            name,
            platform,
            kind,
            base_url,
            priority: b.i64("priority").unwrap_or(50) as i32,
            concurrency: b.u32("concurrency").unwrap_or(4),
            groups,
            credentials,
            options,
        })
        .await?;
    reload_pool(&ctx).await;
    account_reply(&ctx, account.id).await
}

pub(crate) async fn get_account(ctx: Ctx, req: Req) -> Result<Reply, ApiError> {
    account_reply(&ctx, AccountId(req.id("id")?)).await
}

pub(crate) async fn update_account(ctx: Ctx, req: Req) -> Result<Reply, ApiError> {
    let b = &req.body;
    let account = find_account(&ctx, req.id("id")?).await?;
    let groups = b.str_list("groups");
    if let Some(g) = &groups {
        check_groups(&ctx, g).await?;
    }
    let patch = AccountPatch {
        base_url: b.str("base_url").map(|u| check_base_url(&u)).transpose()?,
        priority: b.i64("priority").map(|p| p as i32),
        concurrency: b.u32("concurrency"),
        groups,
        credentials: credentials_for(account.kind, b)?,
        options: parse_options(b)?,
    };
    ctx.store().update_account(account.id, patch).await?;
    if let Some(enabled) = b.bool("enabled") {
        ctx.store().set_account_enabled(account.id, enabled).await?;
    }
    reload_pool(&ctx).await;
    account_reply(&ctx, account.id).await
}

pub(crate) async fn delete_account(ctx: Ctx, req: Req) -> Result<Reply, ApiError> {
    let account = find_account(&ctx, req.id("id")?).await?;
    ctx.store().delete_account(account.id).await?;
    reload_pool(&ctx).await;
    Ok(Reply::ok(json!({"ok": true})))
}

async fn set_account_enabled(ctx: Ctx, req: Req, enabled: bool) -> Result<Reply, ApiError> {
    let account = find_account(&ctx, req.id("id")?).await?;
    ctx.store().set_account_enabled(account.id, enabled).await?;
    reload_pool(&ctx).await;
    account_reply(&ctx, account.id).await
}

pub(crate) async fn enable_account(ctx: Ctx, req: Req) -> Result<Reply, ApiError> {
    set_account_enabled(ctx, req, true).await
}

pub(crate) async fn disable_account(ctx: Ctx, req: Req) -> Result<Reply, ApiError> {
    set_account_enabled(ctx, req, false).await
}

pub(crate) async fn clear_cooldown(ctx: Ctx, req: Req) -> Result<Reply, ApiError> {
    let account = find_account(&ctx, req.id("id")?).await?;
    ctx.store()
        .set_account_status(account.id, &AccountStatus::Ready)
        .await?;
    if let Some(pool) = &ctx.api.parts().pool {
        pool.clear_status(account.id).await;
    }
    account_reply(&ctx, account.id).await
}

fn default_test_model(p: Platform) -> &'static str {
    match p {
        Platform::Anthropic => "claude-haiku-4-5",
        Platform::Openai => "gpt-4o-mini",
        Platform::Gemini => "gemini-2.0-flash",
    }
}

pub(crate) async fn test_account(ctx: Ctx, req: Req) -> Result<Reply, ApiError> {
    let account = find_account(&ctx, req.id("id")?).await?;
    let creds = ctx.store().account_credentials(account.id).await?;
    let model = req
        .body
        .str("model")
        .unwrap_or_else(|| default_test_model(account.platform).to_owned());
    let base = account.base_url.trim_end_matches('/');
    let client = ctx.api.http();
    let prompt = json!([{"role": "user", "content": "ping"}]);
    let mut rb = match account.platform {
        Platform::Anthropic => client
            .post(format!("{base}/v1/messages"))
            .header("anthropic-version", "2023-06-01")
            .body(json!({"model": model, "max_tokens": 1, "messages": prompt}).to_string()),
        Platform::Openai => client
            .post(format!("{base}/v1/chat/completions"))
            .body(json!({"model": model, "max_tokens": 1, "messages": prompt}).to_string()),
        Platform::Gemini => client
            .post(format!("{base}/v1beta/models/{model}:generateContent"))
            .body(json!({"contents": [{"role": "user", "parts": [{"text": "ping"}]}], "generationConfig": {"maxOutputTokens": 1}}).to_string()),
    };
    rb = rb.header("content-type", "application/json");
    let secret = match &creds {
        Credentials::ApiKey(k) => {
            rb = match account.platform {
                Platform::Anthropic => rb.header("x-api-key", k.expose()),
                Platform::Openai => rb.bearer_auth(k.expose()),
                Platform::Gemini => rb.header("x-goog-api-key", k.expose()),
            };
            k.expose().to_owned()
        }
        other => match other.bearer() {
            Some(t) => {
                rb = rb.bearer_auth(t.expose());
                t.expose().to_owned()
            }
            None => {
                return Err(ApiError::bad_request(
                    "invalid_request",
                    "the account has no usable credentials",
                ));
            }
        },
    };
    let started = Instant::now();
    let result = tokio::time::timeout(ctx.api.config().account_test_timeout, async {
        let res = rb.send().await?;
        let status = res.status().as_u16();
        let text = res.text().await.unwrap_or_default();
        Ok::<_, reqwest::Error>((status, text))
    })
    .await;
    let latency_ms = started.elapsed().as_millis() as u64;
    let redact = |s: String| {
        if secret.len() >= 4 {
            s.replace(&secret, "[redacted]")
        } else {
            s
        }
    };
    let (ok, status, message) = match result {
        Ok(Ok((status, text))) => {
            let message = serde_json::from_str::<Value>(&text)
                .ok()
                .and_then(|v| v["error"]["message"].as_str().map(str::to_owned))
                .unwrap_or_else(|| {
                    if (200..300).contains(&status) {
                        "ok".into()
                    } else {
                        text.chars().take(300).collect()
                    }
                });
            ((200..300).contains(&status), Some(status), redact(message))
        }
        Ok(Err(e)) => (
            false,
            None,
            redact(format!("request failed: {}", e.without_url())),
        ),
        Err(_) => (false, None, "the vendor did not answer in time".to_owned()),
    };
    Ok(Reply::ok(
        json!({"ok": ok, "status": status, "latency_ms": latency_ms, "message": message, "model": model}),
    ))
}

// ---------------------------------------------------------------- groups and plans

/// Parses `subscription_windows` / `windows` into plan windows.
fn parse_windows(b: &Values, field: &str) -> Result<Option<Vec<WindowSpec>>, ApiError> {
    let Some(items) = b.get(field).and_then(Value::as_array) else {
        return Ok(None);
    };
    let mut out = Vec::new();
    for (i, w) in items.iter().enumerate() {
        let at = |k: &str| format!("{field}[{i}].{k}");
        let obj = w
            .as_object()
            .ok_or_else(|| ApiError::field(&format!("{field}[{i}]"), "expected an object"))?;
        for k in obj.keys() {
            if !matches!(k.as_str(), "kind" | "hours" | "minutes" | "limit_usd") {
                return Err(ApiError::field(&at(k), "unknown field"));
            }
        }
        let limit = obj
            .get("limit_usd")
            .ok_or_else(|| ApiError::field(&at("limit_usd"), "is required"))?;
        super::schema::check(super::schema::USD, limit)
            .map_err(|m| ApiError::field(&at("limit_usd"), m))?;
        let limit = Values(obj.clone()).usd("limit_usd")?.unwrap_or(Money::ZERO);
        let length = match obj.get("kind").and_then(Value::as_str) {
            Some("day") => WindowLength::Day,
            Some("week") => WindowLength::Week,
            Some("month") => WindowLength::Month,
            Some("rolling") => {
                let minutes = match (
                    obj.get("hours").and_then(Value::as_i64),
                    obj.get("minutes").and_then(Value::as_i64),
                ) {
                    (Some(h), None) => h.checked_mul(60),
                    (None, Some(m)) => Some(m),
                    _ => None,
                };
                match minutes {
                    Some(m) if (1..=366 * 24 * 60).contains(&m) => {
                        WindowLength::Rolling { ms: m * MINUTE_MS }
                    }
                    _ => {
                        return Err(ApiError::field(
                            &at("hours"),
                            "a rolling window needs `hours` (or `minutes`), at least one minute",
                        ));
                    }
                }
            }
            _ => {
                return Err(ApiError::field(
                    &at("kind"),
                    "expected one of: rolling, day, week, month",
                ));
            }
        };
        out.push(WindowSpec { length, limit });
    }
    if out.is_empty() {
        return Err(ApiError::field(field, "at least one window"));
    }
    Ok(Some(out))
}

async fn group_reply(ctx: &Ctx, id: GroupId) -> Result<Reply, ApiError> {
    let g = ctx
        .store()
        .group_record(id)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("group {id}")))?;
    let plans = ctx.store().plan_records().await?;
    let plan = plans
        .iter()
        .find(|p| p.name == g.group.name && p.group_id == id);
    Ok(Reply::ok(views::group(&g, plan)))
}

fn billing_of(b: &Values) -> Result<Option<BillingMode>, ApiError> {
    b.str("billing_mode")
        .map(|m| {
            m.parse()
                .map_err(|e: String| ApiError::field("billing_mode", e))
        })
        .transpose()
}

pub(crate) async fn list_groups(ctx: Ctx, _req: Req) -> Result<Reply, ApiError> {
    let plans = ctx.store().plan_records().await?;
    let items: Vec<Value> = ctx
        .store()
        .group_records()
        .await?
        .iter()
        .map(|g| {
            views::group(
                g,
                plans
                    .iter()
                    .find(|p| p.name == g.group.name && p.group_id == g.group.id),
            )
        })
        .collect();
    Ok(Reply::ok(json!({ "items": items })))
}

pub(crate) async fn create_group(ctx: Ctx, req: Req) -> Result<Reply, ApiError> {
    let b = &req.body;
    let name = b.req_str("name")?;
    let platform: Platform = b.str("platform").map_or(Ok(Platform::Anthropic), |p| {
        p.parse()
            .map_err(|m: String| ApiError::field("platform", m))
    })?;
    let rate_multiplier = b.multiplier("rate_multiplier")?.unwrap_or_default();
    let billing = billing_of(b)?;
    let windows = parse_windows(b, "subscription_windows")?;
    if b.has("subscription_days") && windows.is_none() {
        return Err(ApiError::field(
            "subscription_days",
            "needs `subscription_windows`",
        ));
    }
    if ctx.store().group_by_name(&name).await?.is_some() {
        return Err(ApiError::conflict(format!("a group named `{name}` exists")));
    }
    if ctx
        .store()
        .plan_records()
        .await?
        .iter()
        .any(|p| p.name == name)
        && windows.is_some()
    {
        return Err(ApiError::conflict(format!("a plan named `{name}` exists")));
    }
    let group = ctx
        .store()
        .upsert_group(NewGroup {
            name: name.clone(),
            platform,
            rate_multiplier,
        })
        .await?;
    if billing.is_some() {
        ctx.store()
            .update_group(
                group.id,
                GroupPatch {
                    billing_mode: billing,
                    ..Default::default()
                },
            )
            .await?;
    }
    if let Some(windows) = windows {
        let days = b.i64("subscription_days").unwrap_or(30);
        ctx.store()
            .upsert_plan(NewPlanRecord {
                name,
                group_id: group.id,
                duration_days: days,
                windows,
                price_minor: None,
                currency: None,
            })
            .await?;
    }
    group_reply(&ctx, group.id).await
}

pub(crate) async fn get_group(ctx: Ctx, req: Req) -> Result<Reply, ApiError> {
    group_reply(&ctx, GroupId(req.id("id")?)).await
}

pub(crate) async fn update_group(ctx: Ctx, req: Req) -> Result<Reply, ApiError> {
    let b = &req.body;
    let id = GroupId(req.id("id")?);
    let g = ctx
        .store()
        .group_record(id)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("group {id}")))?;
    let platform = b
        .str("platform")
        .map(|p| {
            p.parse::<Platform>()
                .map_err(|m| ApiError::field("platform", m))
        })
        .transpose()?;
    let patch = GroupPatch {
        platform,
        rate_multiplier: b.multiplier("rate_multiplier")?,
        billing_mode: billing_of(b)?,
    };
    let windows = parse_windows(b, "subscription_windows")?;
    let plans = ctx.store().plan_records().await?;
    let existing = plans.iter().find(|p| p.name == g.group.name);
    if let Some(p) = existing
        && p.group_id != id
    {
        return Err(ApiError::conflict(format!(
            "a plan named `{}` belongs to another group",
            g.group.name
        )));
    }
    if b.has("subscription_days") && windows.is_none() && existing.is_none() {
        return Err(ApiError::field(
            "subscription_days",
            "needs `subscription_windows`",
        ));
    }
    ctx.store().update_group(id, patch).await?;
    if windows.is_some() || b.has("subscription_days") {
        let windows = windows
            .or_else(|| existing.map(|p| p.windows.clone()))
            .unwrap_or_default();
        let days = b
            .i64("subscription_days")
            .or(existing.map(|p| p.duration_days))
            .unwrap_or(30);
        ctx.store()
            .upsert_plan(NewPlanRecord {
                name: g.group.name.clone(),
                group_id: id,
                duration_days: days,
                windows,
                price_minor: existing.and_then(|p| p.price_minor),
                currency: existing.and_then(|p| p.currency.clone()),
            })
            .await?;
    }
    ctx.api.keys_changed().await;
    group_reply(&ctx, id).await
}

pub(crate) async fn delete_group(ctx: Ctx, req: Req) -> Result<Reply, ApiError> {
    let id = GroupId(req.id("id")?);
    ctx.store()
        .group_record(id)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("group {id}")))?;
    ctx.store().delete_group(id).await?;
    ctx.api.keys_changed().await;
    reload_pool(&ctx).await;
    Ok(Reply::ok(json!({"ok": true})))
}

async fn user_rate(ctx: Ctx, req: Req, set: bool) -> Result<Reply, ApiError> {
    let id = GroupId(req.id("id")?);
    let user = UserId(req.id("user_id")?);
    ctx.store()
        .group_record(id)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("group {id}")))?;
    ctx.store()
        .user_record(user)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("user {user}")))?;
    let rate = if set {
        Some(
            req.body
                .multiplier("rate_multiplier")?
                .ok_or_else(|| ApiError::field("rate_multiplier", "is required"))?,
        )
    } else {
        None
    };
    ctx.store().set_user_rate(id, user, rate).await?;
    ctx.api.keys_changed().await;
    group_reply(&ctx, id).await
}

pub(crate) async fn set_user_rate(ctx: Ctx, req: Req) -> Result<Reply, ApiError> {
    user_rate(ctx, req, true).await
}

pub(crate) async fn delete_user_rate(ctx: Ctx, req: Req) -> Result<Reply, ApiError> {
    user_rate(ctx, req, false).await
}

pub(crate) async fn list_plans(ctx: Ctx, _req: Req) -> Result<Reply, ApiError> {
    let items: Vec<Value> = ctx
        .store()
        .plan_records()
        .await?
        .iter()
        .map(views::plan)
        .collect();
    Ok(Reply::ok(json!({ "items": items })))
}

pub(crate) async fn create_plan(ctx: Ctx, req: Req) -> Result<Reply, ApiError> {
    let b = &req.body;
    let name = b.req_str("name")?;
    let group = ctx
        .store()
        .group_by_name(&b.req_str("group")?)
        .await?
        .ok_or_else(|| ApiError::field("group", "no such group"))?;
    let windows =
        parse_windows(b, "windows")?.ok_or_else(|| ApiError::field("windows", "is required"))?;
    if ctx
        .store()
        .plan_records()
        .await?
        .iter()
        .any(|p| p.name == name)
    {
        return Err(ApiError::conflict(format!("a plan named `{name}` exists")));
    }
    let price_minor = b.i64("price_minor");
    let currency = b.str("currency").map(|c| c.trim().to_ascii_uppercase());
    match (price_minor, &currency) {
        (Some(_), None) => {
            return Err(ApiError::field(
                "currency",
                "is required with `price_minor`",
            ));
        }
        (None, Some(_)) => {
            return Err(ApiError::field(
                "price_minor",
                "is required with `currency`",
            ));
        }
        (_, Some(c)) if c.len() != 3 || !c.bytes().all(|x| x.is_ascii_alphabetic()) => {
            return Err(ApiError::field("currency", "a three-letter ISO 4217 code"));
        }
        _ => {}
    }
    let plan = ctx
        .store()
        .upsert_plan(NewPlanRecord {
            name,
            group_id: group.id,
            duration_days: b.i64("duration_days").unwrap_or(30),
            windows,
            price_minor,
            currency,
        })
        .await?;
    Ok(Reply::ok(views::plan(&plan)))
}

// ---------------------------------------------------------------- users

async fn user_reply(ctx: &Ctx, id: UserId) -> Result<Reply, ApiError> {
    let u = ctx
        .store()
        .user_record(id)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("user {id}")))?;
    let balance = balance_of(ctx, id).await?;
    Ok(Reply::ok(views::user(&u, Some(balance))))
}

pub(crate) async fn list_users(ctx: Ctx, req: Req) -> Result<Reply, ApiError> {
    let limit = req.query.u32("limit").unwrap_or(100).clamp(1, 1000);
    let offset = req.query.u32("offset").unwrap_or(0);
    let mut users = ctx.store().user_records(offset, limit + 1).await?;
    let has_more = users.len() > limit as usize;
    users.truncate(limit as usize);
    let mut items = Vec::with_capacity(users.len());
    for u in &users {
        items.push(views::user(u, Some(balance_of(&ctx, u.id).await?)));
    }
    Ok(Reply::ok(
        json!({"items": items, "limit": limit, "offset": offset, "has_more": has_more}),
    ))
}

pub(crate) async fn create_user(ctx: Ctx, req: Req) -> Result<Reply, ApiError> {
    let b = &req.body;
    let email = b
        .email("email")?
        .ok_or_else(|| ApiError::field("email", "is required"))?;
    let balance = b.usd("balance_usd")?.unwrap_or(Money::ZERO);
    if ctx.store().user_by_email(&email).await?.is_some() {
        return Err(ApiError::field("email", "a user with this email exists"));
    }
    let password_hash = match b.raw_str("password") {
        Some(p) => Some(
            auth::hash_password(&p, ctx.api.config().password)
                .await
                .map_err(ApiError::internal)?,
        ),
        None => None,
    };
    let user = ctx
        .store()
        .create_user(NewUser {
            email,
            password_hash,
            is_admin: b.bool("is_admin").unwrap_or(false),
            limits: Limits {
                concurrency: b.u32("concurrency"),
                rpm: b.u32("rpm"),
            },
        })
        .await
        .map_err(|e| match e {
            StoreError::Conflict(_) => ApiError::field("email", "a user with this email exists"),
            other => other.into(),
        })?;
    if balance.is_positive() {
        ctx.ledger()
            .credit(Credit {
                user_id: user.id,
                amount: balance,
                idempotency_key: format!("admin-create:{}", user.id),
                kind: EntryKind::Credit,
                memo: format!("opening balance (by {})", ctx.caller.label()),
            })
            .await
            .map_err(|e| ApiError::unavailable(e.to_string()))?;
    }
    user_reply(&ctx, user.id).await
}

pub(crate) async fn get_user(ctx: Ctx, req: Req) -> Result<Reply, ApiError> {
    user_reply(&ctx, UserId(req.id("id")?)).await
}

/// The limits after a patch: a field given sets it, `null` removes it, absent keeps it; `None`
/// when the body names neither.
fn limits_patch(b: &Values, current: &Limits) -> Option<Limits> {
    let field = |name: &str, now: Option<u32>| {
        if b.is_null(name) {
            None
        } else {
            b.u32(name).or(now)
        }
    };
    let named = |name: &str| b.has(name) || b.is_null(name);
    (named("concurrency") || named("rpm")).then(|| Limits {
        concurrency: field("concurrency", current.concurrency),
        rpm: field("rpm", current.rpm),
    })
}

async fn patch_user(ctx: &Ctx, id: UserId, b: &Values) -> Result<Reply, ApiError> {
    let current = ctx
        .store()
        .user_record(id)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("user {id}")))?;
    let password_hash = match b.raw_str("password") {
        Some(p) => Some(
            auth::hash_password(&p, ctx.api.config().password)
                .await
                .map_err(ApiError::internal)?,
        ),
        None => None,
    };
    let ends_sessions = password_hash.is_some() || b.bool("enabled") == Some(false);
    let limits = limits_patch(b, &current.limits);
    ctx.store()
        .update_user(
            id,
            UserPatch {
                enabled: b.bool("enabled"),
                is_admin: b.bool("is_admin"),
                password_hash,
                limits,
            },
        )
        .await?;
    if ends_sessions {
        ctx.store().delete_sessions_of(id).await?;
    }
    ctx.api.keys_changed().await;
    user_reply(ctx, id).await
}

pub(crate) async fn update_user(ctx: Ctx, req: Req) -> Result<Reply, ApiError> {
    patch_user(&ctx, UserId(req.id("id")?), &req.body).await
}

pub(crate) async fn disable_user(ctx: Ctx, req: Req) -> Result<Reply, ApiError> {
    let mut m = serde_json::Map::new();
    m.insert("enabled".into(), Value::Bool(false));
    patch_user(&ctx, UserId(req.id("id")?), &Values(m)).await
}

pub(crate) async fn enable_user(ctx: Ctx, req: Req) -> Result<Reply, ApiError> {
    let mut m = serde_json::Map::new();
    m.insert("enabled".into(), Value::Bool(true));
    patch_user(&ctx, UserId(req.id("id")?), &Values(m)).await
}

pub(crate) async fn adjust_balance(ctx: Ctx, req: Req) -> Result<Reply, ApiError> {
    let b = &req.body;
    let id = UserId(req.id("id")?);
    let amount = b
        .usd("amount_usd")?
        .ok_or_else(|| ApiError::field("amount_usd", "is required"))?;
    if amount == Money::ZERO {
        return Err(ApiError::field("amount_usd", "must not be zero"));
    }
    let reason = b.req_str("reason")?;
    ctx.store()
        .user_record(id)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("user {id}")))?;
    let key = match b.str("idempotency_key") {
        Some(k) => format!("admin:{id}:{k}"),
        None => format!("admin:{}", uuid::Uuid::new_v4().simple()),
    };
    let out = ctx
        .ledger()
        .credit(Credit {
            user_id: id,
            amount,
            idempotency_key: key,
            kind: EntryKind::Adjustment,
            memo: format!("{reason} (by {})", ctx.caller.label()),
        })
        .await
        .map_err(|e| match e {
            LedgerError::WouldOverdraw { .. } | LedgerError::UnknownUser(_) => {
                ApiError::field("amount_usd", "would take the available balance below zero")
            }
            other => ApiError::unavailable(other.to_string()),
        })?;
    let balance = balance_of(&ctx, id).await?;
    Ok(Reply::ok(json!({
        "user_id": id,
        "balance_usd": out.balance.to_string(),
        "available_usd": balance.available().to_string(),
        "replayed": out.replayed,
    })))
}

// ---------------------------------------------------------------- keys

async fn key_reply(ctx: &Ctx, key: &KeyRecord) -> Result<Reply, ApiError> {
    let groups = ctx.store().groups().await?;
    Ok(Reply::ok(views::key(
        key,
        groups.iter().find(|g| g.id == key.group_id),
    )))
}

async fn find_key(ctx: &Ctx, id: i64) -> Result<KeyRecord, ApiError> {
    ctx.store()
        .key_record(KeyId(id))
        .await?
        .ok_or_else(|| ApiError::not_found(format!("key {id}")))
}

pub(crate) async fn list_keys(ctx: Ctx, req: Req) -> Result<Reply, ApiError> {
    let groups = ctx.store().groups().await?;
    let items: Vec<Value> = ctx
        .store()
        .key_records(req.query.i64("user_id").map(UserId))
        .await?
        .iter()
        .map(|k| views::key(k, groups.iter().find(|g| g.id == k.group_id)))
        .collect();
    Ok(Reply::ok(json!({ "items": items })))
}

pub(crate) async fn create_key(ctx: Ctx, req: Req) -> Result<Reply, ApiError> {
    let user = UserId(
        req.body
            .i64("user_id")
            .ok_or_else(|| ApiError::field("user_id", "is required"))?,
    );
    if ctx.store().user_record(user).await?.is_none() {
        return Err(ApiError::field("user_id", "no such user"));
    }
    let new = build_key(&ctx, user, &req).await?;
    store_key(&ctx, new).await
}

pub(crate) async fn get_key(ctx: Ctx, req: Req) -> Result<Reply, ApiError> {
    let key = find_key(&ctx, req.id("id")?).await?;
    key_reply(&ctx, &key).await
}

pub(crate) async fn update_key(ctx: Ctx, req: Req) -> Result<Reply, ApiError> {
    let b = &req.body;
    let key = find_key(&ctx, req.id("id")?).await?;
    let quota = if b.is_null("quota_usd") {
        Some(None)
    } else {
        b.usd("quota_usd")?.map(Some)
    };
    let expires_at_ms = if b.is_null("expires_at") {
        Some(None)
    } else {
        future_time(b, "expires_at")?.map(Some)
    };
    let limits = limits_patch(b, &key.limits);
    let patch = KeyPatch {
        name: b.str("name"),
        enabled: b.bool("enabled"),
        limits,
        quota,
        expires_at_ms,
        ip_allowlist: parse_allowlist(b)?,
    };
    let key = ctx.store().update_key(key.id, patch).await?;
    ctx.api.keys_changed().await;
    key_reply(&ctx, &key).await
}

async fn set_key_enabled(ctx: Ctx, req: Req, enabled: bool) -> Result<Reply, ApiError> {
    let key = find_key(&ctx, req.id("id")?).await?;
    ctx.store().set_key_enabled(key.id, enabled).await?;
    ctx.api.keys_changed().await;
    let key = find_key(&ctx, key.id.0).await?;
    key_reply(&ctx, &key).await
}

pub(crate) async fn disable_key(ctx: Ctx, req: Req) -> Result<Reply, ApiError> {
    set_key_enabled(ctx, req, false).await
}

pub(crate) async fn enable_key(ctx: Ctx, req: Req) -> Result<Reply, ApiError> {
    set_key_enabled(ctx, req, true).await
}

// ---------------------------------------------------------------- subscriptions

pub(crate) async fn list_subscriptions(ctx: Ctx, req: Req) -> Result<Reply, ApiError> {
    let now = now_ms();
    let items: Vec<Value> = ctx
        .store()
        .subscription_records(req.query.i64("user_id").map(UserId))
        .await?
        .iter()
        .map(|s| views::subscription(s, now))
        .collect();
    Ok(Reply::ok(json!({ "items": items })))
}

async fn plan_for(ctx: &Ctx, b: &Values) -> Result<PlanRecord, ApiError> {
    let plans = ctx.store().plan_records().await?;
    match (b.i64("plan_id"), b.str("group")) {
        (Some(id), None) => plans
            .into_iter()
            .find(|p| p.id == id)
            .ok_or_else(|| ApiError::field("plan_id", "no such plan")),
        (None, Some(g)) => {
            let group = ctx
                .store()
                .group_by_name(&g)
                .await?
                .ok_or_else(|| ApiError::field("group", "no such group"))?;
            plans
                .into_iter()
                .find(|p| p.group_id == group.id && p.name == group.name)
                .ok_or_else(|| ApiError::field("group", "the group has no subscription windows"))
        }
        (Some(_), Some(_)) => Err(ApiError::field(
            "group",
            "give `plan_id` or `group`, not both",
        )),
        (None, None) => Err(ApiError::field("plan_id", "give `plan_id` or `group`")),
    }
}

pub(crate) async fn assign_subscription(ctx: Ctx, req: Req) -> Result<Reply, ApiError> {
    let b = &req.body;
    let user = UserId(
        b.i64("user_id")
            .ok_or_else(|| ApiError::field("user_id", "is required"))?,
    );
    if ctx.store().user_record(user).await?.is_none() {
        return Err(ApiError::field("user_id", "no such user"));
    }
    let plan = plan_for(&ctx, b).await?;
    let starts = b.time("starts_at")?.unwrap_or_else(now_ms);
    let expires = match (b.time("expires_at")?, b.i64("days")) {
        (Some(_), Some(_)) => {
            return Err(ApiError::field(
                "days",
                "give `days` or `expires_at`, not both",
            ));
        }
        (Some(e), None) => e,
        (None, days) => {
            starts.saturating_add(days.unwrap_or(plan.duration_days).saturating_mul(DAY_MS))
        }
    };
    if expires <= starts {
        return Err(ApiError::field("expires_at", "must be after the start"));
    }
    let s = ctx
        .store()
        .assign_subscription(user, plan.id, starts, expires)
        .await?;
    Ok(Reply::ok(views::subscription(&s, now_ms())))
}

pub(crate) async fn extend_subscription(ctx: Ctx, req: Req) -> Result<Reply, ApiError> {
    let b = &req.body;
    let id = req.id("id")?;
    let s = ctx
        .store()
        .subscription_record(id)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("subscription {id}")))?;
    if s.revoked {
        return Err(ApiError::conflict(
            "a revoked subscription cannot be extended",
        ));
    }
    let expires = match (b.time("expires_at")?, b.i64("days")) {
        (Some(_), Some(_)) => {
            return Err(ApiError::field(
                "days",
                "give `days` or `expires_at`, not both",
            ));
        }
        (Some(e), None) if e <= s.expires_at_ms => {
            return Err(ApiError::field(
                "expires_at",
                "must be after the current end",
            ));
        }
        (Some(e), None) => e,
        (None, Some(d)) => s
            .expires_at_ms
            .max(now_ms())
            .saturating_add(d.saturating_mul(DAY_MS)),
        (None, None) => return Err(ApiError::field("days", "give `days` or `expires_at`")),
    };
    let s = ctx.store().set_subscription_expiry(id, expires).await?;
    Ok(Reply::ok(views::subscription(&s, now_ms())))
}

pub(crate) async fn revoke_subscription(ctx: Ctx, req: Req) -> Result<Reply, ApiError> {
    let id = req.id("id")?;
    ctx.store()
        .subscription_record(id)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("subscription {id}")))?;
    let s = ctx.store().revoke_subscription(id).await?;
    Ok(Reply::ok(views::subscription(&s, now_ms())))
}

// ---------------------------------------------------------------- redeem codes and orders

pub(crate) async fn list_codes(ctx: Ctx, req: Req) -> Result<Reply, ApiError> {
    let now = now_ms();
    let batch = req.query.str("batch_id");
    let items: Vec<Value> = ctx
        .store()
        .code_records(batch.as_deref())
        .await?
        .iter()
        .map(|c| views::code(c, now))
        .collect();
    Ok(Reply::ok(json!({ "items": items })))
}

pub(crate) async fn generate_codes(ctx: Ctx, req: Req) -> Result<Reply, ApiError> {
    let b = &req.body;
    let value = match b.str("kind").as_deref() {
        Some("balance") => {
            if b.has("plan_id") || b.has("days") {
                return Err(ApiError::field(
                    "plan_id",
                    "balance codes take `amount_usd` only",
                ));
            }
            let amount = b
                .usd("amount_usd")?
                .ok_or_else(|| ApiError::field("amount_usd", "is required for balance codes"))?;
            if !amount.is_positive() {
                return Err(ApiError::field("amount_usd", "must be positive"));
            }
            CodeValue::Balance { amount }
        }
        _ => {
            if b.has("amount_usd") {
                return Err(ApiError::field(
                    "amount_usd",
                    "plan codes take `plan_id` and `days`",
                ));
            }
            let plan_id = b
                .i64("plan_id")
                .ok_or_else(|| ApiError::field("plan_id", "is required for plan codes"))?;
            let plan = ctx
                .store()
                .plan_records()
                .await?
                .into_iter()
                .find(|p| p.id == plan_id)
                .ok_or_else(|| ApiError::field("plan_id", "no such plan"))?;
            CodeValue::Plan {
                plan_id,
                days: b.i64("days").unwrap_or(plan.duration_days),
            }
        }
    };
    let batch = CodeBatch {
        value,
        count: b.u32("count").unwrap_or(1),
        expires_at_ms: future_time(b, "expires_at")?,
    };
    let codes = ctx.store().generate_codes(batch).await?;
    let now = now_ms();
    Ok(Reply::ok(json!({
        "batch_id": codes.first().map(|c| c.batch_id.clone()),
        "items": codes.iter().map(|c| views::code(c, now)).collect::<Vec<_>>(),
    })))
}

pub(crate) async fn expire_code(ctx: Ctx, req: Req) -> Result<Reply, ApiError> {
    let code = req.path.str("code").unwrap_or_default();
    let now = now_ms();
    let c = ctx
        .store()
        .expire_code(&code, now)
        .await?
        .ok_or_else(|| ApiError::not_found("redeem code"))?;
    Ok(Reply::ok(views::code(&c, now)))
}

pub(crate) async fn list_orders(ctx: Ctx, req: Req) -> Result<Reply, ApiError> {
    let items: Vec<Value> = ctx
        .store()
        .order_views(req.query.i64("user_id").map(UserId))
        .await?
        .iter()
        .map(views::order)
        .collect();
    Ok(Reply::ok(json!({ "items": items })))
}

// ---------------------------------------------------------------- usage

pub(crate) async fn usage(ctx: Ctx, req: Req) -> Result<Reply, ApiError> {
    let q = usage_query(&req.query)?;
    usage_page(&ctx, q, true).await
}

pub(crate) async fn usage_summary(ctx: Ctx, req: Req) -> Result<Reply, ApiError> {
    let q = usage_query(&req.query)?;
    summarize(&ctx, q, &req).await
}

// ---------------------------------------------------------------- pricing and settings

fn live(ctx: &Ctx) -> Result<&std::sync::Arc<super::LiveMeter>, ApiError> {
    ctx.api
        .parts()
        .pricing
        .as_ref()
        .ok_or_else(|| ApiError::conflict("this relay's price table cannot be changed at run time"))
}

fn source(ctx: &Ctx) -> &'static str {
    match &ctx.api.parts().pricing {
        Some(l) if l.is_replaced() => "replaced",
        _ => "configured",
    }
}

pub(crate) async fn get_pricing(ctx: Ctx, _req: Req) -> Result<Reply, ApiError> {
    let prices = live(&ctx)?.prices();
    let mut items = Vec::new();
    for p in [Platform::Anthropic, Platform::Openai, Platform::Gemini] {
        for id in prices.models(p) {
            let Some(m) = prices.lookup(&id) else {
                continue;
            };
            let mut v = json!({
                "model": id,
                "platform": p.as_str(),
                "input_per_mtok_usd": m.input.to_string(),
                "output_per_mtok_usd": m.output.to_string(),
                "cache_write_5m_per_mtok_usd": m.cache_write_5m.to_string(),
                "cache_write_1h_per_mtok_usd": m.cache_write_1h.to_string(),
                "cache_read_per_mtok_usd": m.cache_read.to_string(),
                "max_input_tokens": m.max_input_tokens,
                "max_output_tokens": m.max_output_tokens,
            });
            if let Some(t) = m.above_200k {
                v["above_200k"] = json!({
                    "input_per_mtok_usd": t.input.to_string(),
                    "output_per_mtok_usd": t.output.to_string(),
                    "cache_write_5m_per_mtok_usd": t.cache_write_5m.to_string(),
                    "cache_write_1h_per_mtok_usd": t.cache_write_1h.to_string(),
                    "cache_read_per_mtok_usd": t.cache_read.to_string(),
                });
            }
            items.push(v);
        }
    }
    Ok(Reply::ok(json!({"source": source(&ctx), "items": items})))
}

pub(crate) async fn put_pricing(ctx: Ctx, req: Req) -> Result<Reply, ApiError> {
    let live = live(&ctx)?.clone();
    let text = std::str::from_utf8(&req.raw)
        .map_err(|_| ApiError::bad_request("invalid_json", "the body is not UTF-8"))?;
    let table = crate::pricing::PriceTable::from_litellm_json(text)
        .map_err(|e| ApiError::field("body", e.to_string()))?;
    if table.is_empty() {
        return Err(ApiError::field("body", "the table has no models"));
    }
    let models = table.len();
    ctx.store().set_setting(PRICING_SETTING, text).await?;
    live.replace(table);
    Ok(Reply::ok(json!({"source": "replaced", "models": models})))
}

pub(crate) async fn reset_pricing(ctx: Ctx, _req: Req) -> Result<Reply, ApiError> {
    let live = live(&ctx)?.clone();
    ctx.store().set_setting(PRICING_SETTING, "").await?;
    live.reset();
    Ok(Reply::ok(
        json!({"source": "configured", "models": live.prices().len()}),
    ))
}

pub(crate) async fn get_settings(ctx: Ctx, _req: Req) -> Result<Reply, ApiError> {
    Ok(Reply::ok(
        Settings::load(ctx.store().as_ref()).await?.view(),
    ))
}

pub(crate) async fn patch_settings(ctx: Ctx, req: Req) -> Result<Reply, ApiError> {
    let b = &req.body;
    let mut writes: Vec<(&str, String)> = Vec::new();
    if let Some(v) = b.bool("registration_enabled") {
        writes.push(("registration_enabled", json!(v).to_string()));
    }
    if let Some(v) = b.usd("signup_balance_usd")? {
        writes.push(("signup_balance_usd", json!(v.to_string()).to_string()));
    }
    if let Some(groups) = b.str_list("user_key_groups") {
        let known = ctx.store().groups().await?;
        for (i, g) in groups.iter().enumerate() {
            if !known.iter().any(|k| &k.name == g) {
                return Err(ApiError::field(
                    &format!("user_key_groups[{i}]"),
                    format!("no group named `{g}`"),
                ));
            }
        }
        writes.push(("user_key_groups", json!(groups).to_string()));
    }
    if let Some(v) = b.i64("session_ttl_hours") {
        writes.push(("session_ttl_hours", json!(v).to_string()));
    }
    for (name, value) in writes {
        debug_assert!(!name.starts_with(INTERNAL));
        ctx.store().set_setting(name, &value).await?;
    }
    Ok(Reply::ok(
        Settings::load(ctx.store().as_ref()).await?.view(),
    ))
}
