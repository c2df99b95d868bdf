//! `sub2api`: the reference relay binary.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Parser, Subcommand};
use sub2api_axum::boot::{Booted, boot};
use sub2api_core::config::{AccountSeed, Config, GroupSeed, KeySeed, UserSeed};
use sub2api_core::domain::{AccountKind, Platform};
use sub2api_core::money::{Money, Multiplier};

#[derive(Parser)]
#[command(
    name = "sub2api",
    version,
    about = "Pooled AI-API relay with exact billing"
)]
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
    /// Users (same rules as POST /api/v1/admin/users).
    User {
        #[command(subcommand)]
        command: sub2api_axum::api::cli::UserCommand,
    },
    /// API keys (same rules as POST /api/v1/admin/keys); the key is printed once.
    Key {
        #[command(subcommand)]
        command: sub2api_axum::api::cli::KeyCommand,
    },
    /// Upstream accounts (same rules as POST /api/v1/admin/accounts).
    Account {
        #[command(subcommand)]
        command: AccountCli,
    },
}

#[derive(Subcommand)]
enum AccountCli {
    #[command(flatten)]
    Admin(sub2api_axum::api::cli::AccountCommand),
    /// Start adding a subscription account: prints the sign-in URL (PKCE) and keeps the pending
    /// verifier in the store until `oauth-exchange`.
    OauthUrl {
        /// anthropic (Claude Pro/Max) or openai (ChatGPT/Codex).
        #[arg(long)]
        platform: String,
        /// Name of the account to create.
        #[arg(long)]
        name: String,
        /// Comma-separated group names.
        #[arg(long, default_value = "")]
        groups: String,
        #[arg(long, default_value_t = 50)]
        priority: i32,
        #[arg(long, default_value_t = 4)]
        concurrency: u32,
        #[arg(long)]
        base_url: Option<String>,
        /// A Claude setup token (inference only, one year) instead of a full sign-in.
        #[arg(long)]
        setup_token: bool,
    },
    /// Finish `oauth-url`: exchange what the vendor showed (`code#state`, the callback URL, or the
    /// code) for tokens and save the account.
    OauthExchange {
        #[arg(long)]
        code: String,
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
        Command::MockVendor { listen } => sub2api_axum::mock::serve_standalone(listen)
            .await
            .map_err(|e| e.to_string()),
        Command::Ledger {
            command: LedgerCommand::Verify,
        } => verify(cli.config).await,
        Command::User { command } => sub2api_axum::api::cli::user(cli.config, command).await,
        Command::Key { command } => sub2api_axum::api::cli::key(cli.config, command).await,
        Command::Account {
            command: AccountCli::Admin(command),
        } => sub2api_axum::api::cli::account(cli.config, command).await,
        Command::Account { command } => oauth_command(cli.config, command).await,
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("sub2api: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn oauth_command(config: Option<PathBuf>, cmd: AccountCli) -> Result<(), String> {
    use sub2api_core::oauth;
    let config = Config::load(config.as_deref()).map_err(|e| e.to_string())?;
    let booted = boot(config).await.map_err(|e| e.to_string())?;
    let dir = booted.relay.parts().directory.clone();
    let result = match cmd {
        AccountCli::OauthUrl {
            platform,
            name,
            groups,
            priority,
            concurrency,
            base_url,
            setup_token,
        } => {
            let account = oauth::PendingAccount {
                name,
                groups: groups
                    .split(',')
                    .map(str::trim)
                    .filter(|g| !g.is_empty())
                    .map(str::to_owned)
                    .collect(),
                priority,
                concurrency,
                base_url,
                options: Default::default(),
            };
            match platform.parse::<Platform>() {
                Ok(p) => oauth::begin(dir.as_ref(), &booted.config.oauth, p, setup_token, account)
                    .await
                    .map(|url| {
                        println!("Open this URL, sign in, and run `sub2api account oauth-exchange --code '<what the page shows>'`:");
                        println!("{url}");
                    })
                    .map_err(|e| e.to_string()),
                Err(e) => Err(e),
            }
        }
        AccountCli::OauthExchange { code } => {
            let client = oauth::TokenClient::new(booted.config.oauth.clone(), Default::default());
            oauth::complete(dir.as_ref(), &client, &code)
                .await
                .map(|a| {
                    println!(
                        "saved account `{}` ({} {:?}, id {})",
                        a.name,
                        a.platform.as_str(),
                        a.kind,
                        a.id
                    )
                })
                .map_err(|e| e.to_string())
        }
        AccountCli::Admin(_) => Ok(()),
    };
    booted.shutdown().await;
    result
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
    tracing::info!("shutting down: draining open responses");
}

async fn run(booted: Booted) -> Result<(), String> {
    let listen = booted.config.listen().to_owned();
    let listener = tokio::net::TcpListener::bind(&listen)
        .await
        .map_err(|e| format!("cannot listen on {listen}: {e}"))?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    tracing::info!(%addr, "relay listening");
    // A plain line for scripts and supervisors (the log line may be filtered or coloured).
    println!("sub2api listening on http://{addr}");
    // Relay routes and the admin/user API; ConnectInfo gives key IP allowlists the client address.
    let router = sub2api_axum::api::app(&booted.relay, booted.api.clone());
    axum::serve(
        sub2api_axum::no_delay(listener),
        router.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(shutdown_signal())
    .await
    .map_err(|e| e.to_string())?;
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
    if let Some(key) = &booted.generated_admin_key {
        // Shown once: only its SHA-256 is stored. Set SUB2API_ADMIN_KEY to choose your own.
        println!(
            "generated admin key (Authorization: Bearer on /api/v1/admin/): {}",
            key.expose()
        );
    }
    run(booted).await
}

async fn verify(config: Option<PathBuf>) -> Result<(), String> {
    let config = Config::load(config.as_deref()).map_err(|e| e.to_string())?;
    let booted = boot(config).await.map_err(|e| e.to_string())?;
    let Some(store) = &booted.store else {
        return Err("ledger verify needs a database".into());
    };
    let mismatches = store.verify_ledger().await.map_err(|e| e.to_string())?;
    booted.shutdown().await;
    if mismatches.is_empty() {
        println!("ledger ok: every balance equals the sum of its journal entries");
        Ok(())
    } else {
        for m in &mismatches {
            println!("MISMATCH {m:?}");
        }
        Err(format!(
            "{} wallet(s) do not match their journal",
            mismatches.len()
        ))
    }
}

async fn demo() -> Result<(), String> {
    let vendor = sub2api_axum::mock::MockVendor::start().await;
    let base_url = vendor.base_url();
    let key = sub2api_core::config::generate_key();
    let mut config = Config {
        database_url: Some("memory".into()),
        groups: vec![GroupSeed {
            name: "demo".into(),
            platform: Platform::Anthropic,
            rate_multiplier: Multiplier::ONE,
        }],
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
                ..AccountSeed::new(
                    format!("mock-{i}"),
                    Platform::Anthropic,
                    AccountKind::Apikey,
                )
            })
            .collect(),
        users: vec![UserSeed {
            email: "demo@example.com".into(),
            balance_usd: Money::usd(5),
            password: None,
            concurrency: None,
            rpm: None,
        }],
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
    if let Some(admin) = &booted.generated_admin_key {
        println!(
            "Admin API: curl -s http://{listen}/api/v1/admin/users -H 'Authorization: Bearer {}'\n",
            admin.expose()
        );
    }
    let result = run(booted).await;
    drop(vendor);
    result
}
