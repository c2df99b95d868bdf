//! Account options (model mapping, allowlist, proxy, vendor ids), OAuth credentials rotated in
//! place, and pending OAuth authorizations, on SQLite and Postgres.

#[macro_use]
mod common;

use common::{TestDb, group};
use sub2api_core::domain::{
    AccountKind, AccountOptions, Credentials, OAuthTokens, Platform, ProxyUrl, Secret,
};
use sub2api_core::oauth::{PendingAccount, PendingAuthorization};
use sub2api_core::store::{Directory, NewAccount};

async fn options_credentials_and_pending(db: &TestDb) {
    let store = db.open().await;
    group(&store, "g").await;
    let mut options = AccountOptions {
        proxy: Some(ProxyUrl::parse("socks5://u:p@127.0.0.1:1080").unwrap()),
        chatgpt_account_id: Some("acc-1".into()),
        models: vec!["gpt-5*".into()],
        ..Default::default()
    };
    options
        .model_mapping
        .insert("gpt-4o".into(), "gpt-5".into());
    let tokens = |a: &str, r: &str| {
        Credentials::OAuth(OAuthTokens {
            access_token: Secret::new(a),
            refresh_token: Secret::new(r),
            expires_at_ms: Some(1),
        })
    };
    let a = store
        .upsert_account(NewAccount {
            name: "codex".into(),
            platform: Platform::Openai,
            kind: AccountKind::Oauth,
            base_url: "https://chatgpt.com".into(),
            priority: 1,
            concurrency: 2,
            groups: vec!["g".into()],
            credentials: tokens("a0", "r0"),
            options: options.clone(),
        })
        .await
        .unwrap();
    assert_eq!(a.options, options);
    let listed = store.accounts().await.unwrap();
    assert_eq!(listed[0].options, options);
    assert_eq!(
        store.account_credentials(a.id).await.unwrap(),
        tokens("a0", "r0")
    );
    store
        .update_account_credentials(a.id, &tokens("a1", "r1"))
        .await
        .unwrap();
    assert_eq!(
        store.account_credentials(a.id).await.unwrap(),
        tokens("a1", "r1")
    );
    assert_eq!(
        store.accounts().await.unwrap()[0],
        a,
        "nothing else changed"
    );

    let pending = |state: &str, at: i64| PendingAuthorization {
        state: state.into(),
        platform: Platform::Anthropic,
        code_verifier: "v".repeat(43),
        redirect_uri: "https://example/cb".into(),
        setup_token: false,
        account: PendingAccount {
            name: state.into(),
            ..Default::default()
        },
        created_at_ms: at,
    };
    let now = sub2api_core::account_provider::now_ms();
    store
        .save_pending_authorization(&pending("s1", now))
        .await
        .unwrap();
    store
        .save_pending_authorization(&pending("s2", now + 1))
        .await
        .unwrap();
    assert_eq!(
        store.take_pending_authorization(Some("s1")).await.unwrap(),
        Some(pending("s1", now))
    );
    assert_eq!(
        store.take_pending_authorization(Some("s1")).await.unwrap(),
        None,
        "taken once"
    );
    assert_eq!(
        store.take_pending_authorization(None).await.unwrap(),
        Some(pending("s2", now + 1))
    );
    assert_eq!(store.take_pending_authorization(None).await.unwrap(), None);
}

both!(
    options_credentials_and_pending,
    super::options_credentials_and_pending
);
