//! `sub2api-actix`: the relay served by actix-web instead of axum.
//!
//! Same config file and environment as `sub2api serve` (`--config`, default `./sub2api.toml` when
//! present; `SUB2API_LISTEN`, `SUB2API_DATABASE_URL`, `SUB2API_MASTER_KEY`, ...), same storage,
//! seeding and relay routes: only the HTTP stack differs. Stops gracefully on ctrl-c or SIGTERM.
//!
//! ```text
//! cargo run -p sub2api-actix -- --config sub2api.toml
//! ```

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use sub2api_axum::boot::boot;
use sub2api_core::config::Config;

#[derive(Parser)]
#[command(
    name = "sub2api-actix",
    version,
    about = "Pooled AI-API relay with exact billing, on actix-web"
)]
struct Cli {
    /// Config file (default: ./sub2api.toml when present).
    #[arg(long)]
    config: Option<PathBuf>,
}

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("SUB2API_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,sqlx=warn")),
        )
        .init();
    match serve(Cli::parse()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("sub2api-actix: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn serve(cli: Cli) -> Result<(), String> {
    let mut config = Config::load(cli.config.as_deref()).map_err(|e| e.to_string())?;
    // `Config::load` skips the environment when there is no file; overriding twice is harmless.
    config.apply_env(|k| std::env::var(k).ok());
    let booted = boot(config).await.map_err(|e| e.to_string())?;
    for (email, name, key) in &booted.seed.generated_keys {
        // Shown once: only the hash is stored.
        println!("generated key `{name}` for {email}: {}", key.expose());
    }
    let listen = booted.config.listen().to_owned();
    let listener = std::net::TcpListener::bind(&listen)
        .map_err(|e| format!("cannot listen on {listen}: {e}"))?;
    if let Some(key) = &booted.generated_admin_key {
        // Shown once: only its hash is stored.
        println!("generated admin key: {}", key.expose());
    }
    // Relay routes and the admin/user API, as `sub2api serve` mounts them.
    let server = sub2api_actix::api::spawn(booted.relay.clone(), booted.api.clone(), listener)
        .map_err(|e| e.to_string())?;
    println!("sub2api-actix listening on http://{}", server.addr());
    shutdown_signal().await;
    tracing::info!("shutting down: draining open responses");
    server.stop(true).await;
    booted.shutdown().await;
    tracing::info!("stopped cleanly");
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("SIGTERM handler");
        tokio::select! {
            _ = ctrl_c => {},
            _ = term.recv() => {},
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}
