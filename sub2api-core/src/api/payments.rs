//! Payment routes: a user's top-up orders, the operator's view (filter, refund, retry, provider
//! health, audit of refused notifications, the expiry sweep on demand) and the providers'
//! webhooks, which are not JSON routes: [`webhook`] answers on the raw body, exactly as each
//! provider expects.

use http::{Method, StatusCode};
use serde_json::{Value, json};

use super::routes::{list_of, route};
use super::schema::{Field, STR, Ty, opt, out, req};
use super::{Access, ApiError, ApiRoute, Ctx, Reply, Req};
use crate::payment::OrderStatus;
use crate::payment::service::{CreatedOrder, OrderFilter, PayFailure, PlanFulfiller, StoredOrder};
use crate::store::StoreError;

macro_rules! fields {
    ($($f:expr),* $(,)?) => {{
        const F: &[Field] = &[$($f),*];
        F
    }};
}

macro_rules! h {
    ($f:path) => {
        |ctx, req| Box::pin($f(ctx, req))
    };
}

const STATUSES: &[&str] = &[
    "PENDING",
    "PAID",
    "COMPLETED",
    "EXPIRED",
    "CANCELLED",
    "FAILED",
    "REFUND_REQUESTED",
    "REFUNDED",
];

pub(super) fn routes() -> Vec<ApiRoute> {
    use Access::{Admin, User};
    use Method as M;
    vec![
        route(
            M::POST,
            "/api/v1/payments/orders",
            User,
            "payments",
            "Create a top-up or plan order",
            h!(create),
        )
        .body(fields![
            req(
                "provider",
                STR,
                "stripe, alipay, wechat or easypay (as configured)"
            ),
            opt(
                "amount",
                Ty::Int {
                    min: 1,
                    max: i64::MAX
                },
                "a top-up, in the provider currency's minor unit (cents, fen)"
            ),
            opt(
                "plan_id",
                Ty::Id,
                "buy this subscription plan at its price instead (not with `amount`)"
            ),
        ])
        .returns(created_schema)
        .created(),
        route(
            M::GET,
            "/api/v1/payments/orders",
            User,
            "payments",
            "Your top-up orders",
            h!(mine),
        )
        .returns(|| list_of(order_schema)),
        route(
            M::GET,
            "/api/v1/payments/orders/{id}",
            User,
            "payments",
            "One of your orders",
            h!(one),
        )
        .returns(order_schema),
        route(
            M::POST,
            "/api/v1/payments/orders/{id}/cancel",
            User,
            "payments",
            "Cancel an unpaid order",
            h!(cancel),
        )
        .returns(order_schema),
        route(
            M::GET,
            "/api/v1/payments/providers",
            User,
            "payments",
            "Configured providers",
            h!(providers),
        )
        .returns(|| {
            out::obj(&[(
                "items",
                out::array(out::obj(&[
                    ("provider", out::string()),
                    ("currency", out::string()),
                ])),
            )])
        }),
        route(
            M::GET,
            "/api/v1/admin/payments/orders",
            Admin,
            "payments",
            "Orders, newest first, filtered",
            h!(admin_list),
        )
        .query(fields![
            opt("user_id", Ty::Id, "only this user's orders"),
            opt("status", Ty::Enum(STATUSES), "only orders in this status"),
            opt("provider", STR, "only this provider's orders"),
            opt(
                "limit",
                Ty::Int { min: 1, max: 1000 },
                "page size (default 100)"
            ),
        ])
        .returns(|| list_of(order_schema)),
        route(
            M::POST,
            "/api/v1/admin/payments/orders/{id}/refund",
            Admin,
            "payments",
            "Refund a completed order through its provider",
            h!(refund),
        )
        .body(fields![opt("reason", STR, "shown to the provider")])
        .returns(order_schema),
        route(
            M::POST,
            "/api/v1/admin/payments/orders/{id}/retry",
            Admin,
            "payments",
            "Retry fulfilment of a PAID order",
            h!(retry),
        )
        .returns(order_schema),
        route(
            M::POST,
            "/api/v1/admin/payments/sweep",
            Admin,
            "payments",
            "Expire due unpaid orders now (each after asking its provider)",
            h!(sweep),
        )
        .returns(|| {
            out::obj(&[
                ("expired", out::int()),
                ("completed", out::int()),
                ("kept", out::int()),
            ])
        }),
        route(
            M::GET,
            "/api/v1/admin/payments/health",
            Admin,
            "payments",
            "Ask each provider whether it answers",
            h!(health),
        )
        .returns(|| {
            out::obj(&[(
                "items",
                out::array(out::obj(&[
                    ("provider", out::string()),
                    ("ok", out::boolean()),
                    ("error", out::nullable_string()),
                ])),
            )])
        }),
        route(
            M::GET,
            "/api/v1/admin/payments/audit",
            Admin,
            "payments",
            "Refused and unknown notifications, newest first",
            h!(audit),
        )
        .returns(|| {
            list_of(|| {
                out::obj(&[
                    ("provider", out::string()),
                    ("outcome", out::string()),
                    ("detail", out::string()),
                ])
            })
        }),
    ]
}

fn order_schema() -> Value {
    out::obj(&[
        ("id", out::int()),
        ("out_trade_no", out::string()),
        ("user_id", out::int()),
        ("provider", out::string()),
        ("amount", out::int()),
        ("currency", out::string()),
        ("credit_usd", out::usd()),
        ("status", out::string()),
        ("provider_trade_no", out::nullable_string()),
        ("plan_id", out::int()),
        ("created_at", out::time()),
        ("expires_at", out::nullable_time()),
        ("paid_at", out::nullable_time()),
    ])
}

fn created_schema() -> Value {
    let mut s = order_schema();
    for k in ["pay_url", "qr_code", "client_secret"] {
        s["properties"][k] = out::nullable_string();
    }
    s
}

pub fn order_json(o: &StoredOrder) -> Value {
    let t = |ms: Option<i64>| ms.map(super::schema::format_time);
    json!({
        "id": o.id,
        "out_trade_no": o.out_trade_no,
        "user_id": o.user_id.0,
        "provider": o.provider,
        "amount": o.amount_minor,
        "currency": o.currency,
        "credit_usd": o.credit.to_string(),
        "status": o.status.api_name(),
        "provider_trade_no": o.provider_trade_no,
        "plan_id": o.plan_id,
        "created_at": super::schema::format_time(o.created_at_ms),
        "expires_at": t(o.expires_at_ms),
        "paid_at": t(o.paid_at_ms),
    })
}

fn created_json(c: &CreatedOrder) -> Value {
    let mut v = order_json(&c.order);
    v["pay_url"] = json!(c.checkout.pay_url);
    v["qr_code"] = json!(c.checkout.qr_code);
    v["client_secret"] = json!(c.checkout.client_secret);
    v
}

/// Fulfils plan orders through an [`super::AdminStore`]: grants the plan's duration once per
/// order (keyed by its `out_trade_no`), extending an unexpired subscription of the same plan.
pub struct AdminPlans(pub std::sync::Arc<dyn super::AdminStore>);

#[async_trait::async_trait]
impl PlanFulfiller for AdminPlans {
    async fn fulfil_plan(
        &self,
        user: crate::domain::UserId,
        plan_id: i64,
        order: &StoredOrder,
    ) -> Result<(), StoreError> {
        let plan = self
            .0
            .plan_records()
            .await?
            .into_iter()
            .find(|p| p.id == plan_id)
            .ok_or_else(|| StoreError::NotFound(format!("plan {plan_id}")))?;
        self.0
            .grant_plan_once(user, plan_id, plan.duration_days, &grant_key(order))
            .await?;
        Ok(())
    }

    async fn take_back_plan(&self, plan_id: i64, order: &StoredOrder) -> Result<(), StoreError> {
        // Grants made before they recorded their span fall back to the plan's duration now.
        let days = self
            .0
            .plan_records()
            .await?
            .into_iter()
            .find(|p| p.id == plan_id)
            .map_or(0, |p| p.duration_days);
        self.0.take_back_plan_grant(&grant_key(order), days).await?;
        Ok(())
    }
}

/// A paid order's plan grant: one per order.
fn grant_key(order: &StoredOrder) -> String {
    format!("order:{}", order.out_trade_no)
}

fn payments(ctx: &Ctx) -> Result<crate::payment::Payments, ApiError> {
    ctx.api.config().payments.clone().ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "payments_disabled",
            "payments are not configured",
        )
    })
}

impl From<PayFailure> for ApiError {
    fn from(e: PayFailure) -> Self {
        match e {
            PayFailure::Invalid(m) => ApiError::bad_request("invalid_request", m),
            PayFailure::NotFound(w) => ApiError::not_found(w),
            PayFailure::Conflict(m) => ApiError::conflict(m),
            PayFailure::Provider(m) => ApiError::new(StatusCode::BAD_GATEWAY, "provider_error", m),
            PayFailure::Store(s) => s.into(),
            PayFailure::Ledger(m) => ApiError::conflict(m),
        }
    }
}

async fn create(ctx: Ctx, req: Req) -> Result<Reply, ApiError> {
    let me = ctx.me()?.id;
    let p = payments(&ctx)?;
    let provider = req.body.req_str("provider")?;
    if p.provider(&provider).is_none() {
        return Err(ApiError::field(
            "provider",
            format!("`{provider}` is not configured"),
        ));
    }
    let c = match (req.body.i64("amount"), req.body.i64("plan_id")) {
        (Some(amount), None) => p.create_order(me, &provider, amount, None).await?,
        (None, Some(plan_id)) => {
            let plan = ctx
                .store()
                .plan_records()
                .await?
                .into_iter()
                .find(|x| x.id == plan_id && x.enabled)
                .ok_or_else(|| ApiError::field("plan_id", "no such plan"))?;
            let (Some(price), Some(currency)) = (plan.price_minor, plan.currency.as_deref()) else {
                return Err(ApiError::field("plan_id", "this plan is not for sale"));
            };
            let want = p
                .provider(&provider)
                .map(|x| x.currency.as_str())
                .unwrap_or("");
            if !currency.eq_ignore_ascii_case(want) {
                return Err(ApiError::field(
                    "provider",
                    format!("`{provider}` takes {want}, the plan is priced in {currency}"),
                ));
            }
            p.create_order(me, &provider, price, Some(plan.id)).await?
        }
        (Some(_), Some(_)) => {
            return Err(ApiError::field(
                "plan_id",
                "give `amount` or `plan_id`, not both",
            ));
        }
        (None, None) => return Err(ApiError::field("amount", "give `amount` or `plan_id`")),
    };
    Ok(Reply {
        status: StatusCode::CREATED,
        body: created_json(&c),
    })
}

async fn mine(ctx: Ctx, _req: Req) -> Result<Reply, ApiError> {
    let me = ctx.me()?.id;
    let p = payments(&ctx)?;
    let v = p
        .store()
        .payment_orders(&OrderFilter {
            user: Some(me),
            limit: 200,
            ..Default::default()
        })
        .await?;
    Ok(Reply::ok(
        json!({"items": v.iter().map(order_json).collect::<Vec<_>>()}),
    ))
}

async fn one(ctx: Ctx, req: Req) -> Result<Reply, ApiError> {
    let me = ctx.me()?.id;
    let p = payments(&ctx)?;
    let o = p.order_by_id(req.id("id")?).await?;
    super::own(me, o.user_id, "order")?;
    Ok(Reply::ok(order_json(&o)))
}

async fn cancel(ctx: Ctx, req: Req) -> Result<Reply, ApiError> {
    let me = ctx.me()?.id;
    let p = payments(&ctx)?;
    Ok(Reply::ok(order_json(&p.cancel(me, req.id("id")?).await?)))
}

async fn providers(ctx: Ctx, _req: Req) -> Result<Reply, ApiError> {
    let p = payments(&ctx)?;
    let items: Vec<Value> = p
        .provider_names()
        .into_iter()
        .map(|n| json!({"provider": n, "currency": p.provider(&n).map(|x| x.currency.clone())}))
        .collect();
    Ok(Reply::ok(json!({ "items": items })))
}

async fn admin_list(ctx: Ctx, req: Req) -> Result<Reply, ApiError> {
    let p = payments(&ctx)?;
    let f = OrderFilter {
        user: req.query.i64("user_id").map(crate::domain::UserId),
        status: req.query.str("status").and_then(|s| OrderStatus::parse(&s)),
        provider: req.query.str("provider"),
        expires_before_ms: None,
        limit: req.query.u32("limit").unwrap_or(100),
    };
    let v = p.store().payment_orders(&f).await?;
    Ok(Reply::ok(
        json!({"items": v.iter().map(order_json).collect::<Vec<_>>()}),
    ))
}

async fn refund(ctx: Ctx, req: Req) -> Result<Reply, ApiError> {
    let p = payments(&ctx)?;
    let reason = req.body.str("reason").unwrap_or_else(|| "refund".into());
    Ok(Reply::ok(order_json(
        &p.refund(req.id("id")?, &reason).await?,
    )))
}

async fn retry(ctx: Ctx, req: Req) -> Result<Reply, ApiError> {
    let p = payments(&ctx)?;
    Ok(Reply::ok(order_json(&p.retry(req.id("id")?).await?)))
}

async fn sweep(ctx: Ctx, _req: Req) -> Result<Reply, ApiError> {
    let p = payments(&ctx)?;
    let r = p.sweep(crate::account_provider::now_ms()).await?;
    Ok(Reply::ok(
        json!({"expired": r.expired, "completed": r.completed, "kept": r.kept}),
    ))
}

async fn health(ctx: Ctx, _req: Req) -> Result<Reply, ApiError> {
    let p = payments(&ctx)?;
    let items: Vec<Value> = p
        .health()
        .await
        .into_iter()
        .map(|(n, r)| json!({"provider": n, "ok": r.is_ok(), "error": r.err()}))
        .collect();
    Ok(Reply::ok(json!({ "items": items })))
}

async fn audit(ctx: Ctx, _req: Req) -> Result<Reply, ApiError> {
    let p = payments(&ctx)?;
    let v = p.store().payment_audits(200).await?;
    Ok(Reply::ok(json!({ "items": v })))
}

/// The path prefix of provider notifications.
pub const WEBHOOK_PREFIX: &str = "/api/v1/payments/webhook/";

/// Answers a provider notification (`POST`, and `GET` for EasyPay) on its raw body.
pub async fn webhook(
    payments: Option<crate::payment::Payments>,
    provider: &str,
    method: &Method,
    headers: &http::HeaderMap,
    query: Option<&str>,
    body: &[u8],
) -> (StatusCode, String) {
    let Some(p) = payments else {
        return (StatusCode::NOT_FOUND, "payments are not configured".into());
    };
    if *method != Method::POST && !(*method == Method::GET && provider == "easypay") {
        return (StatusCode::METHOD_NOT_ALLOWED, "method not allowed".into());
    }
    p.handle_notification(provider, headers, query, body).await
}
