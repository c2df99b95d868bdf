//! # metering_only: exact billing in front of an upstream you already have
//!
//! Shows an existing axum app that keeps its own way of calling the vendor (a plain tower
//! service forwarding with reqwest, no pooling, no scheduler) and adds only what sub2api's
//! billing needs: `AuthLayer` (who pays), `ParseLayer` (what was asked: model, `max_tokens`,
//! stream), `ReserveLayer` (hold the worst case before anything goes upstream) and `MeterLayer`
//! (meter the response as it streams, settle the exact cost once). `ErrorRenderLayer` turns
//! refusals (bad key, insufficient balance) into Anthropic-shaped errors.
//!
//! Runs standalone against the built-in mock vendor: two requests, the balance after each, then
//! it exits:
//!
//! ```text
//! cargo run -p sub2api-examples --bin metering_only
//! ```

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::routing::get;
use bytes::Bytes;
use http::{Request, Response};
use sub2api_axum::mock::MockVendor;
use sub2api_core::Ledger;
use sub2api_core::config::{Config, apply_seed};
use sub2api_core::error::RelayError;
use sub2api_core::layer::auth::{AuthLayer, KeyCache};
use sub2api_core::layer::error_render::ErrorRenderLayer;
use sub2api_core::layer::meter::{MeterLayer, MeterSettings};
use sub2api_core::layer::parse::ParseLayer;
use sub2api_core::layer::reserve::ReserveLayer;
use sub2api_core::layer::upstream::Upstream;
use sub2api_core::memory::{MemoryDirectory, MemoryLedger, MemoryUsageLog};
use sub2api_core::meter::{Meter, PricedMeter};
use sub2api_core::pricing::PriceTable;
use sub2api_core::store::Directory;
use tokio_util::task::TaskTracker;
use tower::ServiceBuilder;

const SEED: &str = r#"
[[groups]]
name = "customers"
[[users]]
email = "customer@example.com"
balance_usd = "2.00"
[[keys]]
user = "customer@example.com"
group = "customers"
key = "sk-customer-example"
"#;

/// The app's own upstream call: the parsed, bounded body goes to its vendor with its own key.
async fn my_upstream(
    client: reqwest::Client,
    vendor: String,
    req: Request<Bytes>,
) -> Result<Response<reqwest::Body>, RelayError> {
    let res = client
        .post(format!("{vendor}{}", req.uri().path()))
        .header("x-api-key", "sk-my-company-key")
        .header("anthropic-version", "2023-06-01")
        .header("content-type", "application/json")
        .body(req.into_body())
        .send()
        .await
        .map_err(|e| RelayError::internal(format!("vendor unreachable: {e}")))?;
    Ok(res.into())
}

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
    let user = directory
        .user_by_email("customer@example.com")
        .await?
        .ok_or("seeded user")?
        .id;

    let client = Upstream::default_client();
    let (c, base_url) = (client.clone(), vendor.base_url());
    let upstream = tower::service_fn(move |req| my_upstream(c.clone(), base_url.clone(), req));

    let meter: Arc<dyn Meter> = Arc::new(PricedMeter::new(Arc::new(PriceTable::bundled())));
    let ledger_dyn: Arc<dyn Ledger> = ledger.clone();
    let tracker = TaskTracker::new();
    let metered = ServiceBuilder::new()
        .layer(ErrorRenderLayer)
        .layer(AuthLayer::new(Arc::new(KeyCache::new(directory.clone()))))
        .layer(ParseLayer::new(4 * 1024 * 1024))
        .layer(ReserveLayer::new(ledger_dyn.clone(), meter.clone()))
        .layer(MeterLayer::new(MeterSettings {
            ledger: ledger_dyn,
            meter,
            usage_log: Arc::new(MemoryUsageLog::default()),
            metrics: Default::default(),
            tracker: tracker.clone(),
            drain_timeout: Duration::from_secs(30),
        }))
        .service(upstream);

    // The existing app: its own routes, plus the metered vendor route.
    let app = Router::new()
        .route("/", get(|| async { "my existing app" }))
        .route_service("/v1/messages", metered);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let base = format!("http://{}", listener.local_addr()?);
    tokio::spawn(async move { axum::serve(listener, app).await });

    println!(
        "GET / -> {}",
        client.get(format!("{base}/")).send().await?.text().await?
    );
    println!(
        "balance before: {} USD",
        ledger.balance(user).await?.available()
    );
    for (i, stream) in [false, true].into_iter().enumerate() {
        let body = serde_json::json!({
            "model": "claude-sonnet-4-5", "max_tokens": 100, "stream": stream,
            "messages": [{ "role": "user", "content": "What does metering mean?" }],
        });
        let res = client
            .post(format!("{base}/v1/messages"))
            .header("x-api-key", "sk-customer-example")
            .header("content-type", "application/json")
            .body(body.to_string())
            .send()
            .await?;
        let status = res.status();
        let text = res.text().await?;
        if !status.is_success() {
            return Err(format!("request {} failed: HTTP {status}: {text}", i + 1).into());
        }
        // The settlement committed before the response's last byte, so this is final.
        let balance = ledger.balance(user).await?;
        println!(
            "request {} (stream: {stream}): HTTP {status}; balance after: {} USD",
            i + 1,
            balance.available()
        );
    }

    // A key the directory does not know is refused before anything is held or sent upstream.
    let refused = client
        .post(format!("{base}/v1/messages"))
        .header("x-api-key", "sk-unknown")
        .body("{}")
        .send()
        .await?;
    println!("unknown key -> HTTP {}", refused.status());
    println!("vendor saw {} requests", vendor.request_count());
    tracker.close();
    tracker.wait().await;
    Ok(())
}
