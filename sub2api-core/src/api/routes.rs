//! The route table: every route the API serves, in one place. The dispatcher, the validator and
//! the OpenAPI generator all read this table.

use std::sync::LazyLock;

use http::{Method, StatusCode};
use serde_json::{Value, json};

use super::schema::{Field, LIMIT, OFFSET, SIGNED_USD, STR, Ty, USD, opt, out, req};
use super::store::UsageGroupBy;
use super::{Access, ApiRoute, BodySpec, Handler, admin, user, views};

const MIB: usize = 1024 * 1024;

pub(super) fn route(
    method: Method,
    path: &'static str,
    access: Access,
    tag: &'static str,
    summary: &'static str,
    handler: Handler,
) -> ApiRoute {
    let params = path
        .split('/')
        .filter_map(|s| s.strip_prefix('{')?.strip_suffix('}'))
        .map(|name| match name {
            "code" => req("code", Ty::Str { max: 64 }, "the redeem code"),
            "id" => req("id", Ty::Id, "the record's id"),
            "user_id" => req("user_id", Ty::Id, "the user's id"),
            _ => req("id", Ty::Id, "an id"),
        })
        .collect();
    ApiRoute {
        method,
        path,
        access,
        tag,
        summary,
        params,
        query: &[],
        body: BodySpec::None,
        response: ok_schema,
        status: StatusCode::OK,
        max_body: 64 * 1024,
        handler,
    }
}

impl ApiRoute {
    pub(super) fn body(mut self, fields: &'static [Field]) -> Self {
        self.body = BodySpec::Fields(fields);
        self
    }
    pub(super) fn json_body(mut self, max: usize) -> Self {
        self.body = BodySpec::Json;
        self.max_body = max;
        self
    }
    pub(super) fn query(mut self, fields: &'static [Field]) -> Self {
        self.query = fields;
        self
    }
    pub(super) fn returns(mut self, schema: fn() -> Value) -> Self {
        self.response = schema;
        self
    }
    pub(super) fn created(mut self) -> Self {
        self.status = StatusCode::CREATED;
        self
    }
}

fn ok_schema() -> Value {
    out::obj(&[("ok", out::boolean())])
}

/// A `&'static [Field]` from field constructors (const fns are not promoted in a plain `&[...]`).
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

// ---- shared field lists ----

const PLATFORMS: &[&str] = &["anthropic", "openai", "gemini"];
const BILLING: &[&str] = &["wallet", "subscription", "both"];
const ACCOUNT_TYPES: &[&str] = &["apikey", "oauth", "setup_token"];
const PAGE: [Field; 2] = [
    opt("limit", LIMIT, "page size (default 100)"),
    opt("offset", OFFSET, "rows to skip"),
];

const USER_CONCURRENCY: Field = opt(
    "concurrency",
    Ty::Int {
        min: 1,
        max: 10_000,
    },
    "requests in flight at once over all of the user's keys (null: unlimited)",
);
const USER_RPM: Field = opt(
    "rpm",
    Ty::Int {
        min: 1,
        max: 1_000_000,
    },
    "requests per minute over all of the user's keys (null: unlimited)",
);

const KEY_FIELDS_USER: &[Field] = &[
    req("group", STR, "name of the group (pool) the key draws on"),
    opt("name", STR, "a label"),
    opt("quota_usd", USD, "the most the key may ever spend"),
    opt("expires_at", Ty::Time, "when the key stops working"),
    opt(
        "ip_allowlist",
        Ty::StrList { max: 64 },
        "client IPs or CIDR blocks the key works from; empty = anywhere",
    ),
    opt(
        "concurrency",
        Ty::Int {
            min: 1,
            max: 10_000,
        },
        "requests in flight at once",
    ),
    opt(
        "rpm",
        Ty::Int {
            min: 1,
            max: 1_000_000,
        },
        "requests per minute",
    ),
];

const KEY_FIELDS_ADMIN: &[Field] = &[
    req("user_id", Ty::Id, "the key's owner"),
    req("group", STR, "name of the group (pool) the key draws on"),
    opt("name", STR, "a label"),
    opt("quota_usd", USD, "the most the key may ever spend"),
    opt("expires_at", Ty::Time, "when the key stops working"),
    opt(
        "ip_allowlist",
        Ty::StrList { max: 64 },
        "client IPs or CIDR blocks the key works from; empty = anywhere",
    ),
    opt(
        "concurrency",
        Ty::Int {
            min: 1,
            max: 10_000,
        },
        "requests in flight at once",
    ),
    opt(
        "rpm",
        Ty::Int {
            min: 1,
            max: 1_000_000,
        },
        "requests per minute",
    ),
];

const KEY_PATCH: &[Field] = &[
    opt("name", STR, "a label"),
    opt("enabled", Ty::Bool, "whether the key works"),
    opt(
        "quota_usd",
        USD,
        "the most the key may ever spend (null removes the quota)",
    ),
    opt(
        "expires_at",
        Ty::Time,
        "when the key stops working (null: never)",
    ),
    opt(
        "ip_allowlist",
        Ty::StrList { max: 64 },
        "client IPs or CIDR blocks; empty = anywhere",
    ),
    opt(
        "concurrency",
        Ty::Int {
            min: 1,
            max: 10_000,
        },
        "requests in flight at once",
    ),
    opt(
        "rpm",
        Ty::Int {
            min: 1,
            max: 1_000_000,
        },
        "requests per minute",
    ),
];

const ACCOUNT_CREATE: &[Field] = &[
    req("name", STR, "unique name (the account's natural key)"),
    opt(
        "platform",
        Ty::Enum(PLATFORMS),
        "vendor (default anthropic)",
    ),
    opt(
        "type",
        Ty::Enum(ACCOUNT_TYPES),
        "how it authenticates (default apikey)",
    ),
    opt(
        "api_key",
        Ty::Str { max: 4096 },
        "the vendor API key (type apikey)",
    ),
    opt(
        "access_token",
        Ty::Str { max: 8192 },
        "the bearer token (type oauth or setup_token)",
    ),
    opt(
        "base_url",
        Ty::Str { max: 2048 },
        "where requests go (default: the vendor's API)",
    ),
    opt(
        "priority",
        Ty::Int {
            min: -1_000_000,
            max: 1_000_000,
        },
        "lower is preferred (default 50)",
    ),
    opt(
        "concurrency",
        Ty::Int {
            min: 1,
            max: 100_000,
        },
        "requests upstream at once (default 4)",
    ),
    opt(
        "groups",
        Ty::StrList { max: 100 },
        "names of the groups it serves",
    ),
    opt(
        "options",
        Ty::Object,
        "model_mapping, models, proxy, chatgpt_account_id, project_id",
    ),
];

const ACCOUNT_PATCH: &[Field] = &[
    opt(
        "api_key",
        Ty::Str { max: 4096 },
        "a new vendor API key (type apikey)",
    ),
    opt(
        "access_token",
        Ty::Str { max: 8192 },
        "a new bearer token (type oauth or setup_token)",
    ),
    opt("base_url", Ty::Str { max: 2048 }, "where requests go"),
    opt(
        "priority",
        Ty::Int {
            min: -1_000_000,
            max: 1_000_000,
        },
        "lower is preferred",
    ),
    opt(
        "concurrency",
        Ty::Int {
            min: 1,
            max: 100_000,
        },
        "requests upstream at once",
    ),
    opt(
        "groups",
        Ty::StrList { max: 100 },
        "names of the groups it serves",
    ),
    opt(
        "options",
        Ty::Object,
        "model_mapping, models, proxy, chatgpt_account_id, project_id",
    ),
    opt("enabled", Ty::Bool, "whether it is scheduled"),
];

const WINDOWS_DOC: &str = "windows: [{\"kind\": \"rolling\"|\"day\"|\"week\"|\"month\", \"hours\": N (rolling), \"limit_usd\": \"5.00\"}]";

const GROUP_CREATE: &[Field] = &[
    req("name", STR, "unique name"),
    opt(
        "platform",
        Ty::Enum(PLATFORMS),
        "vendor of its accounts (default anthropic)",
    ),
    opt(
        "rate_multiplier",
        Ty::Multiplier,
        "price factor (default 1.0)",
    ),
    opt(
        "billing_mode",
        Ty::Enum(BILLING),
        "who pays: wallet (default), subscription, both",
    ),
    opt("subscription_windows", Ty::ObjList { max: 8 }, WINDOWS_DOC),
    opt(
        "subscription_days",
        Ty::Int { min: 1, max: 3660 },
        "how long one subscription of the group's plan lasts (default 30)",
    ),
];

const GROUP_PATCH: &[Field] = &[
    opt("platform", Ty::Enum(PLATFORMS), "vendor of its accounts"),
    opt("rate_multiplier", Ty::Multiplier, "price factor"),
    opt(
        "billing_mode",
        Ty::Enum(BILLING),
        "who pays: wallet, subscription, both",
    ),
    opt("subscription_windows", Ty::ObjList { max: 8 }, WINDOWS_DOC),
    opt(
        "subscription_days",
        Ty::Int { min: 1, max: 3660 },
        "how long one subscription of the group's plan lasts",
    ),
];

const USAGE_ADMIN: &[Field] = &[
    opt("user_id", Ty::Id, "only this user's requests"),
    opt("key_id", Ty::Id, "only this key's requests"),
    opt(
        "account_id",
        Ty::Id,
        "only requests this upstream account served",
    ),
    opt("model", STR, "only this model"),
    opt("from", Ty::Time, "from this time (inclusive)"),
    opt("to", Ty::Time, "until this time (exclusive)"),
    PAGE[0],
    PAGE[1],
];

const SUMMARY_ADMIN: &[Field] = &[
    req(
        "by",
        Ty::Enum(UsageGroupBy::ALL),
        "aggregate per day, model, user, key or account",
    ),
    opt("user_id", Ty::Id, "only this user's requests"),
    opt("key_id", Ty::Id, "only this key's requests"),
    opt(
        "account_id",
        Ty::Id,
        "only requests this upstream account served",
    ),
    opt("model", STR, "only this model"),
    opt("from", Ty::Time, "from this time (inclusive)"),
    opt("to", Ty::Time, "until this time (exclusive)"),
];

const USAGE_USER: &[Field] = &[
    opt("key_id", Ty::Id, "only this key's requests"),
    opt("model", STR, "only this model"),
    opt("from", Ty::Time, "from this time (inclusive)"),
    opt("to", Ty::Time, "until this time (exclusive)"),
    PAGE[0],
    PAGE[1],
];

const SUMMARY_USER: &[Field] = &[
    req(
        "by",
        Ty::Enum(&["day", "model", "key"]),
        "aggregate per day, model or key",
    ),
    opt("key_id", Ty::Id, "only this key's requests"),
    opt("model", STR, "only this model"),
    opt("from", Ty::Time, "from this time (inclusive)"),
    opt("to", Ty::Time, "until this time (exclusive)"),
];

const SETTINGS_PATCH: &[Field] = &[
    opt(
        "registration_enabled",
        Ty::Bool,
        "whether POST /api/v1/auth/register creates users",
    ),
    opt(
        "signup_balance_usd",
        USD,
        "credited to every self-registered user",
    ),
    opt(
        "user_key_groups",
        Ty::StrList { max: 100 },
        "groups users may create keys in; empty = all",
    ),
    opt(
        "session_ttl_hours",
        Ty::Int {
            min: 1,
            max: 24 * 365,
        },
        "how long a login lasts",
    ),
];

fn page_of(item: fn() -> Value) -> Value {
    out::page(item())
}

pub(super) fn list_of(item: fn() -> Value) -> Value {
    out::list(item())
}

static ROUTES: LazyLock<Vec<ApiRoute>> = LazyLock::new(|| {
    let mut all = core_routes();
    all.extend(super::payments::routes());
    all
});

fn core_routes() -> Vec<ApiRoute> {
    use Access::{Admin, Public, User};
    use Method as M;
    vec![
        // ---- public ----
        route(
            M::GET,
            "/api/v1/openapi.json",
            Public,
            "meta",
            "This document: every route of the API",
            h!(user::openapi),
        )
        .returns(|| json!({"type": "object", "description": "an OpenAPI 3.1 document"})),
        route(
            M::POST,
            "/api/v1/auth/register",
            Public,
            "auth",
            "Create an account (403 when the operator disabled registration)",
            h!(user::register),
        )
        .body(fields![
            req("email", Ty::Email, "your email"),
            req("password", Ty::Password, "8 to 256 characters")
        ])
        .returns(views::user_schema)
        .created(),
        route(
            M::POST,
            "/api/v1/auth/login",
            Public,
            "auth",
            "Log in: a session token for Authorization: Bearer",
            h!(user::login),
        )
        .body(fields![
            req("email", Ty::Email, "your email"),
            req("password", Ty::Str { max: 256 }, "your password")
        ])
        .returns(|| {
            out::obj(&[
                ("token", out::string()),
                ("expires_at", out::time()),
                ("user", views::user_schema()),
            ])
        }),
        // ---- user ----
        route(
            M::POST,
            "/api/v1/auth/logout",
            User,
            "auth",
            "End this session",
            h!(user::logout),
        ),
        route(
            M::GET,
            "/api/v1/me",
            User,
            "me",
            "Your account and balance",
            h!(user::me),
        )
        .returns(views::user_schema),
        route(
            M::POST,
            "/api/v1/me/password",
            User,
            "me",
            "Change your password (ends your other sessions)",
            h!(user::change_password),
        )
        .body(fields![
            req(
                "current_password",
                Ty::Str { max: 256 },
                "your password now"
            ),
            req("new_password", Ty::Password, "8 to 256 characters")
        ])
        .returns(|| out::obj(&[("token", out::string()), ("expires_at", out::time())])),
        route(
            M::GET,
            "/api/v1/groups",
            User,
            "me",
            "Groups you may create keys in, at your rates",
            h!(user::groups),
        )
        .returns(|| {
            out::list(out::obj(&[
                ("id", out::int()),
                ("name", out::string()),
                ("platform", out::string()),
                ("rate_multiplier", out::string()),
            ]))
        }),
        route(
            M::GET,
            "/api/v1/keys",
            User,
            "keys",
            "Your API keys",
            h!(user::list_keys),
        )
        .returns(|| list_of(views::key_schema)),
        route(
            M::POST,
            "/api/v1/keys",
            User,
            "keys",
            "Create an API key (its plaintext is shown this once)",
            h!(user::create_key),
        )
        .body(KEY_FIELDS_USER)
        .returns(views::new_key_schema)
        .created(),
        route(
            M::GET,
            "/api/v1/keys/{id}",
            User,
            "keys",
            "One of your API keys",
            h!(user::get_key),
        )
        .returns(views::key_schema),
        route(
            M::POST,
            "/api/v1/keys/{id}/disable",
            User,
            "keys",
            "Disable one of your API keys",
            h!(user::disable_key),
        )
        .returns(views::key_schema),
        route(
            M::GET,
            "/api/v1/usage",
            User,
            "usage",
            "Your requests, newest first",
            h!(user::usage),
        )
        .query(USAGE_USER)
        .returns(|| out::page(views::usage_schema(false))),
        route(
            M::GET,
            "/api/v1/usage/summary",
            User,
            "usage",
            "Your usage per day, model or key",
            h!(user::usage_summary),
        )
        .query(SUMMARY_USER)
        .returns(views::summary_schema),
        route(
            M::GET,
            "/api/v1/subscriptions",
            User,
            "subscriptions",
            "Your subscriptions",
            h!(user::subscriptions),
        )
        .returns(|| list_of(views::subscription_schema)),
        route(
            M::GET,
            "/api/v1/orders",
            User,
            "orders",
            "Your payment orders",
            h!(user::orders),
        )
        .returns(|| list_of(views::order_schema)),
        route(
            M::POST,
            "/api/v1/redeem",
            User,
            "redeem",
            "Redeem a code for balance or a subscription",
            h!(user::redeem),
        )
        .body(fields![req("code", Ty::Str { max: 64 }, "the code")])
        .returns(|| {
            out::obj(&[
                ("kind", out::string()),
                ("amount_usd", out::nullable_usd()),
                ("balance_usd", out::nullable_usd()),
                ("subscription", views::subscription_schema()),
            ])
        }),
        // ---- admin: accounts ----
        route(
            M::GET,
            "/api/v1/admin/accounts",
            Admin,
            "accounts",
            "Upstream accounts (never their credentials)",
            h!(admin::list_accounts),
        )
        .returns(|| list_of(views::account_schema)),
        route(
            M::POST,
            "/api/v1/admin/accounts",
            Admin,
            "accounts",
            "Add an upstream account",
            h!(admin::create_account),
        )
        .body(ACCOUNT_CREATE)
        .returns(views::account_schema)
        .created(),
        route(
            M::GET,
            "/api/v1/admin/accounts/{id}",
            Admin,
            "accounts",
            "One upstream account",
            h!(admin::get_account),
        )
        .returns(views::account_schema),
        route(
            M::PATCH,
            "/api/v1/admin/accounts/{id}",
            Admin,
            "accounts",
            "Change an upstream account",
            h!(admin::update_account),
        )
        .body(ACCOUNT_PATCH)
        .returns(views::account_schema),
        route(
            M::DELETE,
            "/api/v1/admin/accounts/{id}",
            Admin,
            "accounts",
            "Delete an upstream account",
            h!(admin::delete_account),
        ),
        route(
            M::POST,
            "/api/v1/admin/accounts/{id}/enable",
            Admin,
            "accounts",
            "Schedule the account again",
            h!(admin::enable_account),
        )
        .returns(views::account_schema),
        route(
            M::POST,
            "/api/v1/admin/accounts/{id}/disable",
            Admin,
            "accounts",
            "Stop scheduling the account",
            h!(admin::disable_account),
        )
        .returns(views::account_schema),
        route(
            M::POST,
            "/api/v1/admin/accounts/{id}/test",
            Admin,
            "accounts",
            "Send one small live request with the account",
            h!(admin::test_account),
        )
        .body(fields![opt(
            "model",
            STR,
            "model to ask (default: a small one of the platform)"
        )])
        .returns(|| {
            out::obj(&[
                ("ok", out::boolean()),
                ("status", out::nullable_int()),
                ("latency_ms", out::int()),
                ("message", out::string()),
            ])
        }),
        route(
            M::POST,
            "/api/v1/admin/accounts/{id}/clear-cooldown",
            Admin,
            "accounts",
            "Put the account back into service now",
            h!(admin::clear_cooldown),
        )
        .returns(views::account_schema),
        // ---- admin: groups ----
        route(
            M::GET,
            "/api/v1/admin/groups",
            Admin,
            "groups",
            "Groups (pools)",
            h!(admin::list_groups),
        )
        .returns(|| list_of(views::group_schema)),
        route(
            M::POST,
            "/api/v1/admin/groups",
            Admin,
            "groups",
            "Create a group",
            h!(admin::create_group),
        )
        .body(GROUP_CREATE)
        .returns(views::group_schema)
        .created(),
        route(
            M::GET,
            "/api/v1/admin/groups/{id}",
            Admin,
            "groups",
            "One group",
            h!(admin::get_group),
        )
        .returns(views::group_schema),
        route(
            M::PATCH,
            "/api/v1/admin/groups/{id}",
            Admin,
            "groups",
            "Change a group",
            h!(admin::update_group),
        )
        .body(GROUP_PATCH)
        .returns(views::group_schema),
        route(
            M::DELETE,
            "/api/v1/admin/groups/{id}",
            Admin,
            "groups",
            "Delete a group no key or plan uses",
            h!(admin::delete_group),
        ),
        route(
            M::PUT,
            "/api/v1/admin/groups/{id}/user-rates/{user_id}",
            Admin,
            "groups",
            "Set a user's own multiplier in the group",
            h!(admin::set_user_rate),
        )
        .body(fields![req(
            "rate_multiplier",
            Ty::Multiplier,
            "the user's price factor in this group"
        )])
        .returns(views::group_schema),
        route(
            M::DELETE,
            "/api/v1/admin/groups/{id}/user-rates/{user_id}",
            Admin,
            "groups",
            "Remove a user's own multiplier",
            h!(admin::delete_user_rate),
        )
        .returns(views::group_schema),
        // ---- admin: plans ----
        route(
            M::GET,
            "/api/v1/admin/plans",
            Admin,
            "subscriptions",
            "Subscription plans",
            h!(admin::list_plans),
        )
        .returns(|| list_of(views::plan_schema)),
        route(
            M::POST,
            "/api/v1/admin/plans",
            Admin,
            "subscriptions",
            "Create a subscription plan",
            h!(admin::create_plan),
        )
        .body(fields![
            req("name", STR, "unique name"),
            req("group", STR, "the group it bills"),
            opt(
                "duration_days",
                Ty::Int { min: 1, max: 3660 },
                "how long one subscription lasts (default 30)"
            ),
            req("windows", Ty::ObjList { max: 8 }, WINDOWS_DOC),
            opt(
                "price_minor",
                Ty::Int {
                    min: 1,
                    max: i64::MAX
                },
                "price of one purchase in `currency`'s minor unit (omit: not for sale)"
            ),
            opt("currency", STR, "the price's currency (with `price_minor`)"),
        ])
        .returns(views::plan_schema)
        .created(),
        // ---- admin: users ----
        route(
            M::GET,
            "/api/v1/admin/users",
            Admin,
            "users",
            "Users, oldest first",
            h!(admin::list_users),
        )
        .query(&PAGE)
        .returns(|| page_of(views::user_schema)),
        route(
            M::POST,
            "/api/v1/admin/users",
            Admin,
            "users",
            "Create a user",
            h!(admin::create_user),
        )
        .body(fields![
            req("email", Ty::Email, "the user's email"),
            opt(
                "password",
                Ty::Password,
                "lets the user log in; omit for key-only users"
            ),
            opt(
                "balance_usd",
                USD,
                "opening balance, credited through the ledger"
            ),
            opt("is_admin", Ty::Bool, "may use the admin API with a session"),
            USER_CONCURRENCY,
            USER_RPM,
        ])
        .returns(views::user_schema)
        .created(),
        route(
            M::GET,
            "/api/v1/admin/users/{id}",
            Admin,
            "users",
            "One user",
            h!(admin::get_user),
        )
        .returns(views::user_schema),
        route(
            M::PATCH,
            "/api/v1/admin/users/{id}",
            Admin,
            "users",
            "Change a user",
            h!(admin::update_user),
        )
        .body(fields![
            opt(
                "password",
                Ty::Password,
                "a new password (ends the user's sessions)"
            ),
            opt(
                "enabled",
                Ty::Bool,
                "a disabled user's keys and sessions stop working"
            ),
            opt("is_admin", Ty::Bool, "may use the admin API with a session"),
            USER_CONCURRENCY,
            USER_RPM,
        ])
        .returns(views::user_schema),
        route(
            M::POST,
            "/api/v1/admin/users/{id}/disable",
            Admin,
            "users",
            "Disable a user (keys and sessions stop working)",
            h!(admin::disable_user),
        )
        .returns(views::user_schema),
        route(
            M::POST,
            "/api/v1/admin/users/{id}/enable",
            Admin,
            "users",
            "Enable a user",
            h!(admin::enable_user),
        )
        .returns(views::user_schema),
        route(
            M::POST,
            "/api/v1/admin/users/{id}/balance",
            Admin,
            "users",
            "Credit (positive) or debit (negative) a balance through the ledger",
            h!(admin::adjust_balance),
        )
        .body(fields![
            req(
                "amount_usd",
                SIGNED_USD,
                "exact amount; negative debits (never below zero)"
            ),
            req("reason", Ty::Str { max: 500 }, "why (kept in the journal)"),
            opt(
                "idempotency_key",
                Ty::Str { max: 128 },
                "retries with the same key apply once"
            ),
        ])
        .returns(|| {
            out::obj(&[
                ("user_id", out::int()),
                ("balance_usd", out::usd()),
                ("available_usd", out::usd()),
                ("replayed", out::boolean()),
            ])
        }),
        // ---- admin: keys ----
        route(
            M::GET,
            "/api/v1/admin/keys",
            Admin,
            "keys",
            "API keys (never their secrets)",
            h!(admin::list_keys),
        )
        .query(fields![opt("user_id", Ty::Id, "only this user's keys")])
        .returns(|| list_of(views::key_schema)),
        route(
            M::POST,
            "/api/v1/admin/keys",
            Admin,
            "keys",
            "Create an API key for a user (its plaintext is shown this once)",
            h!(admin::create_key),
        )
        .body(KEY_FIELDS_ADMIN)
        .returns(views::new_key_schema)
        .created(),
        route(
            M::GET,
            "/api/v1/admin/keys/{id}",
            Admin,
            "keys",
            "One API key",
            h!(admin::get_key),
        )
        .returns(views::key_schema),
        route(
            M::PATCH,
            "/api/v1/admin/keys/{id}",
            Admin,
            "keys",
            "Change a key's limits, quota, expiry or allowlist",
            h!(admin::update_key),
        )
        .body(KEY_PATCH)
        .returns(views::key_schema),
        route(
            M::POST,
            "/api/v1/admin/keys/{id}/disable",
            Admin,
            "keys",
            "Disable an API key",
            h!(admin::disable_key),
        )
        .returns(views::key_schema),
        route(
            M::POST,
            "/api/v1/admin/keys/{id}/enable",
            Admin,
            "keys",
            "Enable an API key",
            h!(admin::enable_key),
        )
        .returns(views::key_schema),
        // ---- admin: subscriptions ----
        route(
            M::GET,
            "/api/v1/admin/subscriptions",
            Admin,
            "subscriptions",
            "Subscriptions",
            h!(admin::list_subscriptions),
        )
        .query(fields![opt(
            "user_id",
            Ty::Id,
            "only this user's subscriptions"
        )])
        .returns(|| list_of(views::subscription_schema)),
        route(
            M::POST,
            "/api/v1/admin/subscriptions",
            Admin,
            "subscriptions",
            "Assign a plan to a user",
            h!(admin::assign_subscription),
        )
        .body(fields![
            req("user_id", Ty::Id, "the subscriber"),
            opt(
                "plan_id",
                Ty::Id,
                "the plan (or give `group` for the group's plan)"
            ),
            opt("group", STR, "the group whose plan to assign"),
            opt("starts_at", Ty::Time, "default now"),
            opt("expires_at", Ty::Time, "default: starts_at + days"),
            opt(
                "days",
                Ty::Int { min: 1, max: 3660 },
                "default: the plan's duration"
            ),
        ])
        .returns(views::subscription_schema)
        .created(),
        route(
            M::POST,
            "/api/v1/admin/subscriptions/{id}/extend",
            Admin,
            "subscriptions",
            "Extend a subscription",
            h!(admin::extend_subscription),
        )
        .body(fields![
            opt(
                "days",
                Ty::Int { min: 1, max: 3660 },
                "days to add to its end"
            ),
            opt("expires_at", Ty::Time, "or: the new end")
        ])
        .returns(views::subscription_schema),
        route(
            M::POST,
            "/api/v1/admin/subscriptions/{id}/revoke",
            Admin,
            "subscriptions",
            "Revoke a subscription now",
            h!(admin::revoke_subscription),
        )
        .returns(views::subscription_schema),
        // ---- admin: redeem codes ----
        route(
            M::GET,
            "/api/v1/admin/redeem-codes",
            Admin,
            "redeem",
            "Redeem codes",
            h!(admin::list_codes),
        )
        .query(fields![opt(
            "batch_id",
            Ty::Str { max: 64 },
            "only this batch"
        )])
        .returns(|| list_of(views::code_schema)),
        route(
            M::POST,
            "/api/v1/admin/redeem-codes",
            Admin,
            "redeem",
            "Generate a batch of redeem codes",
            h!(admin::generate_codes),
        )
        .body(fields![
            req("kind", Ty::Enum(&["balance", "plan"]), "what a code gives"),
            opt("amount_usd", USD, "balance per code (kind balance)"),
            opt("plan_id", Ty::Id, "the plan (kind plan)"),
            opt(
                "days",
                Ty::Int { min: 1, max: 3660 },
                "days of the plan (kind plan; default its duration)"
            ),
            opt(
                "count",
                Ty::Int { min: 1, max: 1000 },
                "how many codes (default 1)"
            ),
            opt("expires_at", Ty::Time, "codes stop redeeming then"),
        ])
        .returns(|| {
            out::obj(&[
                ("batch_id", out::string()),
                ("items", out::array(views::code_schema())),
            ])
        })
        .created(),
        route(
            M::POST,
            "/api/v1/admin/redeem-codes/{code}/expire",
            Admin,
            "redeem",
            "Make an unused code stop redeeming",
            h!(admin::expire_code),
        )
        .returns(views::code_schema),
        // ---- admin: orders ----
        route(
            M::GET,
            "/api/v1/admin/orders",
            Admin,
            "orders",
            "Payment orders",
            h!(admin::list_orders),
        )
        .query(fields![opt("user_id", Ty::Id, "only this user's orders")])
        .returns(|| list_of(views::order_schema)),
        // ---- admin: usage ----
        route(
            M::GET,
            "/api/v1/admin/usage",
            Admin,
            "usage",
            "Requests, newest first",
            h!(admin::usage),
        )
        .query(USAGE_ADMIN)
        .returns(|| out::page(views::usage_schema(true))),
        route(
            M::GET,
            "/api/v1/admin/usage/summary",
            Admin,
            "usage",
            "Usage per day, model, user, key or account",
            h!(admin::usage_summary),
        )
        .query(SUMMARY_ADMIN)
        .returns(views::summary_schema),
        // ---- admin: pricing and settings ----
        route(
            M::GET,
            "/api/v1/admin/pricing",
            Admin,
            "pricing",
            "The price table in force (USD per million tokens)",
            h!(admin::get_pricing),
        )
        .returns(|| {
            out::obj(&[
                ("source", out::string()),
                ("items", out::array(out::any_object())),
            ])
        }),
        route(
            M::PUT,
            "/api/v1/admin/pricing",
            Admin,
            "pricing",
            "Replace the price table (LiteLLM model_prices_and_context_window.json format)",
            h!(admin::put_pricing),
        )
        .json_body(64 * MIB)
        .returns(|| out::obj(&[("source", out::string()), ("models", out::int())])),
        route(
            M::DELETE,
            "/api/v1/admin/pricing",
            Admin,
            "pricing",
            "Go back to the configured price table",
            h!(admin::reset_pricing),
        )
        .returns(|| out::obj(&[("source", out::string()), ("models", out::int())])),
        route(
            M::GET,
            "/api/v1/admin/settings",
            Admin,
            "settings",
            "Operator settings",
            h!(admin::get_settings),
        )
        .returns(settings_schema),
        route(
            M::PATCH,
            "/api/v1/admin/settings",
            Admin,
            "settings",
            "Change operator settings",
            h!(admin::patch_settings),
        )
        .body(SETTINGS_PATCH)
        .returns(settings_schema),
    ]
}

fn settings_schema() -> Value {
    out::obj(&[
        ("registration_enabled", out::boolean()),
        ("signup_balance_usd", out::usd()),
        ("user_key_groups", out::array(out::string())),
        ("session_ttl_hours", out::int()),
    ])
}

/// Every route of the API.
pub fn routes() -> &'static [ApiRoute] {
    &ROUTES
}
