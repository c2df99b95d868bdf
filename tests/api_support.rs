//! Support for the API suites (`tests/api*.rs`): a relay with its admin and user API booted like
//! the `sub2api` binary, on memory, SQLite or Postgres, served over real HTTP by axum (with
//! `ConnectInfo`) or actix-web, and small JSON helpers.
#![allow(dead_code)]

use std::net::SocketAddr;

use reqwest::Method;
use serde_json::{Value, json};
use sub2api_axum::boot::{Booted, boot_with};
use sub2api_axum::mock::MockVendor;
use sub2api_core::api::{Api, ApiConfig, PasswordParams};
use sub2api_sqlx::MasterKey;
use sub2api_tests::{Adapter, Spec, Storage, TestDb, config_for};

pub const ADMIN_KEY: &str = "admin-key-for-tests-0123456789";
pub const PASSWORD: &str = "correct horse battery";

/// Every (adapter, storage) the API suites run on.
pub const SETUPS: &[(Adapter, Storage)] = &[
    (Adapter::Axum, Storage::Memory),
    (Adapter::Axum, Storage::Sqlite),
    (Adapter::Axum, Storage::Postgres),
    (Adapter::Actix, Storage::Memory),
    (Adapter::Actix, Storage::Sqlite),
];

pub struct ApiHarness {
    pub vendor: MockVendor,
    pub booted: Booted,
    pub api: Api,
    pub base: String,
    pub client: reqwest::Client,
    pub setup: (Adapter, Storage),
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    server: Option<tokio::task::JoinHandle<()>>,
    actix: Option<sub2api_actix::api::ApiServer>,
    _db: TestDb,
}

/// An answer: status and JSON body (`Value::Null` when the body is not JSON).
#[derive(Debug, Clone)]
pub struct Answer {
    pub status: u16,
    pub body: Value,
    pub text: String,
}

impl Answer {
    pub fn field(&self) -> Option<&str> {
        self.body["error"]["field"].as_str()
    }
    pub fn code(&self) -> Option<&str> {
        self.body["error"]["code"].as_str()
    }
}

impl ApiHarness {
    pub async fn start(setup: (Adapter, Storage)) -> ApiHarness {
        Self::start_with(setup, Spec::default()).await
    }

    pub async fn start_with(setup: (Adapter, Storage), spec: Spec) -> ApiHarness {
        Self::start_configured(setup, spec, |_| {}).await
    }

    /// [`start_with`](Self::start_with), with a last say on the configuration (e.g. `[payments]`).
    pub async fn start_configured(
        setup: (Adapter, Storage),
        spec: Spec,
        configure: impl FnOnce(&mut sub2api_core::config::Config),
    ) -> ApiHarness {
        let (adapter, storage) = setup;
        let db = TestDb::new(storage).await;
        let vendor = MockVendor::start().await;
        let mut config = config_for(
            &Spec {
                database_url: db.url.clone(),
                ..spec
            },
            &vendor.base_url(),
        );
        config.admin_key = Some(ADMIN_KEY.into());
        configure(&mut config);
        let booted = boot_with(config, Some(MasterKey::new([7u8; 32])))
            .await
            .expect("relay boots");
        // The booted API with a cheap password hash (argon2 at full cost is slow in debug builds).
        let api = Api::new(
            booted.api.parts().clone(),
            ApiConfig {
                admin_key: Some(ADMIN_KEY.into()),
                password: PasswordParams::insecure_fast(),
                payments: booted.api.config().payments.clone(),
                ..ApiConfig::default()
            },
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr: SocketAddr = listener.local_addr().unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let (server, actix) = match adapter {
            Adapter::Axum => {
                let app = sub2api_axum::api::app(&booted.relay, api.clone());
                let server = tokio::spawn(async move {
                    axum::serve(
                        sub2api_axum::no_delay(listener),
                        app.into_make_service_with_connect_info::<SocketAddr>(),
                    )
                    .with_graceful_shutdown(async move {
                        let _ = stopped.await;
                    })
                    .await
                    .unwrap();
                });
                (Some(server), None)
            }
            Adapter::Actix => {
                let std_listener = listener.into_std().unwrap();
                std_listener.set_nonblocking(false).unwrap();
                let server =
                    sub2api_actix::api::spawn(booted.relay.clone(), api.clone(), std_listener)
                        .expect("actix starts");
                (None, Some(server))
            }
        };
        ApiHarness {
            vendor,
            booted,
            api,
            base: format!("http://{addr}"),
            client: reqwest::Client::builder().no_proxy().build().unwrap(),
            setup,
            stop: Some(stop),
            server,
            actix,
            _db: db,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    /// Sends `body` (JSON unless `Value::Null`) with `token` as the bearer (none when `None`).
    pub async fn call(&self, method: &str, path: &str, token: Option<&str>, body: Value) -> Answer {
        let mut rb = self.client.request(
            Method::from_bytes(method.as_bytes()).unwrap(),
            self.url(path),
        );
        if let Some(t) = token {
            rb = rb.bearer_auth(t);
        }
        if !body.is_null() {
            rb = rb
                .header("content-type", "application/json")
                .body(body.to_string());
        }
        let res = rb.send().await.expect("server answers");
        let status = res.status().as_u16();
        let text = res.text().await.unwrap_or_default();
        Answer {
            status,
            body: serde_json::from_str(&text).unwrap_or(Value::Null),
            text,
        }
    }

    pub async fn admin(&self, method: &str, path: &str, body: Value) -> Answer {
        self.call(method, path, Some(ADMIN_KEY), body).await
    }

    /// An admin call that must succeed.
    pub async fn admin_ok(&self, method: &str, path: &str, body: Value) -> Value {
        let a = self.admin(method, path, body).await;
        assert!(
            (200..300).contains(&a.status),
            "{:?} {method} {path}: {} {}",
            self.setup,
            a.status,
            a.text
        );
        a.body
    }

    pub async fn user_ok(&self, token: &str, method: &str, path: &str, body: Value) -> Value {
        let a = self.call(method, path, Some(token), body).await;
        assert!(
            (200..300).contains(&a.status),
            "{:?} {method} {path}: {} {}",
            self.setup,
            a.status,
            a.text
        );
        a.body
    }

    /// Creates a user with a password and logs in: `(user id, session token)`.
    pub async fn user_session(&self, email: &str, balance: &str) -> (i64, String) {
        let u = self
            .admin_ok(
                "POST",
                "/api/v1/admin/users",
                json!({"email": email, "password": PASSWORD, "balance_usd": balance}),
            )
            .await;
        let login = self
            .call(
                "POST",
                "/api/v1/auth/login",
                None,
                json!({"email": email, "password": PASSWORD}),
            )
            .await;
        assert_eq!(login.status, 200, "{}", login.text);
        (
            u["id"].as_i64().unwrap(),
            login.body["token"].as_str().unwrap().to_owned(),
        )
    }

    /// POSTs a Messages body with an API key.
    pub async fn messages(&self, key: &str, body: &Value) -> (u16, Value) {
        let res = self
            .client
            .post(self.url("/v1/messages"))
            .header("x-api-key", key)
            .header("content-type", "application/json")
            .body(body.to_string())
            .send()
            .await
            .expect("relay answers");
        let status = res.status().as_u16();
        let text = res.text().await.unwrap_or_default();
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    /// Waits until every settlement so far is committed and usage rows are written.
    pub async fn settle(&self) {
        if let Some(store) = &self.booted.store {
            store.drain_settlements().await;
        }
        self.booted.relay.parts().usage_log.flush().await.unwrap();
    }

    pub async fn stop(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(h) = self.server.take() {
            let _ = h.await;
        }
        if let Some(a) = self.actix.take() {
            a.stop(true).await;
        }
        self.booted.shutdown().await;
    }
}
