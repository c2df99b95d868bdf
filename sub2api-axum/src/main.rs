//! `sub2api`: the reference relay binary.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Parser, Subcommand};
use sub2api_axum::boot::{Booted, boot};
use sub2api_core::config::{AccountSeed, Config, GroupSeed, KeySeed, UserSeed};
use sub2api_core::domain::{AccountKind, Platform};
use sub2api_core::money::{Money, Multiplier};

#[derive(Parser)]
#[command(name = "sub2api", version, about = "Pooled AI-API relay with exact billing")]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    /// Config file (default: ./sub2api.toml when present).
    #[arg(long, global = true)]
    config: Option<PathBuf>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the relay (the default).
    Serve,
    /// Start a mock vendor and a relay in front of it, seeded with a user and a key.
    Demo,
    /// Run only the mock Anthropic vendor.
    MockVendor {
        #[arg(long, default_value = "127.0.0.1:9100")]
        listen: SocketAddr,
    },
    /// Ledger administration.
    Ledger {
        #[command(subcommand)]
        command: LedgerCommand,
    },
}

#[derive(Subcommand)]
enum LedgerCommand {
    /// Prove that every balance equals the sum of its journal entries.
    Verify,
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("SUB2API_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,sqlx=warn")),
        )
        .init();
    let cli = Cli::parse();
    let result = match cli.command.unwrap_or(Command::Serve) {
        Command::Serve => serve(cli.config).await,
        Command::Demo => demo().await,
        Command::MockVendor { listen } => sub2api_axum::mock::serve_standalone(listen).await.map_err(|e| e.to_string()),
        Command::Ledger { command: LedgerCommand::Verify } => verify(cli.config).await,
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("sub2api: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("SIGTERM handler");
        tokio::select! {
            _ = ctrl_c => {},
            _ = term.recv() => {},
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
    tracing::info!("shutting down: draining open responses");
}

async fn run(booted: Booted) -> Result<(), String> {
    let listen = booted.config.listen().to_owned();
    let listener = tokio::net::TcpListener::bind(&listen).await.map_err(|e| format!("cannot listen on {listen}: {e}"))?;
    tracing::info!(addr = %listener.local_addr().map_err(|e| e.to_string())?, "relay listening");
    let router = sub2api_axum::router(&booted.relay);
    axum::serve(listener, router).with_graceful_shutdown(shutdown_signal()).await.map_err(|e| e.to_string())?;
    booted.shutdown().await;
    tracing::info!("stopped cleanly");
    Ok(())
}

async fn serve(config: Option<PathBuf>) -> Result<(), String> {
    let config = Config::load(config.as_deref()).map_err(|e| e.to_string())?;
    let booted = boot(config).await.map_err(|e| e.to_string())?;
    for (email, name, key) in &booted.seed.generated_keys {
        // Shown once: only the hash is stored.
        println!("generated key `{name}` for {email}: {}", key.expose());
    }
    run(booted).await
}

async fn verify(config: Option<PathBuf>) -> Result<(), String> {
    let config = Config::load(config.as_deref()).map_err(|e| e.to_string())?;
    let booted = boot(config).await.map_err(|e| e.to_string())?;
    let Some(store) = &booted.store else { return Err("ledger verify needs a database".into()) };
    let mismatches = store.verify_ledger().await.map_err(|e| e.to_string())?;
    booted.shutdown().await;
    if mismatches.is_empty() {
        println!("ledger ok: every balance equals the sum of its journal entries");
        Ok(())
    } else {
        for m in &mismatches {
            println!("MISMATCH {m:?}");
        }
        Err(format!("{} wallet(s) do not match their journal", mismatches.len()))
    }
}

async fn demo() -> Result<(), String> {
    let vendor = sub2api_axum::mock::MockVendor::start().await;
    let base_url = vendor.base_url();
    let key = sub2api_core::config::generate_key();
    let mut config = Config {
        database_url: Some("memory".into()),
        groups: vec![GroupSeed { name: "demo".into(), platform: Platform::Anthropic, rate_multiplier: Multiplier::ONE }],
        accounts: (1..=3)
            .map(|i| AccountSeed {
                name: format!("mock-{i}"),
                platform: Platform::Anthropic,
                kind: AccountKind::Apikey,
                api_key: Some(format!("mock-account-key-{i}")),
                access_token: None,
                base_url: Some(base_url.clone()),
                priority: 50,
                concurrency: 2,
                groups: vec!["demo".into()],
            })
            .collect(),
        users: vec![UserSeed { email: "demo@example.com".into(), balance_usd: Money::usd(5), password: None }],
        keys: vec![KeySeed {
            user: "demo@example.com".into(),
            group: "demo".into(),
            key: Some(key.expose().to_owned()),
            name: Some("demo".into()),
            concurrency: None,
            rpm: None,
        }],
        ..Config::default()
    };
    config.apply_env(|k| std::env::var(k).ok());
    config.database_url = Some("memory".into());
    let listen = config.listen().to_owned();
    let booted = boot(config).await.map_err(|e| e.to_string())?;
    println!(
        r#"
sub2api demo: a mock Anthropic vendor at {base_url} behind a relay at http://{listen}
pool: 3 mock accounts; user demo@example.com with 5.00 USD; key {key}

Try it:
  curl -s http://{listen}/v1/messages -H 'x-api-key: {key}' -H 'content-type: application/json' \
    -d '{{"model":"claude-sonnet-4-5","max_tokens":64,"messages":[{{"role":"user","content":"hello"}}]}}'
  curl -s http://{listen}/v1/usage -H 'x-api-key: {key}'

Claude Code:
  ANTHROPIC_BASE_URL=http://{listen} ANTHROPIC_API_KEY={key} claude

Ctrl-C stops both.
"#,
        key = key.expose()
    );
    let result = run(booted).await;
    drop(vendor);
    result
}
