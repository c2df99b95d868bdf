//! Shared by the OpenAI, Gemini, OAuth and account suites: configs for any platform, the price of
//! a usage, SSE data parsing, and tiny SOCKS5 / HTTP forward proxies that count what they carry.
#![allow(dead_code)]

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use serde_json::Value;
use sub2api_core::config::{AccountSeed, Config, GroupSeed, KeySeed, UserSeed};
use sub2api_core::domain::{AccountKind, Platform, Usage};
use sub2api_core::money::{Money, Multiplier};
use sub2api_core::pricing::PriceTable;
use sub2api_tests::{KEY, USER};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// One group of `platform` with `accounts`, the test user with `balance` and the test key.
pub fn config(platform: Platform, accounts: Vec<AccountSeed>, balance: Money) -> Config {
    let accounts = accounts
        .into_iter()
        .map(|mut a| {
            if a.groups.is_empty() {
                a.groups = vec!["default".into()];
            }
            a
        })
        .collect();
    Config {
        database_url: Some("memory".into()),
        groups: vec![GroupSeed {
            name: "default".into(),
            platform,
            rate_multiplier: Multiplier::ONE,
        }],
        accounts,
        users: vec![UserSeed {
            email: USER.into(),
            balance_usd: balance,
            password: None,
            concurrency: None,
            rpm: None,
        }],
        keys: vec![KeySeed {
            user: USER.into(),
            group: "default".into(),
            key: Some(KEY.into()),
            name: Some("test".into()),
            concurrency: None,
            rpm: None,
        }],
        ..Config::default()
    }
}

/// An API-key account at `base_url`.
pub fn apikey(name: &str, platform: Platform, key: &str, base_url: &str) -> AccountSeed {
    AccountSeed {
        api_key: Some(key.into()),
        base_url: Some(base_url.into()),
        ..AccountSeed::new(name, platform, AccountKind::Apikey)
    }
}

/// The exact price of a usage on a model (multiplier 1), in nano-USD.
pub fn price(model: &str, input: u64, cache_read: u64, output: u64) -> i64 {
    let usage = Usage {
        input_tokens: input,
        cache_read_tokens: cache_read,
        output_tokens: output,
        ..Usage::default()
    };
    PriceTable::bundled()
        .cost(model, &usage, Multiplier::ONE)
        .expect("priced model")
        .nanos()
}

/// Nano-USD spent from the opening balance of 10 USD.
pub async fn spent(h: &sub2api_tests::Harness) -> i64 {
    Money::usd(10).nanos() - h.balance().await.total.nanos()
}

/// The mock's usage override: `input` uncached, `cache_read` read from cache, `output` generated.
pub fn mock_usage(input: u64, cache_read: u64, output: u64) -> sub2api_tests::mock::Usage {
    sub2api_tests::usage(input, 0, 0, cache_read, output)
}

/// Every `data:` payload of an SSE text (JSON where it parses, else a string).
pub fn sse_data(text: &str) -> Vec<Value> {
    text.split("\n\n")
        .filter_map(|frame| {
            let data: Vec<&str> = frame
                .lines()
                .filter_map(|l| l.strip_prefix("data: ").or_else(|| l.strip_prefix("data:")))
                .collect();
            if data.is_empty() {
                return None;
            }
            let d = data.join("\n");
            Some(serde_json::from_str(&d).unwrap_or(Value::String(d)))
        })
        .collect()
}

/// A proxy on 127.0.0.1 that counts the connections it carried.
pub struct TestProxy {
    pub url: String,
    pub connections: Arc<AtomicU64>,
}

impl TestProxy {
    pub fn count(&self) -> u64 {
        self.connections.load(Ordering::SeqCst)
    }
}

async fn pipe(a: TcpStream, b: TcpStream) {
    let (mut ar, mut aw) = a.into_split();
    let (mut br, mut bw) = b.into_split();
    let up = tokio::spawn(async move {
        let _ = tokio::io::copy(&mut ar, &mut bw).await;
        let _ = bw.shutdown().await;
    });
    let _ = tokio::io::copy(&mut br, &mut aw).await;
    let _ = aw.shutdown().await;
    let _ = up.await;
}

/// A SOCKS5 proxy (no auth, CONNECT only).
pub async fn socks5_proxy() -> TestProxy {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("socks5://{}", listener.local_addr().unwrap());
    let connections = Arc::new(AtomicU64::new(0));
    let counter = connections.clone();
    tokio::spawn(async move {
        while let Ok((mut client, _)) = listener.accept().await {
            let counter = counter.clone();
            tokio::spawn(async move {
                let mut head = [0u8; 2];
                client.read_exact(&mut head).await.ok()?;
                let mut methods = vec![0u8; head[1] as usize];
                client.read_exact(&mut methods).await.ok()?;
                client.write_all(&[5, 0]).await.ok()?;
                let mut req = [0u8; 4];
                client.read_exact(&mut req).await.ok()?;
                let host = match req[3] {
                    1 => {
                        let mut a = [0u8; 4];
                        client.read_exact(&mut a).await.ok()?;
                        std::net::Ipv4Addr::from(a).to_string()
                    }
                    3 => {
                        let mut len = [0u8; 1];
                        client.read_exact(&mut len).await.ok()?;
                        let mut name = vec![0u8; len[0] as usize];
                        client.read_exact(&mut name).await.ok()?;
                        String::from_utf8(name).ok()?
                    }
                    _ => return None,
                };
                let mut port = [0u8; 2];
                client.read_exact(&mut port).await.ok()?;
                let upstream = TcpStream::connect((host.as_str(), u16::from_be_bytes(port)))
                    .await
                    .ok()?;
                client
                    .write_all(&[5, 0, 0, 1, 0, 0, 0, 0, 0, 0])
                    .await
                    .ok()?;
                counter.fetch_add(1, Ordering::SeqCst);
                pipe(client, upstream).await;
                Some(())
            });
        }
    });
    TestProxy { url, connections }
}

/// An HTTP forward proxy for `http://` targets: reads the absolute-form request line, connects
/// to its host and pipes the connection (HTTP/1.1 servers accept absolute-form requests).
pub async fn http_proxy() -> TestProxy {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let connections = Arc::new(AtomicU64::new(0));
    let counter = connections.clone();
    tokio::spawn(async move {
        while let Ok((mut client, _)) = listener.accept().await {
            let counter = counter.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut byte = [0u8; 1];
                while !buf.ends_with(b"\r\n") {
                    if client.read(&mut byte).await.ok()? == 0 {
                        return None;
                    }
                    buf.push(byte[0]);
                }
                let line = String::from_utf8_lossy(&buf).into_owned();
                let target = line.split_whitespace().nth(1)?;
                let authority = target
                    .strip_prefix("http://")?
                    .split('/')
                    .next()?
                    .to_owned();
                let mut upstream = TcpStream::connect(authority).await.ok()?;
                upstream.write_all(&buf).await.ok()?;
                counter.fetch_add(1, Ordering::SeqCst);
                pipe(client, upstream).await;
                Some(())
            });
        }
    });
    TestProxy { url, connections }
}
