//! Resident memory of a server holding many streams open at once.
//!
//! The mock waits `delay` between stream events ([`Knob::EventDelay`]), so each stream stays open
//! for about 17 delays (message_start, block start, 12 word deltas, block stop, message_delta,
//! message_stop). N clients start a stream each; once every one of them has received its first
//! body chunk (so the server has the upstream response, its meter and both connections live), the
//! server's VmRSS is sampled while all N are still open. The streams then run to their end, so
//! each is settled normally.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use sub2api_axum::mock::{Knob, MockState, Scope};

use crate::load::{self, Mode, Target};
use crate::procs::{self, Rss, Server};

/// What holding the streams showed.
#[derive(Clone, Debug, Default)]
pub struct Held {
    pub streams: usize,
    /// Most streams open at the same time (should equal `streams`).
    pub peak_open: usize,
    /// Before the streams.
    pub rss_idle: u64,
    /// Highest VmRSS sampled while `peak_open` streams were open.
    pub rss_open: u64,
    /// VmHWM at the end (peak since the child started).
    pub hwm: u64,
    /// Time until every stream had its first chunk.
    pub open_time: Option<Duration>,
    pub completed: usize,
    pub errors: usize,
    pub first_error: Option<String>,
}

pub async fn hold_open(
    client: &reqwest::Client,
    server: &Server,
    mock: &MockState,
    n: usize,
    delay: Duration,
) -> Held {
    let target = Target::of(server);
    // One short request first, so the idle figure includes a booted, connected server.
    let _ = load::run(client, &target, Mode::Stream, 1, Duration::from_millis(100)).await;
    let mut held = Held {
        streams: n,
        rss_idle: procs::rss(server.pid).rss,
        ..Held::default()
    };

    mock.set(Scope::AllKeys, Knob::EventDelay(delay));
    let open = Arc::new(AtomicUsize::new(0));
    let start = Instant::now();
    let tasks: Vec<_> = (0..n)
        .map(|i| {
            let client = client.clone();
            let url = target.messages.clone();
            let open = open.clone();
            let key = load::api_key(i % target.users.max(1));
            tokio::spawn(async move {
                let mut res =
                    load::request(&client, &url, &key, Mode::Stream, &format!("hold-{i}"))
                        .send()
                        .await
                        .map_err(|e| format!("send: {e}"))?;
                if res.status() != reqwest::StatusCode::OK {
                    return Err(format!("status {}", res.status()));
                }
                let mut body = Vec::new();
                let first = res.chunk().await.map_err(|e| format!("body: {e}"))?;
                body.extend_from_slice(first.as_deref().unwrap_or_default());
                open.fetch_add(1, Ordering::SeqCst);
                let rest = async {
                    while let Some(c) = res.chunk().await.map_err(|e| format!("body: {e}"))? {
                        body.extend_from_slice(&c);
                    }
                    Ok::<_, String>(())
                }
                .await;
                open.fetch_sub(1, Ordering::SeqCst);
                rest?;
                if load::complete(Mode::Stream, &body) {
                    Ok(())
                } else {
                    Err("incomplete stream".to_owned())
                }
            })
        })
        .collect();

    // Sample until every task is done; bounded by the streams' own length plus slack.
    let bound = delay * 40 + Duration::from_secs(60);
    let mut tick = tokio::time::interval(Duration::from_millis(20));
    while start.elapsed() < bound && !tasks.iter().all(|t| t.is_finished()) {
        tick.tick().await;
        let now_open = open.load(Ordering::SeqCst);
        let Rss { rss, .. } = procs::rss(server.pid);
        if now_open > held.peak_open {
            held.peak_open = now_open;
            held.rss_open = rss;
        } else if now_open == held.peak_open && now_open > 0 {
            held.rss_open = held.rss_open.max(rss);
        }
        if now_open == n && held.open_time.is_none() {
            held.open_time = Some(start.elapsed());
        }
    }
    for t in tasks {
        if !t.is_finished() {
            t.abort();
        }
        match t.await {
            Ok(Ok(())) => held.completed += 1,
            Ok(Err(e)) => {
                held.errors += 1;
                held.first_error.get_or_insert(e);
            }
            Err(_) => {
                held.errors += 1;
                held.first_error
                    .get_or_insert_with(|| "did not finish in time".to_owned());
            }
        }
    }
    mock.clear(Scope::AllKeys);
    held.hwm = procs::rss(server.pid).hwm;
    held
}
