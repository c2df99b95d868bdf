//! Subscription accounts: Claude OAuth refresh (single-flight, written back), the 401 refresh,
//! the identity policy, setup tokens, and onboarding through the PKCE flow.

mod support;

use serde_json::{Value, json};
use sub2api_core::config::{AccountSeed, Config, ExpiresAt};
use sub2api_core::domain::{AccountKind, Credentials, Platform};
use sub2api_core::money::Money;
use sub2api_core::oauth::{self, PendingAccount, TokenClient};
use sub2api_tests::mock::{Fault, Knob, MOCK_CHATGPT_ACCOUNT_ID, MockVendor};
use sub2api_tests::*;
use support::*;

fn claude_oauth(
    name: &str,
    url: &str,
    access: &str,
    refresh: &str,
    expires_at_ms: i64,
) -> AccountSeed {
    AccountSeed {
        access_token: Some(access.into()),
        refresh_token: Some(refresh.into()),
        expires_at: Some(ExpiresAt(expires_at_ms)),
        base_url: Some(url.into()),
        concurrency: 32,
        ..AccountSeed::new(name, Platform::Anthropic, AccountKind::Oauth)
    }
}

fn with_token_urls(mut cfg: Config, url: &str) -> Config {
    cfg.oauth.anthropic.token_url = Some(format!("{url}/v1/oauth/token"));
    cfg.oauth.openai.token_url = Some(format!("{url}/oauth/token"));
    cfg.oauth.google.token_url = Some(format!("{url}/token"));
    cfg
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

#[tokio::test]
async fn an_expired_claude_token_is_refreshed_exactly_once_under_20_concurrent_requests() {
    for (adapter, storage) in [
        (Adapter::Axum, Storage::Memory),
        (Adapter::Actix, Storage::Sqlite),
    ] {
        let db = TestDb::new(storage).await;
        let vendor = MockVendor::start().await;
        vendor.oauth().grant("seed-refresh");
        // Slow token endpoint: every request arrives while the refresh is in flight.
        vendor
            .oauth()
            .set_delay(std::time::Duration::from_millis(150));
        let url = vendor.base_url();
        let mut cfg = config(
            Platform::Anthropic,
            vec![claude_oauth(
                "max1",
                &url,
                "expired-access",
                "seed-refresh",
                now_ms() - 1000,
            )],
            Money::usd(10),
        );
        cfg.database_url = Some(db.url.clone());
        let h = Harness::start_with_config(adapter, with_token_urls(cfg, &url), vendor).await;

        let mut tasks = Vec::new();
        for i in 0..20 {
            let client = h.client.clone();
            let u = h.url("/v1/messages");
            let b = body("claude-sonnet-4-5", 32, i % 2 == 0);
            tasks.push(tokio::spawn(async move {
                let res = client
                    .post(u)
                    .header("x-api-key", KEY)
                    .body(b.to_string())
                    .send()
                    .await
                    .unwrap();
                text(res).await
            }));
        }
        for t in tasks {
            let (status, body) = t.await.unwrap();
            assert_eq!(status, 200, "{body}");
        }
        assert_eq!(h.vendor.oauth().refreshes(), 1, "single-flight");
        assert_eq!(
            h.vendor.oauth().rejected(),
            0,
            "no request used a spent refresh token"
        );
        let sent: Vec<_> = h
            .vendor
            .requests()
            .into_iter()
            .filter(|r| r.path.starts_with("/v1/messages"))
            .collect();
        assert_eq!(sent.len(), 20);
        for r in &sent {
            assert_eq!(r.header("authorization"), Some("Bearer mock-access-1"));
            assert!(r.header("x-api-key").is_none());
            assert!(
                r.header("anthropic-beta")
                    .unwrap()
                    .split(',')
                    .any(|b| b == "oauth-2025-04-20"),
                "{:?}",
                r.header("anthropic-beta")
            );
        }
        // The rotated refresh token was written back to the store.
        let id = h.account("max1").await.id;
        match h
            .relay()
            .parts()
            .directory
            .account_credentials(id)
            .await
            .unwrap()
        {
            Credentials::OAuth(t) => {
                assert_eq!(t.access_token.expose(), "mock-access-1");
                assert_eq!(t.refresh_token.expose(), "mock-refresh-1");
                assert!(t.expires_at_ms.unwrap() > now_ms() + 3_000_000);
            }
            other => panic!("{other:?}"),
        }
        h.stop().await;
    }
}

#[tokio::test]
async fn a_401_refreshes_once_and_retries_and_a_dead_refresh_token_disables_the_account() {
    for &adapter in ADAPTERS {
        let vendor = MockVendor::start().await;
        vendor.oauth().grant("good-refresh");
        vendor.set("revoked-access", Knob::Fault(Fault::Unauthorized));
        vendor.set("other-revoked", Knob::Fault(Fault::Unauthorized));
        let url = vendor.base_url();
        let later = now_ms() + 3_600_000;
        let mut a2 = claude_oauth("max2", &url, "other-revoked", "dead-refresh", later);
        a2.priority = 90;
        let cfg = config(
            Platform::Anthropic,
            vec![
                claude_oauth("max1", &url, "revoked-access", "good-refresh", later),
                a2,
            ],
            Money::usd(10),
        );
        let h = Harness::start_with_config(adapter, with_token_urls(cfg, &url), vendor).await;

        let (status, reply) = text(h.messages(&body("claude-haiku-4-5", 16, false)).await).await;
        assert_eq!(status, 200, "{reply}");
        let tokens: Vec<_> = h
            .vendor
            .requests()
            .iter()
            .filter(|r| r.path.starts_with("/v1/messages"))
            .map(|r| r.api_key.clone().unwrap())
            .collect();
        assert_eq!(
            tokens,
            ["revoked-access", "mock-access-1"],
            "refused, refreshed, retried"
        );
        assert_eq!(h.vendor.oauth().refreshes(), 1);
        let a1 = h.account("max1").await.id;
        assert_eq!(
            h.relay().parts().accounts.status(a1),
            sub2api_core::account_provider::AccountStatus::Ready
        );

        // max2's refresh token is dead: after its 401 and the refused refresh it is disabled.
        h.vendor
            .set("mock-access-1", Knob::Fault(Fault::Overloaded));
        let (status, reply) = text(h.messages(&body("claude-haiku-4-5", 16, false)).await).await;
        assert_ne!(status, 200, "{reply}");
        let a2 = h.account("max2").await.id;
        assert!(matches!(
            h.relay().parts().accounts.status(a2),
            sub2api_core::account_provider::AccountStatus::Disabled { .. }
        ));
        h.stop().await;
    }
}

#[tokio::test]
async fn subscription_accounts_present_one_fingerprint_and_claude_code_identity() {
    let vendor = MockVendor::start().await;
    let url = vendor.base_url();
    let later = now_ms() + 3_600_000;
    let setup = AccountSeed {
        access_token: Some("setup-token-1".into()),
        base_url: Some(url.clone()),
        ..AccountSeed::new("setup1", Platform::Anthropic, AccountKind::SetupToken)
    };
    let cfg = config(
        Platform::Anthropic,
        vec![claude_oauth("max1", &url, "access-1", "r", later), setup],
        Money::usd(10),
    );
    let h = Harness::start_with_config(Adapter::Axum, with_token_urls(cfg, &url), vendor).await;
    for (i, ua) in [
        "python-httpx/0.27",
        "node-fetch",
        "claude-cli/2.0.14 (external, cli)",
    ]
    .iter()
    .enumerate()
    {
        let mut b = body("claude-sonnet-4-5", 16, false);
        b["system"] = json!("be brief");
        b["metadata"] = json!({"user_id": format!("client-user-{i}")});
        let res = h
            .client
            .post(h.url("/v1/messages"))
            .header("x-api-key", KEY)
            .header("user-agent", *ua)
            .body(b.to_string())
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 200);
    }
    let sent = h.vendor.requests();
    let by_account = |key: &str| {
        sent.iter()
            .filter(|r| r.api_key.as_deref() == Some(key))
            .cloned()
            .collect::<Vec<_>>()
    };
    for key in ["access-1", "setup-token-1"] {
        let reqs = by_account(key);
        for r in &reqs {
            assert_eq!(
                r.header("authorization"),
                Some(format!("Bearer {key}").as_str())
            );
            assert!(r.header("user-agent").unwrap().starts_with("claude-cli/"));
            assert_eq!(r.header("x-app"), Some("cli"));
            assert!(
                r.header("anthropic-beta")
                    .unwrap()
                    .contains("oauth-2025-04-20")
            );
            let j = r.json().unwrap();
            let uid = j["metadata"]["user_id"].as_str().unwrap();
            assert!(
                uid.starts_with("user_") && uid.contains("_account__session_"),
                "{uid}"
            );
            assert!(!uid.contains("client-user"));
        }
        let fingerprints: std::collections::HashSet<_> = reqs
            .iter()
            .map(|r| {
                (
                    r.header("user-agent").map(str::to_owned),
                    r.header("x-stainless-os").map(str::to_owned),
                    r.header("x-stainless-arch").map(str::to_owned),
                )
            })
            .collect();
        assert!(
            fingerprints.len() <= 1,
            "one fingerprint per account: {fingerprints:?}"
        );
    }
    for r in &sent {
        let j = r.json().unwrap();
        // Other clients get the Claude Code system block first; Claude Code keeps its own.
        let kept = j["system"] == "be brief";
        let first = j["system"][0]["text"].as_str().unwrap_or("");
        assert!(
            kept || (first.starts_with("You are Claude Code")
                && j["system"][1]["text"] == "be brief"),
            "{j}"
        );
    }
    // Exactly the Claude Code client kept its own system prompt.
    assert_eq!(
        sent.iter()
            .filter(|r| r.json().unwrap()["system"] == "be brief")
            .count(),
        1
    );
    h.stop().await;
}

#[tokio::test]
async fn onboarding_exchanges_a_pkce_code_and_saves_the_account() {
    let vendor = MockVendor::start().await;
    let url = vendor.base_url();
    let cfg = with_token_urls(config(Platform::Openai, vec![], Money::usd(10)), &url);
    let h = Harness::start_with_config(Adapter::Axum, cfg.clone(), vendor).await;
    let dir = h.relay().parts().directory.clone();
    let client = TokenClient::new(cfg.oauth.clone(), Default::default());
    for (platform, name) in [
        (Platform::Openai, "codex-new"),
        (Platform::Anthropic, "claude-new"),
    ] {
        let account = PendingAccount {
            name: name.into(),
            groups: vec!["default".into()],
            priority: 10,
            concurrency: 2,
            base_url: Some(url.clone()),
            options: Default::default(),
        };
        let (pending, auth_url) = oauth::start(&cfg.oauth, platform, false, account).unwrap();
        assert!(auth_url.contains("code_challenge_method=S256"));
        dir.save_pending_authorization(&pending).await.unwrap();
        let pasted = match platform {
            Platform::Anthropic => format!("the-code#{}", pending.state),
            _ => format!(
                "http://localhost:1455/auth/callback?code=the-code&state={}",
                pending.state
            ),
        };
        let saved = oauth::complete(dir.as_ref(), &client, &pasted)
            .await
            .unwrap();
        assert_eq!(saved.name, name);
        assert_eq!(saved.kind, AccountKind::Oauth);
        assert!(matches!(
            dir.account_credentials(saved.id).await.unwrap(),
            Credentials::OAuth(_)
        ));
        if platform == Platform::Openai {
            assert_eq!(
                saved.options.chatgpt_account_id.as_deref(),
                Some(MOCK_CHATGPT_ACCOUNT_ID)
            );
        }
        // A code is exchanged once.
        assert!(
            oauth::complete(dir.as_ref(), &client, &pasted)
                .await
                .is_err()
        );
    }
    assert_eq!(h.vendor.oauth().exchanges(), 2);
    let exchange = h
        .vendor
        .requests()
        .into_iter()
        .find(|r| r.path == "/v1/oauth/token")
        .unwrap();
    let j: Value = exchange.json().unwrap();
    assert_eq!(j["grant_type"], "authorization_code");
    assert_eq!(j["code_verifier"].as_str().unwrap().len(), 43);
    h.stop().await;
}
