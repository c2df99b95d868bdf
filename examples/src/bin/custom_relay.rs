//! # custom_relay: your own account pool behind the core layers, served with axum
//!
//! Shows how to assemble a relay from `sub2api_core::layer::*` yourself instead of using
//! `Relay`: a tiny [`AccountProvider`] over a fixed list of accounts (where a real service would
//! read its own database or secret store), composed with the core layers in a
//! `tower::ServiceBuilder` and mounted on an axum `Router`. Users, keys and balances live in
//! the in-memory directory and ledger, seeded from a TOML snippet.
//!
//! Runs standalone against the built-in mock vendor, sends one non-stream and one stream
//! request, prints the replies and the balance, and exits:
//!
//! ```text
//! cargo run -p sub2api-examples --bin custom_relay
//! ```

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use sub2api_axum::mock::MockVendor;
use sub2api_core::account_provider::{AccountProvider, AccountStatus, Outcome, ProviderError};
use sub2api_core::config::{Config, apply_seed};
use sub2api_core::domain::{
    Account, AccountId, AccountKind, Credentials, GroupId, Platform, Secret,
};
use sub2api_core::layer::{
    auth, error_render, failover, meter, parse, request_id, reserve, schedule, upstream,
};
use sub2api_core::memory::{MemoryDirectory, MemoryLedger, MemoryScheduler, MemoryUsageLog};
use sub2api_core::meter::{Meter, PricedMeter};
use sub2api_core::pricing::PriceTable;
use sub2api_core::store::Directory;
use sub2api_core::{Ledger, Scheduler};
use tokio_util::task::TaskTracker;
use tower::ServiceBuilder;

/// The whole pool: a fixed list of accounts, always ready.
struct FixedAccounts(Vec<(Arc<Account>, Credentials)>);

#[async_trait]
impl AccountProvider for FixedAccounts {
    fn pool(&self, group: GroupId) -> Arc<[Arc<Account>]> {
        self.0
            .iter()
            .filter(|(a, _)| a.groups.contains(&group))
            .map(|(a, _)| a.clone())
            .collect()
    }

    fn status(&self, _account: AccountId) -> AccountStatus {
        AccountStatus::Ready
    }

    async fn credentials(&self, account: &Account) -> Result<Credentials, ProviderError> {
        let found = self.0.iter().find(|(a, _)| a.id == account.id);
        found
            .map(|(_, c)| c.clone())
            .ok_or(ProviderError::NoCredentials(account.id))
    }

    async fn report(&self, account: &Account, outcome: Outcome) {
        println!("account {} reported {outcome:?}", account.name);
    }
}

const SEED: &str = r#"
[[groups]]
name = "pool"
[[users]]
email = "dev@example.com"
balance_usd = "1.00"
[[keys]]
user = "dev@example.com"
group = "pool"
key = "sk-dev-example"
"#;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let vendor = MockVendor::start().await;
    let directory = Arc::new(MemoryDirectory::new());
    let ledger = Arc::new(MemoryLedger::new());
    apply_seed(
        &toml::from_str::<Config>(SEED)?,
        directory.as_ref(),
        ledger.as_ref(),
    )
    .await?;
    let group = directory
        .group_by_name("pool")
        .await?
        .ok_or("seeded group")?;
    let user = directory
        .user_by_email("dev@example.com")
        .await?
        .ok_or("seeded user")?;

    let account = Account {
        id: AccountId(1),
        name: "mock-1".into(),
        platform: Platform::Anthropic,
        kind: AccountKind::Apikey,
        base_url: vendor.base_url(),
        priority: 50,
        concurrency: 2,
        groups: vec![group.id],
        enabled: true,
        options: Default::default(),
    };
    let accounts: Arc<dyn AccountProvider> = Arc::new(FixedAccounts(vec![(
        Arc::new(account),
        Credentials::ApiKey(Secret::new("sk-mock-1")),
    )]));
    let scheduler: Arc<dyn Scheduler> = Arc::new(MemoryScheduler::new(accounts.clone()));
    let meter: Arc<dyn Meter> = Arc::new(PricedMeter::new(Arc::new(PriceTable::bundled())));
    let ledger_dyn: Arc<dyn Ledger> = ledger.clone();
    // Settlements that outlive their response (a client that hung up) run on this tracker.
    let tracker = TaskTracker::new();

    // The request path, outermost first (the same order `Relay` uses, minus the key limiter).
    let relay = ServiceBuilder::new()
        .layer(request_id::RequestIdLayer)
        .layer(error_render::ErrorRenderLayer)
        .layer(auth::AuthLayer::new(Arc::new(auth::KeyCache::new(
            directory.clone(),
        ))))
        .layer(parse::ParseLayer::new(4 * 1024 * 1024))
        .layer(reserve::ReserveLayer::new(
            ledger_dyn.clone(),
            meter.clone(),
        ))
        .layer(meter::MeterLayer::new(meter::MeterSettings {
            ledger: ledger_dyn,
            meter,
            usage_log: Arc::new(MemoryUsageLog::default()),
            metrics: Default::default(),
            tracker: tracker.clone(),
            drain_timeout: Duration::from_secs(30),
        }))
        .layer(failover::FailoverLayer::new(
            accounts.clone(),
            2,
            Default::default(),
        ))
        .layer(schedule::ScheduleLayer::new(scheduler))
        .service(upstream::Upstream::new(
            upstream::Upstream::default_client(),
            accounts,
            Duration::from_secs(60),
        ));

    let app = axum::Router::new().route_service("/v1/messages", relay);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let base = format!("http://{}", listener.local_addr()?);
    tokio::spawn(async move { axum::serve(listener, app).await });

    let client = upstream::Upstream::default_client();
    for stream in [false, true] {
        let body = serde_json::json!({
            "model": "claude-sonnet-4-5", "max_tokens": 64, "stream": stream,
            "messages": [{ "role": "user", "content": "Say hello." }],
        });
        let res = client
            .post(format!("{base}/v1/messages"))
            .header("x-api-key", "sk-dev-example")
            .header("content-type", "application/json")
            .body(body.to_string())
            .send()
            .await?;
        let status = res.status();
        let text = res.text().await?;
        if !status.is_success() {
            return Err(format!("request failed: HTTP {status}: {text}").into());
        }
        if stream {
            println!(
                "stream reply: HTTP {status}, {} SSE events",
                text.matches("\nevent: ").count() + 1
            );
        } else {
            let reply: serde_json::Value = serde_json::from_str(&text)?;
            println!(
                "non-stream reply: HTTP {status}: {}",
                reply["content"][0]["text"]
            );
        }
    }

    // Each settlement committed before its response's last byte: the balance is final here.
    let balance = ledger.balance(user.id).await?;
    println!(
        "balance: {} USD of 1.00 left, {} USD held",
        balance.available(),
        balance.held
    );
    tracker.close();
    tracker.wait().await;
    Ok(())
}
