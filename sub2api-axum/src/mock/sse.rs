//! Building the reply: the deterministic text and the SSE event sequence.
//!
//! Each SSE frame is `event: NAME\ndata: JSON\n\n` and is yielded as its own body chunk, so the
//! relay's scanner sees real event boundaries (and the byte-split tests cover the rest). Endings
//! are explicit so faults can truncate the sequence exactly after N events.

use std::collections::VecDeque;
use std::time::Duration;

use axum::body::Body;
use bytes::Bytes;
use serde_json::{Value, json};

use super::usage::Usage;

/// Words the reply cycles through; the text is `pieces(n).concat()`.
const WORDS: [&str; 12] = [
    "Hello",
    "from",
    "the",
    "sub2api",
    "mock",
    "vendor:",
    "this",
    "reply",
    "is",
    "deterministic",
    "and",
    "metered.",
];

/// The reply as one piece per word (every word after the first carries its leading space), so
/// the stream sends one `text_delta` per output token and the pieces concatenate to the text.
pub fn pieces(words: usize) -> Vec<String> {
    (0..words)
        .map(|i| {
            let word = WORDS[i % WORDS.len()];
            if i == 0 {
                word.to_owned()
            } else {
                format!(" {word}")
            }
        })
        .collect()
}

/// What a reply says, shared by the stream and non-stream forms.
pub(crate) struct Reply<'a> {
    pub id: &'a str,
    pub model: &'a str,
    pub pieces: &'a [String],
    pub stop_reason: &'a str,
    pub usage: &'a Usage,
    pub full_delta_usage: bool,
}

impl Reply<'_> {
    /// The non-stream Message.
    pub fn message_json(&self) -> Value {
        json!({
            "id": self.id,
            "type": "message",
            "role": "assistant",
            "model": self.model,
            "content": [{ "type": "text", "text": self.pieces.concat() }],
            "stop_reason": self.stop_reason,
            "stop_sequence": null,
            "usage": self.usage.to_json(),
        })
    }

    /// The full event sequence of a successful stream.
    pub fn frames(&self) -> Vec<Bytes> {
        let mut frames = Vec::with_capacity(self.pieces.len() + 6);
        frames.push(frame(
            "message_start",
            &json!({
                "type": "message_start",
                "message": {
                    "id": self.id,
                    "type": "message",
                    "role": "assistant",
                    "model": self.model,
                    "content": [],
                    "stop_reason": null,
                    "stop_sequence": null,
                    "usage": self.usage.start_json(),
                },
            }),
        ));
        frames.push(frame("ping", &json!({ "type": "ping" })));
        frames.push(frame(
            "content_block_start",
            &json!({
                "type": "content_block_start",
                "index": 0,
                "content_block": { "type": "text", "text": "" },
            }),
        ));
        for piece in self.pieces {
            frames.push(frame(
                "content_block_delta",
                &json!({
                    "type": "content_block_delta",
                    "index": 0,
                    "delta": { "type": "text_delta", "text": piece },
                }),
            ));
        }
        frames.push(frame(
            "content_block_stop",
            &json!({ "type": "content_block_stop", "index": 0 }),
        ));
        frames.push(frame(
            "message_delta",
            &json!({
                "type": "message_delta",
                "delta": { "stop_reason": self.stop_reason, "stop_sequence": null },
                "usage": self.usage.delta_json(self.full_delta_usage),
            }),
        ));
        frames.push(frame("message_stop", &json!({ "type": "message_stop" })));
        frames
    }
}

/// One SSE frame.
pub fn frame(event: &str, data: &Value) -> Bytes {
    Bytes::from(format!("event: {event}\ndata: {data}\n\n"))
}

/// The `error` event Anthropic sends after a 200 when it gives up mid-stream.
pub fn overloaded_event() -> Bytes {
    frame(
        "error",
        &json!({
            "type": "error",
            "error": { "type": "overloaded_error", "message": "Overloaded" },
        }),
    )
}

/// How a stream body ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Ending {
    /// Every frame, then a clean end.
    Normal,
    /// The first N frames, then a body error: hyper aborts the chunked response.
    CutAfter(usize),
    /// The first N frames, then an `error` event, then a clean end.
    ErrorAfter(usize),
}

enum Tail {
    End,
    Abort,
}

struct Playback {
    frames: VecDeque<Bytes>,
    delay: Duration,
    started: bool,
    tail: Tail,
}

/// A streaming body playing `frames` with `delay` between chunks and the given ending.
pub(crate) fn body(mut frames: Vec<Bytes>, ending: Ending, delay: Duration) -> Body {
    let tail = match ending {
        Ending::Normal => Tail::End,
        Ending::CutAfter(n) => {
            frames.truncate(n);
            Tail::Abort
        }
        Ending::ErrorAfter(n) => {
            frames.truncate(n);
            frames.push(overloaded_event());
            Tail::End
        }
    };
    play(frames, delay, tail)
}

/// A body sending the first half of `bytes`, then aborting (a non-stream reply cut short).
pub(crate) fn truncated(bytes: Bytes) -> Body {
    let half = bytes.slice(..bytes.len() / 2);
    play(vec![half], Duration::ZERO, Tail::Abort)
}

fn play(frames: Vec<Bytes>, delay: Duration, tail: Tail) -> Body {
    let playback = Playback {
        frames: frames.into(),
        delay,
        started: false,
        tail,
    };
    let stream = futures_util::stream::unfold(playback, |mut p| async move {
        if let Some(frame) = p.frames.pop_front() {
            if p.started && !p.delay.is_zero() {
                tokio::time::sleep(p.delay).await;
            }
            p.started = true;
            return Some((Ok(frame), p));
        }
        match std::mem::replace(&mut p.tail, Tail::End) {
            Tail::End => None,
            Tail::Abort => {
                // Give hyper one Pending so it flushes the frames already buffered; otherwise
                // the abort could swallow the last N events the fault promised to deliver.
                tokio::task::yield_now().await;
                let cut = std::io::Error::new(
                    std::io::ErrorKind::ConnectionAborted,
                    "mock vendor: stream cut on purpose",
                );
                Some((Err(cut), p))
            }
        }
    });
    Body::from_stream(stream)
}
