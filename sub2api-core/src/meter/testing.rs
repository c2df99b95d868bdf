//! Shared test helpers: every scanner must give the same answer however its input is split.

use super::UsageScanner;
use crate::domain::Usage;

/// Everything a scanner reports, compared across chunkings.
#[derive(Debug, PartialEq, Eq)]
pub struct Outcome {
    pub usage: Usage,
    pub is_final: bool,
    pub saw_error: bool,
    pub model: Option<String>,
}

pub fn outcome(s: &mut dyn UsageScanner) -> Outcome {
    let usage = s.usage();
    Outcome {
        usage,
        is_final: s.is_final(),
        saw_error: s.saw_error(),
        model: s.model().map(str::to_owned),
    }
}

fn run<S: UsageScanner>(mut s: S, chunks: &[&[u8]]) -> Outcome {
    for c in chunks {
        s.feed(c);
    }
    outcome(&mut s)
}

/// Feeds `bytes` whole, split in two at every position, split in three around every position,
/// and one byte at a time; all must agree.
pub fn every_chunking<S: UsageScanner>(new: impl Fn() -> S, bytes: &[u8]) -> Outcome {
    let whole = run(new(), &[bytes]);
    for i in 0..=bytes.len() {
        assert_eq!(
            run(new(), &[&bytes[..i], &bytes[i..]]),
            whole,
            "split at byte {i}"
        );
        let j = (i + 3).min(bytes.len());
        assert_eq!(
            run(new(), &[&bytes[..i], &bytes[i..j], &bytes[j..]]),
            whole,
            "split at {i} and {j}"
        );
    }
    let mut s = new();
    for b in bytes {
        s.feed(std::slice::from_ref(b));
    }
    assert_eq!(outcome(&mut s), whole, "one byte at a time");
    whole
}

/// An SSE fixture (written with `\n`) with `\n`, `\r\n` and `\r` line endings, every chunking.
pub fn sse_every_ending<S: UsageScanner>(new: impl Fn() -> S, fixture: &str) -> Outcome {
    let lf = every_chunking(&new, fixture.as_bytes());
    for ending in ["\r\n", "\r"] {
        let other = fixture.replace('\n', ending);
        assert_eq!(
            every_chunking(&new, other.as_bytes()),
            lf,
            "line ending {ending:?}"
        );
    }
    lf
}
