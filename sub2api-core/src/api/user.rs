//! Public and user routes. Every user route acts on the session user only: records of anyone
//! else are "not found", never "forbidden", so their existence does not leak.

use serde_json::{Value, json};

use super::admin::{Settings, balance_of, build_key, store_key, summarize, usage_query};
use super::schema::format_time;
use super::store::{NewUser, RedeemFailure, RedeemOutcome, UserPatch};
use super::{ApiError, Ctx, Reply, Req, auth, own, views};
use crate::account_provider::now_ms;
use crate::domain::KeyId;
use crate::ledger::{Credit, EntryKind};

pub(crate) async fn openapi(ctx: Ctx, _req: Req) -> Result<Reply, ApiError> {
    Ok(Reply::ok(ctx.api.openapi()))
}

pub(crate) async fn register(ctx: Ctx, req: Req) -> Result<Reply, ApiError> {
    let settings = Settings::load(ctx.store().as_ref()).await?;
    if !settings.registration_enabled {
        return Err(ApiError::new(
            http::StatusCode::FORBIDDEN,
            "registration_disabled",
            "registration is disabled on this relay",
        ));
    }
    let email = req
        .body
        .email("email")?
        .ok_or_else(|| ApiError::field("email", "is required"))?;
    // Sign-ups per client address are bounded like failed logins (5x the per-email limit).
    let ip_keys: Vec<String> = ctx
        .client
        .map(|ip| format!("register-ip:{ip}"))
        .into_iter()
        .collect();
    if let Err(wait) = ctx.api.ip_limiter().check(&ip_keys) {
        return Err(ApiError::too_many(
            "too many sign-ups from this address; try again later",
            wait,
        ));
    }
    let password = req.body.raw_str("password").unwrap_or_default();
    let hash = auth::hash_password(&password, ctx.api.config().password)
        .await
        .map_err(ApiError::internal)?;
    let user = ctx
        .store()
        .create_user(NewUser {
            email,
            password_hash: Some(hash),
            is_admin: false,
            limits: Default::default(),
        })
        .await
        .map_err(|e| match e {
            crate::store::StoreError::Conflict(_) => {
                ApiError::field("email", "is already registered")
            }
            other => other.into(),
        })?;
    ctx.api.ip_limiter().fail(&ip_keys);
    if settings.signup_balance.is_positive() {
        ctx.ledger()
            .credit(Credit {
                user_id: user.id,
                amount: settings.signup_balance,
                idempotency_key: format!("signup:{}", user.id),
                kind: EntryKind::Credit,
                memo: "sign-up balance".into(),
            })
            .await
            .map_err(|e| ApiError::unavailable(e.to_string()))?;
    }
    let balance = balance_of(&ctx, user.id).await?;
    Ok(Reply::ok(views::user(&user, Some(balance))))
}

pub(crate) async fn login(ctx: Ctx, req: Req) -> Result<Reply, ApiError> {
    let email = req
        .body
        .email("email")?
        .ok_or_else(|| ApiError::field("email", "is required"))?;
    let password = req.body.raw_str("password").unwrap_or_default();
    let keys = vec![format!("login:{email}")];
    let ip_keys: Vec<String> = ctx
        .client
        .map(|ip| format!("login-ip:{ip}"))
        .into_iter()
        .collect();
    let limiter = ctx.api.limiter();
    if let Err(wait) = limiter
        .check(&keys)
        .and(ctx.api.ip_limiter().check(&ip_keys))
    {
        return Err(ApiError::too_many(
            "too many failed logins; try again later",
            wait,
        ));
    }
    let found = ctx.store().user_login(&email).await?;
    let ok = match &found {
        Some((u, Some(hash))) if u.enabled => auth::verify_password(&password, hash).await,
        _ => {
            auth::dummy_verify(ctx.api.config().password).await;
            false
        }
    };
    let Some((user, _)) = found.filter(|_| ok) else {
        limiter.fail(&keys);
        ctx.api.ip_limiter().fail(&ip_keys);
        return Err(ApiError::unauthorized("wrong email or password"));
    };
    limiter.succeed(&keys[0]);
    let (token, expires_at) = new_session(&ctx, user.id).await?;
    let balance = balance_of(&ctx, user.id).await?;
    Ok(Reply::ok(json!({
        "token": token,
        "expires_at": format_time(expires_at),
        "user": views::user(&user, Some(balance)),
    })))
}

async fn new_session(ctx: &Ctx, user: crate::domain::UserId) -> Result<(String, i64), ApiError> {
    let settings = Settings::load(ctx.store().as_ref()).await?;
    let (token, digest) = auth::new_session_token();
    let now = now_ms();
    let expires_at = now + settings.session_ttl_hours * 3_600_000;
    ctx.store()
        .create_session(digest, user, now, expires_at)
        .await?;
    Ok((token.expose().to_owned(), expires_at))
}

pub(crate) async fn logout(ctx: Ctx, _req: Req) -> Result<Reply, ApiError> {
    if let Some(s) = ctx.session {
        ctx.store().delete_session(s).await?;
    }
    Ok(Reply::ok(json!({"ok": true})))
}

pub(crate) async fn me(ctx: Ctx, _req: Req) -> Result<Reply, ApiError> {
    let me = ctx.me()?;
    let balance = balance_of(&ctx, me.id).await?;
    Ok(Reply::ok(views::user(me, Some(balance))))
}

pub(crate) async fn change_password(ctx: Ctx, req: Req) -> Result<Reply, ApiError> {
    let me = ctx.me()?.clone();
    let current = req.body.raw_str("current_password").unwrap_or_default();
    let keys = vec![format!("password:{}", me.id)];
    if let Err(wait) = ctx.api.limiter().check(&keys) {
        return Err(ApiError::too_many(
            "too many wrong passwords; try again later",
            wait,
        ));
    }
    let ok = match ctx.store().password_hash(me.id).await? {
        Some(h) => auth::verify_password(&current, &h).await,
        None => false,
    };
    if !ok {
        ctx.api.limiter().fail(&keys);
        return Err(ApiError::field("current_password", "is not your password"));
    }
    let new = req.body.raw_str("new_password").unwrap_or_default();
    let hash = auth::hash_password(&new, ctx.api.config().password)
        .await
        .map_err(ApiError::internal)?;
    ctx.store()
        .update_user(
            me.id,
            UserPatch {
                password_hash: Some(hash),
                ..Default::default()
            },
        )
        .await?;
    ctx.store().delete_sessions_of(me.id).await?;
    let (token, expires_at) = new_session(&ctx, me.id).await?;
    Ok(Reply::ok(
        json!({"token": token, "expires_at": format_time(expires_at)}),
    ))
}

pub(crate) async fn groups(ctx: Ctx, _req: Req) -> Result<Reply, ApiError> {
    let me = ctx.me()?;
    let settings = Settings::load(ctx.store().as_ref()).await?;
    let items: Vec<Value> = ctx
        .store()
        .group_records()
        .await?
        .into_iter()
        .filter(|g| settings.user_key_groups.is_empty() || settings.user_key_groups.contains(&g.group.name))
        .map(|g| {
            let rate = g.user_rates.iter().find(|r| r.user_id == me.id).map_or(g.group.rate_multiplier, |r| r.rate_multiplier);
            json!({"id": g.group.id, "name": g.group.name, "platform": g.group.platform.as_str(), "rate_multiplier": rate.to_string()})
        })
        .collect();
    Ok(Reply::ok(json!({ "items": items })))
}

pub(crate) async fn list_keys(ctx: Ctx, _req: Req) -> Result<Reply, ApiError> {
    let me = ctx.me()?;
    let groups = ctx.store().groups().await?;
    let items: Vec<Value> = ctx
        .store()
        .key_records(Some(me.id))
        .await?
        .iter()
        .map(|k| views::key(k, groups.iter().find(|g| g.id == k.group_id)))
        .collect();
    Ok(Reply::ok(json!({ "items": items })))
}

/// Keys a user may hold at once.
const MAX_KEYS_PER_USER: usize = 100;

pub(crate) async fn create_key(ctx: Ctx, req: Req) -> Result<Reply, ApiError> {
    let me = ctx.me()?.clone();
    let settings = Settings::load(ctx.store().as_ref()).await?;
    let group_name = req.body.req_str("group")?;
    if !settings.user_key_groups.is_empty() && !settings.user_key_groups.contains(&group_name) {
        return Err(ApiError::field(
            "group",
            "you may not create keys in this group",
        ));
    }
    if ctx.store().key_records(Some(me.id)).await?.len() >= MAX_KEYS_PER_USER {
        return Err(ApiError::conflict(format!(
            "at most {MAX_KEYS_PER_USER} keys per user"
        )));
    }
    let new = build_key(&ctx, me.id, &req).await?;
    store_key(&ctx, new).await
}

async fn my_key(ctx: &Ctx, req: &Req) -> Result<super::store::KeyRecord, ApiError> {
    let me = ctx.me()?;
    let id = KeyId(req.id("id")?);
    let key = ctx
        .store()
        .key_record(id)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("key {id}")))?;
    own(me.id, key.user_id, &format!("key {id}"))?;
    Ok(key)
}

pub(crate) async fn get_key(ctx: Ctx, req: Req) -> Result<Reply, ApiError> {
    let key = my_key(&ctx, &req).await?;
    let groups = ctx.store().groups().await?;
    Ok(Reply::ok(views::key(
        &key,
        groups.iter().find(|g| g.id == key.group_id),
    )))
}

pub(crate) async fn disable_key(ctx: Ctx, req: Req) -> Result<Reply, ApiError> {
    let key = my_key(&ctx, &req).await?;
    ctx.store().set_key_enabled(key.id, false).await?;
    ctx.api.keys_changed().await;
    let key = ctx
        .store()
        .key_record(key.id)
        .await?
        .ok_or_else(|| ApiError::not_found("key"))?;
    let groups = ctx.store().groups().await?;
    Ok(Reply::ok(views::key(
        &key,
        groups.iter().find(|g| g.id == key.group_id),
    )))
}

pub(crate) async fn usage(ctx: Ctx, req: Req) -> Result<Reply, ApiError> {
    let me = ctx.me()?;
    let mut q = usage_query(&req.query)?;
    q.user_id = Some(me.id);
    q.account_id = None;
    super::admin::usage_page(&ctx, q, false).await
}

pub(crate) async fn usage_summary(ctx: Ctx, req: Req) -> Result<Reply, ApiError> {
    let me = ctx.me()?;
    let mut q = usage_query(&req.query)?;
    q.user_id = Some(me.id);
    q.account_id = None;
    summarize(&ctx, q, &req).await
}

pub(crate) async fn subscriptions(ctx: Ctx, _req: Req) -> Result<Reply, ApiError> {
    let me = ctx.me()?;
    let now = now_ms();
    let items: Vec<Value> = ctx
        .store()
        .subscription_records(Some(me.id))
        .await?
        .iter()
        .map(|s| views::subscription(s, now))
        .collect();
    Ok(Reply::ok(json!({ "items": items })))
}

pub(crate) async fn orders(ctx: Ctx, _req: Req) -> Result<Reply, ApiError> {
    let me = ctx.me()?;
    let items: Vec<Value> = ctx
        .store()
        .order_views(Some(me.id))
        .await?
        .iter()
        .map(views::order)
        .collect();
    Ok(Reply::ok(json!({ "items": items })))
}

pub(crate) async fn redeem(ctx: Ctx, req: Req) -> Result<Reply, ApiError> {
    let me = ctx.me()?.clone();
    let code = req.body.req_str("code")?;
    let keys = vec![format!("redeem:{}", me.id)];
    if let Err(wait) = ctx.api.limiter().check(&keys) {
        return Err(ApiError::too_many(
            "too many invalid codes; try again later",
            wait,
        ));
    }
    let outcome = ctx
        .store()
        .redeem(&code, me.id, ctx.ledger().as_ref())
        .await;
    let outcome = match outcome {
        Ok(o) => o,
        Err(RedeemFailure::Store(e)) => return Err(e.into()),
        Err(e) => {
            ctx.api.limiter().fail(&keys);
            return Err(ApiError::field("code", e.to_string()));
        }
    };
    Ok(Reply::ok(match outcome {
        RedeemOutcome::Balance { amount, balance } => {
            json!({"kind": "balance", "amount_usd": amount.to_string(), "balance_usd": balance.to_string()})
        }
        RedeemOutcome::Plan { subscription } => {
            json!({"kind": "plan", "subscription": views::subscription(&subscription, now_ms())})
        }
    }))
}
