//! The admin and user HTTP API ([`sub2api_core::api::Api`]) on axum: every path of the route table
//! goes to the core service, which does matching, authentication, validation and JSON.
//!
//! ```no_run
//! # async fn demo(booted: sub2api_axum::boot::Booted) {
//! let app = sub2api_axum::api::app(&booted.relay, booted.api.clone());
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:8080").await.unwrap();
//! // The client address reaches key IP allowlists and login rate limits through ConnectInfo.
//! axum::serve(listener, app.into_make_service_with_connect_info::<std::net::SocketAddr>()).await.unwrap();
//! # }
//! ```

use std::convert::Infallible;
use std::net::SocketAddr;

use axum::Router;
use axum::body::Body;
use axum::extract::ConnectInfo;
use http::Request;
use sub2api_core::api::Api;
use sub2api_core::layer::auth::ClientAddr;
use sub2api_core::relay::Relay;

/// A router answering every path of the API's route table (and a JSON 404 for any other path
/// under `/api/v1/`).
pub fn router(api: Api) -> Router {
    let paths = api.paths();
    let svc = tower::service_fn(move |req: Request<Body>| {
        let fut = api.call_with(with_client_addr(req));
        async move { Ok::<_, Infallible>(fut.await) }
    });
    let mut router = Router::new();
    for path in paths {
        router = router.route_service(path, svc.clone());
    }
    router.route_service("/api/v1/{*rest}", svc)
}

/// The relay routes and the API in one router.
pub fn app(relay: &Relay, api: Api) -> Router {
    crate::router(relay).merge(router(api))
}

/// Copies axum's `ConnectInfo` (present when served with
/// `into_make_service_with_connect_info::<SocketAddr>()`) into the [`ClientAddr`] core reads.
pub fn with_client_addr<B>(mut req: Request<B>) -> Request<B> {
    if let Some(ConnectInfo(addr)) = req.extensions().get::<ConnectInfo<SocketAddr>>().copied() {
        req.extensions_mut().insert(ClientAddr(addr));
    }
    req
}

/// The `sub2api user|key|account` commands: each boots the store like `serve` does and runs one
/// admin route in process ([`Api::admin_call`]), so the CLI validates and acts exactly as the HTTP
/// API does.
pub mod cli {
    use std::path::PathBuf;

    use http::Method;
    use serde_json::{Value, json};
    use sub2api_core::config::Config;

    use crate::boot::boot;

    #[derive(clap::Subcommand, Debug)]
    pub enum UserCommand {
        /// Create a user.
        Add {
            #[arg(long)]
            email: String,
            /// Lets the user log in to the user API.
            #[arg(long)]
            password: Option<String>,
            /// Opening balance, an exact decimal ("10.00").
            #[arg(long)]
            balance_usd: Option<String>,
            /// May use the admin API with a session.
            #[arg(long)]
            admin: bool,
        },
    }

    #[derive(clap::Subcommand, Debug)]
    pub enum KeyCommand {
        /// Create an API key for a user; the key is printed once.
        Create {
            /// The owner's email.
            #[arg(long)]
            user: String,
            #[arg(long)]
            group: String,
            #[arg(long)]
            name: Option<String>,
            /// The most the key may ever spend ("25.00").
            #[arg(long)]
            quota_usd: Option<String>,
            /// RFC 3339 time or date when the key stops working.
            #[arg(long)]
            expires_at: Option<String>,
            /// Comma-separated IPs or CIDR blocks the key works from.
            #[arg(long)]
            ip_allowlist: Option<String>,
            #[arg(long)]
            concurrency: Option<u32>,
            #[arg(long)]
            rpm: Option<u32>,
        },
    }

    #[derive(clap::Subcommand, Debug)]
    pub enum AccountCommand {
        /// Add an upstream account.
        Add {
            #[arg(long)]
            name: String,
            #[arg(long, default_value = "anthropic")]
            platform: String,
            /// apikey, oauth or setup_token.
            #[arg(long = "type", default_value = "apikey")]
            kind: String,
            #[arg(long)]
            api_key: Option<String>,
            #[arg(long)]
            access_token: Option<String>,
            #[arg(long)]
            base_url: Option<String>,
            #[arg(long)]
            priority: Option<i64>,
            #[arg(long)]
            concurrency: Option<u32>,
            /// Comma-separated group names.
            #[arg(long)]
            groups: Option<String>,
        },
    }

    fn put(body: &mut Value, name: &str, v: Option<Value>) {
        if let Some(v) = v {
            body[name] = v;
        }
    }

    fn list(s: Option<String>) -> Option<Value> {
        s.map(|s| {
            json!(
                s.split(',')
                    .map(str::trim)
                    .filter(|x| !x.is_empty())
                    .collect::<Vec<_>>()
            )
        })
    }

    async fn call(
        config: Option<PathBuf>,
        method: Method,
        path: &str,
        body: impl FnOnce(&crate::boot::Booted) -> Result<Value, String>,
    ) -> Result<Value, String> {
        let config = Config::load(config.as_deref()).map_err(|e| e.to_string())?;
        let booted = boot(config).await.map_err(|e| e.to_string())?;
        let result = match body(&booted) {
            Ok(b) => Ok(booted.api.admin_call(method, path, b).await),
            Err(e) => Err(e),
        };
        booted.shutdown().await;
        let (status, v) = result?;
        if status.is_success() {
            Ok(v)
        } else {
            Err(v["error"]["message"]
                .as_str()
                .unwrap_or("failed")
                .to_owned())
        }
    }

    pub async fn user(config: Option<PathBuf>, cmd: UserCommand) -> Result<(), String> {
        let UserCommand::Add {
            email,
            password,
            balance_usd,
            admin,
        } = cmd;
        let v = call(config, Method::POST, "/api/v1/admin/users", |_| {
            let mut b = json!({"email": email, "is_admin": admin});
            put(&mut b, "password", password.map(Value::String));
            put(&mut b, "balance_usd", balance_usd.map(Value::String));
            Ok(b)
        })
        .await?;
        println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
        Ok(())
    }

    pub async fn key(config: Option<PathBuf>, cmd: KeyCommand) -> Result<(), String> {
        let KeyCommand::Create {
            user,
            group,
            name,
            quota_usd,
            expires_at,
            ip_allowlist,
            concurrency,
            rpm,
        } = cmd;
        let config_path = config.clone();
        let config = Config::load(config_path.as_deref()).map_err(|e| e.to_string())?;
        let booted = boot(config).await.map_err(|e| e.to_string())?;
        let found = booted
            .api
            .parts()
            .store
            .user_by_email(&user.trim().to_ascii_lowercase())
            .await
            .map_err(|e| e.to_string());
        let result = match found {
            Ok(Some(u)) => {
                let mut b = json!({"user_id": u.id, "group": group});
                put(&mut b, "name", name.map(Value::String));
                put(&mut b, "quota_usd", quota_usd.map(Value::String));
                put(&mut b, "expires_at", expires_at.map(Value::String));
                put(&mut b, "ip_allowlist", list(ip_allowlist));
                put(&mut b, "concurrency", concurrency.map(Value::from));
                put(&mut b, "rpm", rpm.map(Value::from));
                Ok(booted
                    .api
                    .admin_call(Method::POST, "/api/v1/admin/keys", b)
                    .await)
            }
            Ok(None) => Err(format!("no user with email {user}")),
            Err(e) => Err(e),
        };
        booted.shutdown().await;
        let (status, v) = result?;
        if !status.is_success() {
            return Err(v["error"]["message"]
                .as_str()
                .unwrap_or("failed")
                .to_owned());
        }
        println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
        println!(
            "key (shown once, only its hash is stored): {}",
            v["key"].as_str().unwrap_or_default()
        );
        Ok(())
    }

    pub async fn account(config: Option<PathBuf>, cmd: AccountCommand) -> Result<(), String> {
        let AccountCommand::Add {
            name,
            platform,
            kind,
            api_key,
            access_token,
            base_url,
            priority,
            concurrency,
            groups,
        } = cmd;
        let v = call(config, Method::POST, "/api/v1/admin/accounts", |_| {
            let mut b = json!({"name": name, "platform": platform, "type": kind});
            put(&mut b, "api_key", api_key.map(Value::String));
            put(&mut b, "access_token", access_token.map(Value::String));
            put(&mut b, "base_url", base_url.map(Value::String));
            put(&mut b, "priority", priority.map(Value::from));
            put(&mut b, "concurrency", concurrency.map(Value::from));
            put(&mut b, "groups", list(groups));
            Ok(b)
        })
        .await?;
        println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
        Ok(())
    }
}
