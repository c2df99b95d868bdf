//! The admin and user HTTP API, end to end over real HTTP (axum and actix-web), on memory, SQLite
//! and Postgres: tenant isolation, access control, secrets never in responses, exact balance
//! adjustments, key rules (quota, expiry, IP allowlist, RPM) on the relay path, field-level
//! validation that changes nothing, and an OpenAPI document that lists exactly the served routes.

#[path = "../api_support.rs"]
mod api_support;

use std::collections::BTreeSet;

use api_support::*;
use serde_json::{Value, json};
use sub2api_core::api::schema::Ty;
use sub2api_core::api::{Access, BodySpec, routes};
use sub2api_core::money::Money;
use sub2api_tests::{Adapter, Storage, body};

fn usd(s: &str) -> Money {
    Money::parse_usd(s).unwrap()
}

fn money(v: &Value) -> Money {
    usd(v.as_str().unwrap_or_else(|| panic!("not an amount: {v}")))
}

/// A concrete path for a template (ids that may or may not exist).
fn concrete(path: &str) -> String {
    path.replace("{user_id}", "1")
        .replace("{id}", "1")
        .replace("{code}", "NOPE-NOPE-NOPE-NOPE")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anonymous_is_401_and_a_user_session_never_reaches_admin_routes() {
    for &setup in SETUPS {
        let h = ApiHarness::start(setup).await;
        let (_, token) = h.user_session("carol@example.com", "1.00").await;
        for r in routes() {
            if r.path == "/api/v1/auth/logout" {
                continue; // ends the session the loop uses; checked below
            }
            let path = concrete(r.path);
            let method = r.method.as_str();
            let body = if matches!(r.method, http::Method::GET | http::Method::DELETE) {
                Value::Null
            } else {
                json!({})
            };
            let anon = h.call(method, &path, None, body.clone()).await;
            let as_user = h.call(method, &path, Some(&token), body.clone()).await;
            let bogus = h
                .call(method, &path, Some("s2a_not-a-session"), body.clone())
                .await;
            match r.access {
                Access::Public => assert_ne!(anon.status, 401, "{setup:?} {r:?}: {}", anon.text),
                Access::User => {
                    assert_eq!(anon.status, 401, "{setup:?} {r:?}: {}", anon.text);
                    assert_eq!(anon.code(), Some("unauthorized"));
                    assert_eq!(bogus.status, 401, "{setup:?} {r:?}");
                    assert_ne!(as_user.status, 401, "{setup:?} {r:?}: {}", as_user.text);
                    assert_ne!(as_user.status, 403, "{setup:?} {r:?}: {}", as_user.text);
                    let as_admin = h.call(method, &path, Some(ADMIN_KEY), body.clone()).await;
                    assert_eq!(
                        as_admin.status, 403,
                        "{setup:?} {r:?}: the admin key is not a user session"
                    );
                }
                Access::Admin => {
                    assert_eq!(anon.status, 401, "{setup:?} {r:?}: {}", anon.text);
                    assert_eq!(bogus.status, 401, "{setup:?} {r:?}");
                    assert_eq!(as_user.status, 403, "{setup:?} {r:?}: {}", as_user.text);
                    assert_eq!(as_user.code(), Some("forbidden"));
                }
            }
        }
        // An admin user's session does reach admin routes.
        let admin_user = h
            .admin_ok(
                "POST",
                "/api/v1/admin/users",
                json!({"email": "ops@example.com", "password": PASSWORD, "is_admin": true}),
            )
            .await;
        assert_eq!(admin_user["is_admin"], true);
        let login = h
            .call(
                "POST",
                "/api/v1/auth/login",
                None,
                json!({"email": "ops@example.com", "password": PASSWORD}),
            )
            .await;
        let ops = login.body["token"].as_str().unwrap().to_owned();
        assert_eq!(
            h.call("GET", "/api/v1/admin/users", Some(&ops), Value::Null)
                .await
                .status,
            200
        );
        // Logging out ends the session; disabling a user ends theirs.
        assert_eq!(
            h.call("POST", "/api/v1/auth/logout", Some(&ops), Value::Null)
                .await
                .status,
            200
        );
        assert_eq!(
            h.call("GET", "/api/v1/admin/users", Some(&ops), Value::Null)
                .await
                .status,
            401
        );
        let me = h.user_ok(&token, "GET", "/api/v1/me", Value::Null).await;
        h.admin_ok(
            "POST",
            &format!("/api/v1/admin/users/{}/disable", me["id"]),
            Value::Null,
        )
        .await;
        assert_eq!(
            h.call("GET", "/api/v1/me", Some(&token), Value::Null)
                .await
                .status,
            401
        );
        h.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_never_reads_changes_or_disables_another_users_records() {
    for &setup in SETUPS {
        let h = ApiHarness::start(setup).await;
        let (alice, alice_t) = h.user_session("alice2@example.com", "5.00").await;
        let (bob, bob_t) = h.user_session("bob@example.com", "5.00").await;
        let ak = h
            .user_ok(
                &alice_t,
                "POST",
                "/api/v1/keys",
                json!({"group": "default", "name": "alice-key"}),
            )
            .await;
        let bk = h
            .user_ok(&bob_t, "POST", "/api/v1/keys", json!({"group": "default"}))
            .await;
        let (ak_id, bk_id) = (ak["id"].as_i64().unwrap(), bk["id"].as_i64().unwrap());
        assert_eq!(ak["user_id"], alice);
        // Usage: alice makes two requests, bob one.
        for _ in 0..2 {
            assert_eq!(
                h.messages(
                    ak["key"].as_str().unwrap(),
                    &body("claude-haiku-4-5", 16, false)
                )
                .await
                .0,
                200
            );
        }
        assert_eq!(
            h.messages(
                bk["key"].as_str().unwrap(),
                &body("claude-haiku-4-5", 16, true)
            )
            .await
            .0,
            200
        );
        h.settle().await;
        // A subscription and an order for alice.
        let g = h.admin_ok("GET", "/api/v1/admin/groups", Value::Null).await["items"][0]["id"]
            .as_i64()
            .unwrap();
        h.admin_ok(
            "PATCH",
            &format!("/api/v1/admin/groups/{g}"),
            json!({"subscription_windows": [{"kind": "day", "limit_usd": "2.00"}]}),
        )
        .await;
        h.admin_ok(
            "POST",
            "/api/v1/admin/subscriptions",
            json!({"user_id": alice, "group": "default", "days": 30}),
        )
        .await;
        if let Some(store) = &h.booted.store {
            store
                .insert_order(sub2api_sqlx::NewOrder {
                    out_trade_no: "ord-alice-1".into(),
                    user_id: sub2api_core::domain::UserId(alice),
                    provider: "stripe".into(),
                    amount_minor: 500,
                    currency: "usd".into(),
                    credit: Money::usd(5),
                    kind: sub2api_sqlx::OrderKind::Balance,
                    plan_id: None,
                    expires_at_ms: None,
                })
                .await
                .unwrap();
        }

        // Bob sees only his own.
        let keys = h.user_ok(&bob_t, "GET", "/api/v1/keys", Value::Null).await;
        assert_eq!(
            keys["items"]
                .as_array()
                .unwrap()
                .iter()
                .map(|k| k["id"].as_i64().unwrap())
                .collect::<Vec<_>>(),
            vec![bk_id]
        );
        let read = h
            .call(
                "GET",
                &format!("/api/v1/keys/{ak_id}"),
                Some(&bob_t),
                Value::Null,
            )
            .await;
        assert_eq!(read.status, 404, "{setup:?}: {}", read.text);
        let disable = h
            .call(
                "POST",
                &format!("/api/v1/keys/{ak_id}/disable"),
                Some(&bob_t),
                Value::Null,
            )
            .await;
        assert_eq!(disable.status, 404, "{setup:?}: {}", disable.text);
        let still = h
            .user_ok(
                &alice_t,
                "GET",
                &format!("/api/v1/keys/{ak_id}"),
                Value::Null,
            )
            .await;
        assert_eq!(
            still["enabled"], true,
            "{setup:?}: bob disabled alice's key"
        );
        assert_eq!(
            h.messages(
                ak["key"].as_str().unwrap(),
                &body("claude-haiku-4-5", 16, false)
            )
            .await
            .0,
            200
        );
        h.settle().await;

        let bob_usage = h.user_ok(&bob_t, "GET", "/api/v1/usage", Value::Null).await;
        let items = bob_usage["items"].as_array().unwrap();
        assert_eq!(items.len(), 1, "{setup:?}: {bob_usage}");
        assert!(
            items
                .iter()
                .all(|i| i["user_id"] == bob && i["key_id"] == bk_id)
        );
        assert!(
            items[0].get("account_id").is_none(),
            "users do not see upstream accounts"
        );
        let sneaky = h
            .user_ok(
                &bob_t,
                "GET",
                &format!("/api/v1/usage?key_id={ak_id}"),
                Value::Null,
            )
            .await;
        assert_eq!(
            sneaky["items"].as_array().unwrap().len(),
            0,
            "{setup:?}: bob read alice's usage by key id"
        );
        let summary = h
            .user_ok(&bob_t, "GET", "/api/v1/usage/summary?by=key", Value::Null)
            .await;
        assert_eq!(summary["total"]["requests"], 1, "{setup:?}: {summary}");
        let alice_usage = h
            .user_ok(&alice_t, "GET", "/api/v1/usage", Value::Null)
            .await;
        assert_eq!(
            alice_usage["items"].as_array().unwrap().len(),
            3,
            "{setup:?}"
        );
        assert_eq!(
            h.user_ok(&bob_t, "GET", "/api/v1/subscriptions", Value::Null)
                .await["items"],
            json!([])
        );
        assert_eq!(
            h.user_ok(&alice_t, "GET", "/api/v1/subscriptions", Value::Null)
                .await["items"]
                .as_array()
                .unwrap()
                .len(),
            1
        );
        assert_eq!(
            h.user_ok(&bob_t, "GET", "/api/v1/orders", Value::Null)
                .await["items"],
            json!([])
        );
        if h.booted.store.is_some() {
            let orders = h
                .user_ok(&alice_t, "GET", "/api/v1/orders", Value::Null)
                .await;
            assert_eq!(orders["items"][0]["out_trade_no"], "ord-alice-1");
        }
        // /me is bob.
        assert_eq!(
            h.user_ok(&bob_t, "GET", "/api/v1/me", Value::Null).await["id"],
            bob
        );
        // Bob disabling his own key works, and the relay refuses it at once.
        h.user_ok(
            &bob_t,
            "POST",
            &format!("/api/v1/keys/{bk_id}/disable"),
            Value::Null,
        )
        .await;
        assert_eq!(
            h.messages(
                bk["key"].as_str().unwrap(),
                &body("claude-haiku-4-5", 16, false)
            )
            .await
            .0,
            401
        );
        h.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_response_ever_contains_a_credential_a_password_hash_or_a_stored_key() {
    const UPSTREAM_SECRET: &str = "sk-ant-upstream-SECRET-4c1d9e2f7a";
    for &setup in SETUPS {
        let h = ApiHarness::start(setup).await;
        let mut seen = Vec::new();
        let acct = h
            .admin(
                "POST",
                "/api/v1/admin/accounts",
                json!({"name": "secret-acct", "api_key": UPSTREAM_SECRET, "base_url": h.vendor.base_url(), "groups": ["default"],
                       "options": {"proxy": "http://user:proxypass@127.0.0.1:9"}}),
            )
            .await;
        assert_eq!(acct.status, 201, "{}", acct.text);
        seen.push(acct.text.clone());
        let id = acct.body["id"].as_i64().unwrap();
        let (uid, token) = h.user_session("dave@example.com", "1.00").await;
        let created = h
            .user_ok(&token, "POST", "/api/v1/keys", json!({"group": "default"}))
            .await;
        let key = created["key"].as_str().unwrap().to_owned();
        assert!(created["hint"].as_str().unwrap().len() < key.len());
        let hash = sub2api_core::domain::KeyHash::of(&key).to_hex();
        let admin_key = h
            .admin_ok(
                "POST",
                "/api/v1/admin/keys",
                json!({"user_id": uid, "group": "default"}),
            )
            .await;
        let key2 = admin_key["key"].as_str().unwrap().to_owned();
        for (m, p, t) in [
            ("GET", "/api/v1/admin/accounts".to_owned(), ADMIN_KEY),
            ("GET", format!("/api/v1/admin/accounts/{id}"), ADMIN_KEY),
            ("GET", "/api/v1/admin/users".to_owned(), ADMIN_KEY),
            ("GET", format!("/api/v1/admin/users/{uid}"), ADMIN_KEY),
            ("GET", "/api/v1/admin/keys".to_owned(), ADMIN_KEY),
            (
                "GET",
                format!("/api/v1/admin/keys/{}", created["id"]),
                ADMIN_KEY,
            ),
            ("GET", "/api/v1/admin/settings".to_owned(), ADMIN_KEY),
            ("GET", "/api/v1/me".to_owned(), token.as_str()),
            ("GET", "/api/v1/keys".to_owned(), token.as_str()),
            (
                "GET",
                format!("/api/v1/keys/{}", created["id"]),
                token.as_str(),
            ),
        ] {
            let a = h.call(m, &p, Some(t), Value::Null).await;
            assert_eq!(a.status, 200, "{setup:?} {p}: {}", a.text);
            seen.push(a.text);
        }
        let patched = h
            .admin(
                "PATCH",
                &format!("/api/v1/admin/accounts/{id}"),
                json!({"priority": 7}),
            )
            .await;
        seen.push(patched.text);
        let tested = h
            .admin(
                "POST",
                &format!("/api/v1/admin/accounts/{id}/test"),
                json!({}),
            )
            .await;
        assert_eq!(tested.body["ok"], true, "{setup:?}: {}", tested.text);
        seen.push(tested.text);
        // A failing test shows the vendor's message, never the credential.
        h.vendor.set(
            sub2api_tests::mock::Scope::AllKeys,
            sub2api_tests::mock::Knob::Fault(sub2api_tests::mock::Fault::Unauthorized),
        );
        let failed = h
            .admin(
                "POST",
                &format!("/api/v1/admin/accounts/{id}/test"),
                json!({}),
            )
            .await;
        assert_eq!(failed.body["ok"], false, "{setup:?}: {}", failed.text);
        seen.push(failed.text);
        let login = h
            .call(
                "POST",
                "/api/v1/auth/login",
                None,
                json!({"email": "dave@example.com", "password": PASSWORD}),
            )
            .await;
        seen.push(login.text);
        for text in &seen {
            for secret in [
                UPSTREAM_SECRET,
                "proxypass",
                "$argon2",
                PASSWORD,
                hash.as_str(),
            ] {
                assert!(
                    !text.contains(secret),
                    "{setup:?}: a response contains `{secret}`: {text}"
                );
            }
            for k in [&key, &key2] {
                assert!(
                    !text.contains(k.as_str()),
                    "{setup:?}: a stored key was shown again: {text}"
                );
            }
        }
        h.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn balance_adjustments_are_exact_and_go_through_the_ledger() {
    for &setup in SETUPS {
        let h = ApiHarness::start(setup).await;
        let u = h
            .admin_ok(
                "POST",
                "/api/v1/admin/users",
                json!({"email": "erin@example.com", "balance_usd": "10.00"}),
            )
            .await;
        assert_eq!(u["balance_usd"], "10.00");
        let id = u["id"].as_i64().unwrap();
        let path = format!("/api/v1/admin/users/{id}/balance");
        let a = h
            .admin_ok(
                "POST",
                &path,
                json!({"amount_usd": "0.000000001", "reason": "one nano"}),
            )
            .await;
        assert_eq!(a["balance_usd"], "10.000000001");
        let a = h.admin_ok("POST", &path, json!({"amount_usd": "-3.5", "reason": "refund clawback", "idempotency_key": "op-1"})).await;
        assert_eq!(
            (a["balance_usd"].as_str(), a["replayed"].as_bool()),
            (Some("6.500000001"), Some(false))
        );
        let again = h.admin_ok("POST", &path, json!({"amount_usd": "-3.5", "reason": "refund clawback", "idempotency_key": "op-1"})).await;
        assert_eq!(
            (again["balance_usd"].as_str(), again["replayed"].as_bool()),
            (Some("6.500000001"), Some(true))
        );
        // Never below zero, never a float, never zero: 400 on the field, nothing changed.
        for bad in [
            json!({"amount_usd": "-6.500000002", "reason": "x"}),
            json!({"amount_usd": 1.5, "reason": "x"}),
            json!({"amount_usd": "0", "reason": "x"}),
        ] {
            let r = h.admin("POST", &path, bad.clone()).await;
            assert_eq!(
                (r.status, r.field()),
                (400, Some("amount_usd")),
                "{setup:?} {bad}: {}",
                r.text
            );
        }
        let u = h
            .admin_ok("GET", &format!("/api/v1/admin/users/{id}"), Value::Null)
            .await;
        assert_eq!(money(&u["balance_usd"]), usd("6.500000001"), "{setup:?}");
        if let Some(store) = &h.booted.store {
            assert!(
                store.verify_ledger().await.unwrap().is_empty(),
                "{setup:?}: the journal sums to every balance"
            );
        }
        assert_eq!(
            h.admin(
                "POST",
                "/api/v1/admin/users/999999/balance",
                json!({"amount_usd": "1", "reason": "x"})
            )
            .await
            .status,
            404
        );
        h.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_quota_expiry_ip_allowlist_and_rpm_are_enforced_on_the_relay_path() {
    for &setup in SETUPS {
        let h = ApiHarness::start(setup).await;
        let (uid, token) = h.user_session("frank@example.com", "10.00").await;
        // Every request costs exactly 0.0012 USD (1000 in at $1/M + 40 out at $5/M on haiku) and
        // holds about 0.00147 (its body and 64 max tokens).
        h.vendor.set(
            sub2api_tests::mock::Scope::AllKeys,
            sub2api_tests::mock::Knob::Usage(sub2api_tests::usage(1000, 0, 0, 0, 40)),
        );
        // Sequentially: 3 requests fit a 0.005 quota; the 4th's hold does not (0.0014 left).
        let q = h
            .user_ok(
                &token,
                "POST",
                "/api/v1/keys",
                json!({"group": "default", "quota_usd": "0.005"}),
            )
            .await;
        for i in 0..4 {
            let (status, v) = h
                .messages(
                    q["key"].as_str().unwrap(),
                    &body("claude-haiku-4-5", 64, i % 2 == 1),
                )
                .await;
            let want = if i < 3 { 200 } else { 429 };
            assert_eq!(status, want, "{setup:?} request {i}: {v}");
        }
        let q = h
            .user_ok(
                &token,
                "GET",
                &format!("/api/v1/keys/{}", q["id"]),
                Value::Null,
            )
            .await;
        assert_eq!(
            (q["quota_used_usd"].as_str(), q["quota_usd"].as_str()),
            (Some("0.0036"), Some("0.005")),
            "{setup:?}"
        );

        // Concurrently: the quota is never overspent, holds included.
        let k = h
            .user_ok(
                &token,
                "POST",
                "/api/v1/keys",
                json!({"group": "default", "quota_usd": "0.005"}),
            )
            .await;
        let key = k["key"].as_str().unwrap().to_owned();
        let mut tasks = Vec::new();
        for i in 0..12 {
            let client = h.client.clone();
            let url = h.url("/v1/messages");
            let key = key.clone();
            tasks.push(tokio::spawn(async move {
                let res = client
                    .post(url)
                    .header("x-api-key", key)
                    .body(body("claude-haiku-4-5", 64, i % 2 == 0).to_string())
                    .send()
                    .await
                    .unwrap();
                let status = res.status().as_u16();
                (status, res.text().await.unwrap())
            }));
        }
        let (mut ok, mut refused) = (0, 0);
        for t in tasks {
            let (status, text) = t.await.unwrap();
            match status {
                200 => ok += 1,
                429 => {
                    refused += 1;
                    assert!(
                        text.contains("rate_limit_error") && text.contains("quota"),
                        "{setup:?}: {text}"
                    );
                }
                other => panic!("{setup:?}: unexpected {other}: {text}"),
            }
        }
        assert!(
            (1..=4).contains(&ok) && refused >= 8,
            "{setup:?}: {ok} admitted, {refused} refused"
        );
        h.settle().await;
        let after = h
            .user_ok(
                &token,
                "GET",
                &format!("/api/v1/keys/{}", k["id"]),
                Value::Null,
            )
            .await;
        let used = money(&after["quota_used_usd"]);
        assert!(used <= usd("0.005"), "{setup:?}: quota overspent: {used}");
        let usage = h
            .user_ok(
                &token,
                "GET",
                &format!("/api/v1/usage?key_id={}", k["id"]),
                Value::Null,
            )
            .await;
        let rows = usage["items"].as_array().unwrap();
        assert_eq!(
            rows.len(),
            ok,
            "{setup:?}: one usage row per admitted request"
        );
        let sum = rows
            .iter()
            .fold(Money::ZERO, |a, r| a.saturating_add(money(&r["cost_usd"])));
        assert_eq!(
            used, sum,
            "{setup:?}: quota used is exactly the sum of the charges"
        );
        // The wallet paid exactly the same.
        assert_eq!(used, Money::from_nanos(1_200_000 * ok as i64), "{setup:?}");
        let me = h.user_ok(&token, "GET", "/api/v1/me", Value::Null).await;
        assert_eq!(
            money(&me["balance_usd"]),
            Money::usd(10)
                .checked_sub(sum)
                .unwrap()
                .checked_sub(usd("0.0036"))
                .unwrap(),
            "{setup:?}"
        );
        assert_eq!(
            money(&me["held_usd"]),
            Money::ZERO,
            "{setup:?}: no hold left behind"
        );
        // Raising the quota lets the key work again, at once.
        h.admin_ok(
            "PATCH",
            &format!("/api/v1/admin/keys/{}", k["id"]),
            json!({"quota_usd": "1.00"}),
        )
        .await;
        assert_eq!(
            h.messages(&key, &body("claude-haiku-4-5", 16, false))
                .await
                .0,
            200,
            "{setup:?}"
        );

        // Expiry: an expired key is refused with 401.
        let e = h
            .admin_ok(
                "POST",
                "/api/v1/admin/keys",
                json!({"user_id": uid, "group": "default", "expires_at": "2999-01-01T00:00:00Z"}),
            )
            .await;
        assert_eq!(e["expires_at"], "2999-01-01T00:00:00.000Z");
        let ekey = e["key"].as_str().unwrap().to_owned();
        assert_eq!(
            h.messages(&ekey, &body("claude-haiku-4-5", 16, false))
                .await
                .0,
            200
        );
        let past = sub2api_core::account_provider::now_ms() - 1000;
        h.api
            .parts()
            .store
            .update_key(
                sub2api_core::domain::KeyId(e["id"].as_i64().unwrap()),
                sub2api_core::api::store::KeyPatch {
                    expires_at_ms: Some(Some(past)),
                    ..Default::default()
                },
            )
            .await
            .unwrap();
        h.booted.relay.key_cache().clear();
        let (status, v) = h
            .messages(&ekey, &body("claude-haiku-4-5", 16, false))
            .await;
        assert_eq!(status, 401, "{setup:?}: {v}");
        assert!(
            v["error"]["message"].as_str().unwrap().contains("expired"),
            "{v}"
        );
        // An expiry in the past is refused at creation.
        let bad = h
            .admin(
                "POST",
                "/api/v1/admin/keys",
                json!({"user_id": uid, "group": "default", "expires_at": "2001-01-01"}),
            )
            .await;
        assert_eq!((bad.status, bad.field()), (400, Some("expires_at")));

        // IP allowlist: the client is 127.0.0.1.
        let far = h
            .user_ok(
                &token,
                "POST",
                "/api/v1/keys",
                json!({"group": "default", "ip_allowlist": ["10.9.9.9", "2001:db8::/32"]}),
            )
            .await;
        let (status, v) = h
            .messages(
                far["key"].as_str().unwrap(),
                &body("claude-haiku-4-5", 16, false),
            )
            .await;
        assert_eq!(status, 403, "{setup:?}: {v}");
        assert_eq!(v["error"]["type"], "permission_error");
        let near = h
            .user_ok(
                &token,
                "POST",
                "/api/v1/keys",
                json!({"group": "default", "ip_allowlist": ["127.0.0.0/8"]}),
            )
            .await;
        assert_eq!(
            h.messages(
                near["key"].as_str().unwrap(),
                &body("claude-haiku-4-5", 16, false)
            )
            .await
            .0,
            200,
            "{setup:?}"
        );
        let bad = h
            .call(
                "POST",
                "/api/v1/keys",
                Some(&token),
                json!({"group": "default", "ip_allowlist": ["1.2.3.4", "nope"]}),
            )
            .await;
        assert_eq!((bad.status, bad.field()), (400, Some("ip_allowlist[1]")));

        // RPM: the third request in the minute is refused.
        let r = h
            .user_ok(
                &token,
                "POST",
                "/api/v1/keys",
                json!({"group": "default", "rpm": 2, "concurrency": 1}),
            )
            .await;
        let rk = r["key"].as_str().unwrap();
        assert_eq!(
            h.messages(rk, &body("claude-haiku-4-5", 16, false)).await.0,
            200
        );
        assert_eq!(
            h.messages(rk, &body("claude-haiku-4-5", 16, false)).await.0,
            200
        );
        assert_eq!(
            h.messages(rk, &body("claude-haiku-4-5", 16, false)).await.0,
            429,
            "{setup:?}"
        );
        h.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_per_user_rate_override_prices_the_relay_path_exactly() {
    for &setup in SETUPS {
        let h = ApiHarness::start(setup).await;
        let (uid, token) = h.user_session("gina@example.com", "10.00").await;
        let k = h
            .user_ok(&token, "POST", "/api/v1/keys", json!({"group": "default"}))
            .await;
        let key = k["key"].as_str().unwrap().to_owned();
        h.vendor.set(
            sub2api_tests::mock::Scope::AllKeys,
            sub2api_tests::mock::Knob::Usage(sub2api_tests::usage(1000, 0, 0, 0, 500)),
        );
        assert_eq!(
            h.messages(&key, &body("claude-sonnet-4-5", 1024, false))
                .await
                .0,
            200
        );
        let g = h.admin_ok("GET", "/api/v1/admin/groups", Value::Null).await["items"][0]["id"]
            .as_i64()
            .unwrap();
        let group = h
            .admin_ok(
                "PUT",
                &format!("/api/v1/admin/groups/{g}/user-rates/{uid}"),
                json!({"rate_multiplier": "2.5"}),
            )
            .await;
        assert_eq!(
            group["user_rates"],
            json!([{"user_id": uid, "rate_multiplier": "2.5"}])
        );
        assert_eq!(
            h.messages(&key, &body("claude-sonnet-4-5", 1024, false))
                .await
                .0,
            200
        );
        h.settle().await;
        let usage = h.user_ok(&token, "GET", "/api/v1/usage", Value::Null).await;
        let costs: Vec<Money> = usage["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| money(&r["cost_usd"]))
            .collect();
        // sonnet: 1000 in at $3/M + 500 out at $15/M = 0.0105; at 2.5x = 0.02625 (newest first).
        assert_eq!(costs, vec![usd("0.02625"), usd("0.0105")], "{setup:?}");
        let groups = h
            .user_ok(&token, "GET", "/api/v1/groups", Value::Null)
            .await;
        assert_eq!(groups["items"][0]["rate_multiplier"], "2.5");
        h.stop().await;
    }
}

/// A value of the wrong type for a field.
fn wrong(ty: Ty) -> Value {
    match ty {
        Ty::Str { .. } => json!(123),
        Ty::Email => json!("not-an-email"),
        Ty::Password => json!("short"),
        Ty::Usd { .. } => json!(1.5),
        Ty::Multiplier => json!("fast"),
        Ty::Int { .. } => json!("many"),
        Ty::Bool => json!("yes"),
        Ty::Time => json!("soon"),
        Ty::Enum(_) => json!("none-of-these"),
        Ty::StrList { .. } => json!("not a list"),
        Ty::ObjList { .. } => json!([1, 2]),
        Ty::Object => json!([]),
        Ty::Id => json!(0),
    }
}

/// Everything the API can show, for "nothing changed" comparisons.
async fn snapshot(h: &ApiHarness, token: &str) -> Vec<Value> {
    let mut out = Vec::new();
    for p in [
        "/api/v1/admin/users",
        "/api/v1/admin/keys",
        "/api/v1/admin/groups",
        "/api/v1/admin/plans",
        "/api/v1/admin/subscriptions",
        "/api/v1/admin/redeem-codes",
        "/api/v1/admin/settings",
        "/api/v1/admin/orders",
    ] {
        out.push(h.admin_ok("GET", p, Value::Null).await);
    }
    let mut accounts = h
        .admin_ok("GET", "/api/v1/admin/accounts", Value::Null)
        .await;
    for a in accounts["items"].as_array_mut().unwrap() {
        a.as_object_mut().unwrap().remove("status");
    }
    out.push(accounts);
    out.push(h.user_ok(token, "GET", "/api/v1/me", Value::Null).await);
    out.push(h.user_ok(token, "GET", "/api/v1/keys", Value::Null).await);
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_input_on_every_endpoint_is_a_400_naming_the_field_and_changes_nothing() {
    for &setup in SETUPS {
        let h = ApiHarness::start(setup).await;
        let (uid, token) = h.user_session("hank@example.com", "3.00").await;
        let key = h
            .user_ok(&token, "POST", "/api/v1/keys", json!({"group": "default"}))
            .await;
        let before = snapshot(&h, &token).await;
        let mut checked = 0;
        for r in routes() {
            let tok = match r.access {
                Access::Public => None,
                Access::User => Some(token.as_str()),
                Access::Admin => Some(ADMIN_KEY),
            };
            let path = r
                .path
                .replace("{user_id}", &uid.to_string())
                .replace("{id}", &key["id"].to_string())
                .replace("{code}", "NOPE");
            let m = r.method.as_str();
            // Path ids that are not ids.
            if r.path.contains("{id}") {
                let a = h
                    .call(
                        m,
                        &r.path.replace("{id}", "abc").replace("{user_id}", "1"),
                        tok,
                        json!({}),
                    )
                    .await;
                assert_eq!(
                    (a.status, a.field()),
                    (400, Some("id")),
                    "{setup:?} {r:?}: {}",
                    a.text
                );
            }
            // Unknown query parameters.
            let a = h
                .call(m, &format!("{path}?bogus=1"), tok, Value::Null)
                .await;
            assert_eq!(
                (a.status, a.field()),
                (400, Some("bogus")),
                "{setup:?} {r:?}: {}",
                a.text
            );
            for q in r.query {
                if matches!(q.ty, Ty::Str { .. }) {
                    continue;
                }
                // Other required parameters valid, this one not.
                let mut qs: Vec<String> = r
                    .query
                    .iter()
                    .filter(|o| o.required && o.name != q.name)
                    .map(|o| format!("{}=day", o.name))
                    .collect();
                qs.push(format!("{}=%00not-valid%00", q.name));
                let a = h
                    .call(m, &format!("{path}?{}", qs.join("&")), tok, Value::Null)
                    .await;
                assert_eq!(
                    (a.status, a.field()),
                    (400, Some(q.name)),
                    "{setup:?} {r:?} ?{}: {}",
                    q.name,
                    a.text
                );
            }
            let fields = match r.body {
                BodySpec::Fields(f) => f,
                BodySpec::Json => {
                    let a = h.call(m, &path, tok, json!([1, 2])).await;
                    assert_eq!(a.status, 400, "{setup:?} {r:?}");
                    continue;
                }
                BodySpec::None => {
                    if !matches!(r.method, http::Method::GET | http::Method::DELETE) {
                        let a = h.call(m, &path, tok, json!({"bogus": 1})).await;
                        assert_eq!(
                            (a.status, a.field()),
                            (400, Some("bogus")),
                            "{setup:?} {r:?}: {}",
                            a.text
                        );
                    }
                    continue;
                }
            };
            // Not JSON, not an object, an unknown field.
            let raw = h
                .client
                .request(r.method.clone(), h.url(&path))
                .header("content-type", "application/json")
                .body("{not json");
            let raw = match tok {
                Some(t) => raw.bearer_auth(t),
                None => raw,
            };
            assert_eq!(
                raw.send().await.unwrap().status().as_u16(),
                400,
                "{setup:?} {r:?}"
            );
            let a = h.call(m, &path, tok, json!({"bogus_field": 1})).await;
            assert_eq!(
                (a.status, a.field()),
                (400, Some("bogus_field")),
                "{setup:?} {r:?}: {}",
                a.text
            );
            // Every field of the wrong type (with every other required field valid-looking: the
            // wrong one must be named whatever the order of checks).
            for f in fields {
                let mut b = serde_json::Map::new();
                b.insert(f.name.to_owned(), wrong(f.ty));
                let a = h.call(m, &path, tok, Value::Object(b)).await;
                assert_eq!(a.status, 400, "{setup:?} {r:?} {}: {}", f.name, a.text);
                assert!(
                    a.field().is_some(),
                    "{setup:?} {r:?} {}: no field in {}",
                    f.name,
                    a.text
                );
                if !fields.iter().any(|o| o.required && o.name != f.name) {
                    assert_eq!(a.field(), Some(f.name), "{setup:?} {r:?}: {}", a.text);
                }
                checked += 1;
            }
            // A missing required field is named.
            if let Some(req) = fields.iter().find(|f| f.required) {
                let a = h.call(m, &path, tok, json!({})).await;
                assert_eq!(a.status, 400, "{setup:?} {r:?}: {}", a.text);
                assert_eq!(a.field(), Some(req.name), "{setup:?} {r:?}: {}", a.text);
            }
        }
        assert!(checked > 50, "{checked}");
        // Inputs that pass the types but not the rules.
        for (m, p, t, b, field) in [
            (
                "POST",
                "/api/v1/keys",
                Some(token.as_str()),
                json!({"group": "no-such-group"}),
                "group",
            ),
            (
                "POST",
                "/api/v1/admin/keys",
                Some(ADMIN_KEY),
                json!({"user_id": 999999, "group": "default"}),
                "user_id",
            ),
            (
                "POST",
                "/api/v1/admin/users",
                Some(ADMIN_KEY),
                json!({"email": "HANK@example.com"}),
                "email",
            ),
            (
                "POST",
                "/api/v1/auth/register",
                None,
                json!({"email": "hank@example.com", "password": PASSWORD}),
                "email",
            ),
            (
                "POST",
                "/api/v1/admin/accounts",
                Some(ADMIN_KEY),
                json!({"name": "x", "api_key": "k", "base_url": "ftp://x"}),
                "base_url",
            ),
            (
                "POST",
                "/api/v1/admin/accounts",
                Some(ADMIN_KEY),
                json!({"name": "x", "api_key": "k", "groups": ["nope"]}),
                "groups[0]",
            ),
            (
                "POST",
                "/api/v1/admin/accounts",
                Some(ADMIN_KEY),
                json!({"name": "x"}),
                "api_key",
            ),
            (
                "POST",
                "/api/v1/admin/accounts",
                Some(ADMIN_KEY),
                json!({"name": "x", "api_key": "k", "options": {"bogus": 1}}),
                "options",
            ),
            (
                "POST",
                "/api/v1/admin/groups",
                Some(ADMIN_KEY),
                json!({"name": "g2", "subscription_windows": [{"kind": "hourly", "limit_usd": "1"}]}),
                "subscription_windows[0].kind",
            ),
            (
                "POST",
                "/api/v1/admin/groups",
                Some(ADMIN_KEY),
                json!({"name": "g2", "subscription_windows": [{"kind": "rolling", "limit_usd": "1"}]}),
                "subscription_windows[0].hours",
            ),
            (
                "POST",
                "/api/v1/admin/groups",
                Some(ADMIN_KEY),
                json!({"name": "g2", "subscription_windows": [{"kind": "day", "limit_usd": 2.5}]}),
                "subscription_windows[0].limit_usd",
            ),
            (
                "POST",
                "/api/v1/admin/redeem-codes",
                Some(ADMIN_KEY),
                json!({"kind": "balance"}),
                "amount_usd",
            ),
            (
                "POST",
                "/api/v1/admin/redeem-codes",
                Some(ADMIN_KEY),
                json!({"kind": "plan", "plan_id": 999}),
                "plan_id",
            ),
            (
                "POST",
                "/api/v1/admin/subscriptions",
                Some(ADMIN_KEY),
                json!({"user_id": uid}),
                "plan_id",
            ),
            (
                "PATCH",
                "/api/v1/admin/settings",
                Some(ADMIN_KEY),
                json!({"user_key_groups": ["nope"]}),
                "user_key_groups[0]",
            ),
            (
                "PUT",
                "/api/v1/admin/pricing",
                Some(ADMIN_KEY),
                json!({"m": {"input_cost_per_token": "lots"}}),
                "body",
            ),
            (
                "POST",
                "/api/v1/redeem",
                Some(token.as_str()),
                json!({"code": "AAAA-BBBB-CCCC-DDDD"}),
                "code",
            ),
            (
                "POST",
                "/api/v1/me/password",
                Some(token.as_str()),
                json!({"current_password": "wrong-password", "new_password": "a-new-password"}),
                "current_password",
            ),
            (
                "GET",
                "/api/v1/admin/usage?from=2025-01-02&to=2025-01-01",
                Some(ADMIN_KEY),
                Value::Null,
                "to",
            ),
            (
                "GET",
                "/api/v1/admin/usage?limit=0",
                Some(ADMIN_KEY),
                Value::Null,
                "limit",
            ),
        ] {
            let a = h.call(m, p, t, b.clone()).await;
            assert_eq!(
                (a.status, a.field()),
                (400, Some(field)),
                "{setup:?} {m} {p} {b}: {}",
                a.text
            );
        }
        let after = snapshot(&h, &token).await;
        assert_eq!(
            before, after,
            "{setup:?}: a refused request changed something"
        );
        h.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openapi_document_lists_exactly_the_routes_the_router_serves() {
    for &setup in SETUPS {
        let h = ApiHarness::start(setup).await;
        let doc = h
            .call("GET", "/api/v1/openapi.json", None, Value::Null)
            .await;
        assert_eq!(doc.status, 200);
        assert_eq!(doc.body["openapi"], "3.1.0");
        let mut documented = BTreeSet::new();
        for (path, item) in doc.body["paths"].as_object().unwrap() {
            for (method, op) in item.as_object().unwrap() {
                documented.insert((method.to_ascii_uppercase(), path.clone()));
                assert!(op["summary"].as_str().is_some_and(|s| !s.is_empty()));
                assert!(
                    op["responses"]
                        .as_object()
                        .unwrap()
                        .keys()
                        .any(|k| k.starts_with('2'))
                );
            }
        }
        let table: BTreeSet<(String, String)> = routes()
            .iter()
            .map(|r| (r.method.as_str().to_owned(), r.path.to_owned()))
            .collect();
        assert_eq!(documented, table, "{setup:?}");
        // Every documented route is served over HTTP by the adapter (not the router's 404/405),
        for (method, path) in &documented {
            let a = h
                .admin(
                    method,
                    &concrete(path),
                    if method == "GET" || method == "DELETE" {
                        Value::Null
                    } else {
                        json!({})
                    },
                )
                .await;
            assert!(
                a.code() != Some("route_not_found") && a.status != 405,
                "{setup:?} {method} {path}: {}",
                a.text
            );
            assert!(
                a.body.is_object(),
                "{setup:?} {method} {path}: not JSON: {}",
                a.text
            );
        }
        // ... and nothing else under /api/v1 is.
        for (method, path) in [
            ("GET", "/api/v1/admin/nothing"),
            ("POST", "/api/v1/keys/1/explode"),
            ("GET", "/api/v1"),
        ] {
            let a = h.admin(method, path, Value::Null).await;
            assert!(a.status == 404, "{setup:?} {method} {path}: {}", a.text);
        }
        let wrong_method = h.admin("DELETE", "/api/v1/admin/users", Value::Null).await;
        assert_eq!(
            (wrong_method.status, wrong_method.code()),
            (405, Some("method_not_allowed"))
        );
        h.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operators_manage_everything_over_the_api() {
    for &setup in SETUPS {
        let h = ApiHarness::start(setup).await;
        let base = h.vendor.base_url();
        // Groups: create with billing and windows, per-user rates, delete.
        let g = h
            .admin_ok(
                "POST",
                "/api/v1/admin/groups",
                json!({"name": "pro", "rate_multiplier": "1.25", "billing_mode": "both",
                       "subscription_windows": [{"kind": "rolling", "hours": 5, "limit_usd": "5"}, {"kind": "week", "limit_usd": "20"}],
                       "subscription_days": 30}),
            )
            .await;
        assert_eq!(
            (g["billing_mode"].as_str(), g["rate_multiplier"].as_str()),
            (Some("both"), Some("1.25"))
        );
        assert_eq!(
            g["subscription_windows"][0],
            json!({"kind": "rolling", "hours": 5.0, "minutes": 300, "limit_usd": "5.00"})
        );
        let gid = g["id"].as_i64().unwrap();
        assert_eq!(
            h.admin("POST", "/api/v1/admin/groups", json!({"name": "pro"}))
                .await
                .status,
            409
        );
        let g = h
            .admin_ok(
                "PATCH",
                &format!("/api/v1/admin/groups/{gid}"),
                json!({"billing_mode": "subscription"}),
            )
            .await;
        assert_eq!(g["billing_mode"], "subscription");
        let tmp = h
            .admin_ok(
                "POST",
                "/api/v1/admin/groups",
                json!({"name": "tmp", "platform": "openai"}),
            )
            .await;
        h.admin_ok(
            "DELETE",
            &format!("/api/v1/admin/groups/{}", tmp["id"]),
            Value::Null,
        )
        .await;
        assert_eq!(
            h.admin(
                "GET",
                &format!("/api/v1/admin/groups/{}", tmp["id"]),
                Value::Null
            )
            .await
            .status,
            404
        );

        // Accounts: add, list (no credentials), disable/enable, test, clear cooldown, delete.
        let a = h
            .admin_ok("POST", "/api/v1/admin/accounts", json!({"name": "pro-1", "api_key": "acct-pro-1", "base_url": base, "groups": ["pro"], "priority": 10}))
            .await;
        let aid = a["id"].as_i64().unwrap();
        assert_eq!(
            (a["groups"].clone(), a["status"]["state"].clone()),
            (json!(["pro"]), json!("ready"))
        );
        assert_eq!(
            h.admin(
                "POST",
                "/api/v1/admin/accounts",
                json!({"name": "pro-1", "api_key": "x"})
            )
            .await
            .status,
            409
        );
        let list = h
            .admin_ok("GET", "/api/v1/admin/accounts", Value::Null)
            .await;
        assert!(list["items"].as_array().unwrap().len() >= 4);
        assert_eq!(
            h.admin_ok(
                "POST",
                &format!("/api/v1/admin/accounts/{aid}/disable"),
                Value::Null
            )
            .await["enabled"],
            false
        );
        assert_eq!(
            h.admin_ok(
                "POST",
                &format!("/api/v1/admin/accounts/{aid}/enable"),
                Value::Null
            )
            .await["enabled"],
            true
        );
        let t = h
            .admin_ok(
                "POST",
                &format!("/api/v1/admin/accounts/{aid}/test"),
                json!({}),
            )
            .await;
        assert_eq!(
            (t["ok"].as_bool(), t["status"].as_i64()),
            (Some(true), Some(200)),
            "{t}"
        );
        assert_eq!(
            h.admin_ok(
                "POST",
                &format!("/api/v1/admin/accounts/{aid}/clear-cooldown"),
                Value::Null
            )
            .await["status"]["state"],
            "ready"
        );
        let p = h
            .admin_ok(
                "PATCH",
                &format!("/api/v1/admin/accounts/{aid}"),
                json!({"concurrency": 9, "api_key": "acct-pro-2"}),
            )
            .await;
        assert_eq!(p["concurrency"], 9);
        h.admin_ok(
            "DELETE",
            &format!("/api/v1/admin/accounts/{aid}"),
            Value::Null,
        )
        .await;
        assert_eq!(
            h.admin("GET", &format!("/api/v1/admin/accounts/{aid}"), Value::Null)
                .await
                .status,
            404
        );
        // A group with a plan cannot be deleted.
        assert_eq!(
            h.admin(
                "DELETE",
                &format!("/api/v1/admin/groups/{gid}"),
                Value::Null
            )
            .await
            .status,
            409
        );

        // Plans and subscriptions: assign, extend, revoke.
        let plan = h
            .admin_ok("POST", "/api/v1/admin/plans", json!({"name": "daily-2", "group": "default", "windows": [{"kind": "day", "limit_usd": "2"}], "duration_days": 7}))
            .await;
        let u = h
            .admin_ok(
                "POST",
                "/api/v1/admin/users",
                json!({"email": "ivy@example.com", "password": PASSWORD}),
            )
            .await;
        let uid = u["id"].as_i64().unwrap();
        let s = h
            .admin_ok(
                "POST",
                "/api/v1/admin/subscriptions",
                json!({"user_id": uid, "plan_id": plan["id"]}),
            )
            .await;
        assert_eq!(s["status"], "active");
        let sid = s["id"].as_i64().unwrap();
        let ext = h
            .admin_ok(
                "POST",
                &format!("/api/v1/admin/subscriptions/{sid}/extend"),
                json!({"days": 3}),
            )
            .await;
        let extended =
            sub2api_core::api::schema::parse_time_str(ext["expires_at"].as_str().unwrap()).unwrap()
                - sub2api_core::api::schema::parse_time_str(s["expires_at"].as_str().unwrap())
                    .unwrap();
        assert_eq!(extended, 3 * 86_400_000);
        assert_eq!(
            h.admin_ok(
                "POST",
                &format!("/api/v1/admin/subscriptions/{sid}/revoke"),
                Value::Null
            )
            .await["status"],
            "revoked"
        );
        assert_eq!(
            h.admin(
                "POST",
                &format!("/api/v1/admin/subscriptions/{sid}/extend"),
                json!({"days": 3})
            )
            .await
            .status,
            409
        );

        // Redeem codes: generate, redeem once (exact), expire.
        let codes = h
            .admin_ok(
                "POST",
                "/api/v1/admin/redeem-codes",
                json!({"kind": "balance", "amount_usd": "1.234567891", "count": 2}),
            )
            .await;
        let items = codes["items"].as_array().unwrap();
        assert_eq!(items.len(), 2);
        let login = h
            .call(
                "POST",
                "/api/v1/auth/login",
                None,
                json!({"email": "ivy@example.com", "password": PASSWORD}),
            )
            .await;
        let token = login.body["token"].as_str().unwrap().to_owned();
        let r = h
            .user_ok(
                &token,
                "POST",
                "/api/v1/redeem",
                json!({"code": items[0]["code"].as_str().unwrap().to_lowercase()}),
            )
            .await;
        assert_eq!(
            (r["amount_usd"].as_str(), r["balance_usd"].as_str()),
            (Some("1.234567891"), Some("1.234567891"))
        );
        let twice = h
            .call(
                "POST",
                "/api/v1/redeem",
                Some(&token),
                json!({"code": items[0]["code"]}),
            )
            .await;
        assert_eq!((twice.status, twice.field()), (400, Some("code")));
        let expired = h
            .admin_ok(
                "POST",
                &format!(
                    "/api/v1/admin/redeem-codes/{}/expire",
                    items[1]["code"].as_str().unwrap()
                ),
                Value::Null,
            )
            .await;
        assert_eq!(expired["status"], "expired");
        let late = h
            .call(
                "POST",
                "/api/v1/redeem",
                Some(&token),
                json!({"code": items[1]["code"]}),
            )
            .await;
        assert_eq!(
            (late.status, late.field()),
            (400, Some("code")),
            "{}",
            late.text
        );
        let listed = h
            .admin_ok(
                "GET",
                &format!(
                    "/api/v1/admin/redeem-codes?batch_id={}",
                    codes["batch_id"].as_str().unwrap()
                ),
                Value::Null,
            )
            .await;
        assert_eq!(listed["items"].as_array().unwrap().len(), 2);
        let plan_codes = h
            .admin_ok(
                "POST",
                "/api/v1/admin/redeem-codes",
                json!({"kind": "plan", "plan_id": plan["id"], "days": 10}),
            )
            .await;
        let r = h
            .user_ok(
                &token,
                "POST",
                "/api/v1/redeem",
                json!({"code": plan_codes["items"][0]["code"]}),
            )
            .await;
        assert_eq!(r["kind"], "plan");
        assert_eq!(
            h.user_ok(&token, "GET", "/api/v1/subscriptions", Value::Null)
                .await["items"]
                .as_array()
                .unwrap()
                .len(),
            2
        );

        // Users: list pages, patch, password change, login rate limit.
        let page = h
            .admin_ok("GET", "/api/v1/admin/users?limit=1&offset=0", Value::Null)
            .await;
        assert_eq!(
            (
                page["items"].as_array().unwrap().len(),
                page["has_more"].as_bool()
            ),
            (1, Some(true))
        );
        let pw = h
            .user_ok(
                &token,
                "POST",
                "/api/v1/me/password",
                json!({"current_password": PASSWORD, "new_password": "another-password"}),
            )
            .await;
        assert!(pw["token"].as_str().is_some());
        assert_eq!(
            h.call("GET", "/api/v1/me", Some(&token), Value::Null)
                .await
                .status,
            401,
            "old sessions end"
        );
        let wrong = h
            .call(
                "POST",
                "/api/v1/auth/login",
                None,
                json!({"email": "ivy@example.com", "password": PASSWORD}),
            )
            .await;
        assert_eq!(wrong.status, 401);
        for _ in 0..9 {
            h.call(
                "POST",
                "/api/v1/auth/login",
                None,
                json!({"email": "ivy@example.com", "password": "guess-guess"}),
            )
            .await;
        }
        let limited = h
            .call(
                "POST",
                "/api/v1/auth/login",
                None,
                json!({"email": "ivy@example.com", "password": "another-password"}),
            )
            .await;
        assert_eq!(
            limited.status, 429,
            "{setup:?}: login is rate limited: {}",
            limited.text
        );

        // Usage: list with filters and aggregates per day, model and user.
        let (_, t2) = h.user_session("jack@example.com", "2.00").await;
        let k = h
            .user_ok(&t2, "POST", "/api/v1/keys", json!({"group": "default"}))
            .await;
        for model in ["claude-haiku-4-5", "claude-sonnet-4-5", "claude-haiku-4-5"] {
            assert_eq!(
                h.messages(k["key"].as_str().unwrap(), &body(model, 16, false))
                    .await
                    .0,
                200
            );
        }
        h.settle().await;
        let all = h
            .admin_ok(
                "GET",
                "/api/v1/admin/usage?model=claude-haiku-4-5",
                Value::Null,
            )
            .await;
        assert_eq!(all["items"].as_array().unwrap().len(), 2);
        assert!(all["items"][0]["account_id"].as_i64().is_some());
        let paged = h
            .admin_ok("GET", "/api/v1/admin/usage?limit=1", Value::Null)
            .await;
        assert_eq!(
            (
                paged["items"].as_array().unwrap().len(),
                paged["has_more"].as_bool()
            ),
            (1, Some(true))
        );
        let by_model = h
            .admin_ok("GET", "/api/v1/admin/usage/summary?by=model", Value::Null)
            .await;
        assert_eq!(by_model["items"].as_array().unwrap().len(), 2, "{by_model}");
        let by_day = h
            .admin_ok("GET", "/api/v1/admin/usage/summary?by=day", Value::Null)
            .await;
        assert_eq!(by_day["items"][0]["requests"], 3, "{by_day}");
        assert_eq!(by_day["items"][0]["key"].as_str().unwrap().len(), 10);
        let by_user = h
            .admin_ok("GET", "/api/v1/admin/usage/summary?by=user", Value::Null)
            .await;
        assert_eq!(by_user["total"]["cost_usd"], by_day["total"]["cost_usd"]);
        let sum = all["items"]
            .as_array()
            .unwrap()
            .iter()
            .fold(Money::ZERO, |a, r| a.saturating_add(money(&r["cost_usd"])));
        let haiku = by_model["items"]
            .as_array()
            .unwrap()
            .iter()
            .find(|b| b["key"] == "claude-haiku-4-5")
            .unwrap();
        assert_eq!(money(&haiku["cost_usd"]), sum);

        // Pricing: view, replace (the relay prices with it at once), go back.
        let prices = h
            .admin_ok("GET", "/api/v1/admin/pricing", Value::Null)
            .await;
        assert!(
            prices["items"]
                .as_array()
                .unwrap()
                .iter()
                .any(|m| m["model"] == "claude-haiku-4-5")
        );
        let table = json!({"claude-haiku-4-5": {"litellm_provider": "anthropic", "mode": "chat",
            "input_cost_per_token": 0.00001, "output_cost_per_token": 0.00002}});
        let put = h.admin_ok("PUT", "/api/v1/admin/pricing", table).await;
        assert_eq!(put["models"], 1);
        assert_eq!(
            h.admin_ok("GET", "/api/v1/admin/pricing", Value::Null)
                .await["source"],
            "replaced"
        );
        let (status, _) = h
            .messages(
                k["key"].as_str().unwrap(),
                &body("claude-sonnet-4-5", 16, false),
            )
            .await;
        assert_eq!(status, 400, "{setup:?}: sonnet is not priced any more");
        h.admin_ok("DELETE", "/api/v1/admin/pricing", Value::Null)
            .await;
        assert_eq!(
            h.messages(
                k["key"].as_str().unwrap(),
                &body("claude-sonnet-4-5", 16, false)
            )
            .await
            .0,
            200
        );

        // Settings: registration can be turned off.
        let reg = h
            .call(
                "POST",
                "/api/v1/auth/register",
                None,
                json!({"email": "kim@example.com", "password": PASSWORD}),
            )
            .await;
        assert_eq!(reg.status, 201, "{}", reg.text);
        let s = h
            .admin_ok(
                "PATCH",
                "/api/v1/admin/settings",
                json!({"registration_enabled": false, "signup_balance_usd": "0.50"}),
            )
            .await;
        assert_eq!(s["registration_enabled"], false);
        let closed = h
            .call(
                "POST",
                "/api/v1/auth/register",
                None,
                json!({"email": "lee@example.com", "password": PASSWORD}),
            )
            .await;
        assert_eq!(
            (closed.status, closed.code()),
            (403, Some("registration_disabled"))
        );
        h.admin_ok(
            "PATCH",
            "/api/v1/admin/settings",
            json!({"registration_enabled": true, "user_key_groups": ["default"]}),
        )
        .await;
        let open = h
            .call(
                "POST",
                "/api/v1/auth/register",
                None,
                json!({"email": "lee@example.com", "password": PASSWORD}),
            )
            .await;
        assert_eq!(open.body["balance_usd"], "0.50", "{}", open.text);
        h.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_creates_users_keys_and_accounts_through_the_same_rules() {
    let db = sub2api_tests::TestDb::new(Storage::Sqlite).await;
    let dir = std::env::temp_dir().join(format!("sub2api-cli-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("sub2api.toml");
    std::fs::write(
        &config,
        format!(
            "database_url = \"{}\"\nadmin_key = \"{ADMIN_KEY}\"\n[[groups]]\nname = \"default\"\n",
            db.url
        ),
    )
    .unwrap();
    // SAFETY-free: the master key comes from the file written next to the database.
    use sub2api_axum::api::cli::{AccountCommand, KeyCommand, UserCommand, account, key, user};
    user(
        Some(config.clone()),
        UserCommand::Add {
            email: "cli@example.com".into(),
            password: None,
            balance_usd: Some("2.50".into()),
            admin: false,
        },
    )
    .await
    .unwrap();
    let dup = user(
        Some(config.clone()),
        UserCommand::Add {
            email: "cli@example.com".into(),
            password: None,
            balance_usd: None,
            admin: false,
        },
    )
    .await;
    assert!(dup.unwrap_err().contains("email"));
    key(
        Some(config.clone()),
        KeyCommand::Create {
            user: "cli@example.com".into(),
            group: "default".into(),
            name: Some("cli".into()),
            quota_usd: Some("1.00".into()),
            expires_at: None,
            ip_allowlist: None,
            concurrency: None,
            rpm: Some(10),
        },
    )
    .await
    .unwrap();
    account(
        Some(config.clone()),
        AccountCommand::Add {
            name: "cli-acct".into(),
            platform: "anthropic".into(),
            kind: "apikey".into(),
            api_key: Some("sk-ant-cli".into()),
            access_token: None,
            base_url: Some("http://127.0.0.1:9".into()),
            priority: None,
            concurrency: None,
            groups: Some("default".into()),
        },
    )
    .await
    .unwrap();
    let bad = account(
        Some(config.clone()),
        AccountCommand::Add {
            name: "cli-bad".into(),
            platform: "anthropic".into(),
            kind: "apikey".into(),
            api_key: None,
            access_token: None,
            base_url: None,
            priority: None,
            concurrency: None,
            groups: None,
        },
    )
    .await;
    assert!(bad.unwrap_err().contains("api_key"));
    // Everything is there after a restart.
    let booted =
        sub2api_axum::boot::boot(sub2api_core::config::Config::load(Some(&config)).unwrap())
            .await
            .unwrap();
    let (s, users) = booted
        .api
        .admin_call(http::Method::GET, "/api/v1/admin/users", Value::Null)
        .await;
    assert_eq!(s, 200);
    assert_eq!(users["items"][0]["email"], "cli@example.com");
    assert_eq!(users["items"][0]["balance_usd"], "2.50");
    let (_, keys) = booted
        .api
        .admin_call(http::Method::GET, "/api/v1/admin/keys", Value::Null)
        .await;
    assert_eq!(
        (
            keys["items"][0]["quota_usd"].as_str(),
            keys["items"][0]["rpm"].as_i64()
        ),
        (Some("1.00"), Some(10))
    );
    let (_, accounts) = booted
        .api
        .admin_call(http::Method::GET, "/api/v1/admin/accounts", Value::Null)
        .await;
    assert_eq!(accounts["items"][0]["name"], "cli-acct");
    booted.shutdown().await;
    let _ = std::fs::remove_dir_all(dir);
    let _ = Adapter::Axum;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_users_limits_set_over_the_api_bind_all_of_their_keys_on_the_relay_path() {
    for &setup in SETUPS {
        let h = ApiHarness::start(setup).await;
        let (uid, token) = h.user_session("gina@example.com", "10.00").await;
        let mut keys = Vec::new();
        for _ in 0..2 {
            let k = h
                .user_ok(&token, "POST", "/api/v1/keys", json!({"group": "default"}))
                .await;
            keys.push(k["key"].as_str().unwrap().to_owned());
        }
        let u = h
            .admin_ok(
                "PATCH",
                &format!("/api/v1/admin/users/{uid}"),
                json!({"rpm": 2, "concurrency": 3}),
            )
            .await;
        assert_eq!(
            (u["rpm"].as_u64(), u["concurrency"].as_u64()),
            (Some(2), Some(3))
        );
        // Two requests a minute over both keys together: the third is refused, whichever key.
        // (In process, the user's minute starts with their first request.)
        for key in &keys {
            let (status, v) = h.messages(key, &body("claude-haiku-4-5", 16, false)).await;
            assert_eq!(status, 200, "{setup:?}: {v}");
        }
        let (status, v) = h
            .messages(&keys[0], &body("claude-haiku-4-5", 16, true))
            .await;
        assert_eq!(status, 429, "{setup:?}: {v}");
        assert_eq!(v["error"]["type"], "rate_limit_error", "{setup:?}: {v}");
        assert!(v["error"]["message"].as_str().unwrap().contains("user"));
        // `null` removes a limit; the relay obeys at once (the key cache was emptied).
        let u = h
            .admin_ok(
                "PATCH",
                &format!("/api/v1/admin/users/{uid}"),
                json!({"rpm": null}),
            )
            .await;
        assert_eq!(
            (u["rpm"].as_u64(), u["concurrency"].as_u64()),
            (None, Some(3))
        );
        let (status, v) = h
            .messages(&keys[1], &body("claude-haiku-4-5", 16, false))
            .await;
        assert_eq!(status, 200, "{setup:?}: {v}");
        let u = h
            .admin_ok("GET", &format!("/api/v1/admin/users/{uid}"), Value::Null)
            .await;
        assert_eq!(u["concurrency"].as_u64(), Some(3));
        h.stop().await;
    }
}
