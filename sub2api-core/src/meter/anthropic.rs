//! Usage scanners for Anthropic Messages responses.
//!
//! [`AnthropicSseScanner`] reads a stream incrementally. It is fed exactly the bytes sent to the
//! client, split anywhere (inside `\r\n`, inside a UTF-8 character), and must give the same answer
//! however the stream was chunked. Content frames (`content_block_*`, `ping`) dominate a stream
//! and can be megabytes long, so the scanner decides from the `event:` line (or, without one, from
//! the first bytes of the JSON, `{"type":"..."`) whether a frame matters, and skips the rest of an
//! unneeded frame without copying or parsing it. Only `message_start` and `message_delta` data is
//! kept (bounded by [`MAX_FRAME_BYTES`]) and parsed.
//!
//! [`AnthropicJsonScanner`] reads a non-stream body: it keeps the bytes (bounded) and parses them
//! once when asked.
//!
//! Usage combination follows the wire facts: `message_start` carries the input side (with the
//! 5m/1h cache-write split) and a placeholder output count; every `message_delta` carries
//! cumulative usage that overwrites output and, when present, the input-side fields.

use serde::Deserialize;

use super::UsageScanner;
use crate::domain::Usage;

mod usage_object;

use usage_object::{Only, UsageObject};

/// The largest `data:` payload kept for parsing. A usage frame is a few hundred bytes; a larger
/// one is dropped (and counts nothing) rather than letting a stream grow the buffer.
pub const MAX_FRAME_BYTES: usize = 1 << 20;

/// The largest non-stream body kept whole. Past it only a tail window is kept, where Anthropic
/// puts `usage`.
pub const MAX_BODY_BYTES: usize = 32 << 20;

/// The tail window kept after a body exceeds [`MAX_BODY_BYTES`].
const BODY_TAIL_BYTES: usize = 64 << 10;

/// Longest event name we bother to remember; longer names are none of ours.
const MAX_EVENT_NAME: usize = 64;

/// How far into a `data:` payload we look for a leading `"type"` before giving up sniffing and
/// keeping the whole frame.
const MAX_SNIFF: usize = 256;

const BOM: &[u8] = b"\xEF\xBB\xBF";

/// The frame kinds that matter for metering.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    MessageStart,
    MessageDelta,
    MessageStop,
    Error,
    /// `content_block_delta`: skipped unparsed, but counted, because a stream cut before
    /// `message_delta` is billed for the output seen, and every delta carries at least one token.
    ContentDelta,
    /// Everything else (`content_block_start|stop`, `ping`, unknown): skipped.
    Other,
}

impl Kind {
    fn from_name(name: &[u8]) -> Kind {
        match name {
            b"message_start" => Kind::MessageStart,
            b"message_delta" => Kind::MessageDelta,
            b"message_stop" => Kind::MessageStop,
            b"error" => Kind::Error,
            b"content_block_delta" => Kind::ContentDelta,
            _ => Kind::Other,
        }
    }

    /// Only these frames' payloads carry usage; the others matter by their kind alone.
    fn needs_data(self) -> bool {
        matches!(self, Kind::MessageStart | Kind::MessageDelta)
    }
}

/// Where the scanner is within the current line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Line {
    /// Reading the field name (kept in `head`, at most a few bytes).
    Field,
    /// Reading an `event:` value (kept in `event_name`, bounded).
    EventValue,
    /// Reading a `data:` value that is kept (`data_mode` is `Sniff` or `Keep`).
    DataKeep,
    /// The rest of the line does not matter.
    Skip,
}

/// What happens to the `data:` payload of the event being built.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum DataMode {
    /// No `data:` line yet.
    None,
    /// No `event:` line: keeping the first bytes until `{"type":"..."` tells the kind.
    Sniff,
    /// Keeping the payload to parse it at dispatch.
    Keep,
    /// Not needed (or too large): only the kind counts.
    Skip,
}

/// Incremental scanner for an Anthropic Messages SSE stream.
#[derive(Debug)]
pub struct AnthropicSseScanner {
    line: Line,
    /// Field name of the current line (`event`, `data`, maybe behind a BOM).
    head: Vec<u8>,
    /// A `\r` ended the last line; a `\n` right after it belongs to the same line ending.
    after_cr: bool,
    /// The next value byte is the optional single space after `:`.
    strip_space: bool,
    /// Still on the first line of the stream (where a BOM may appear).
    first_line: bool,
    event_name: Vec<u8>,
    /// Kind named by the current event's `event:` line.
    event: Option<Kind>,
    /// Kind read from the payload's leading `"type"` when there was no `event:` line.
    sniffed: Option<Kind>,
    data_mode: DataMode,
    data: Vec<u8>,
    usage: Usage,
    model: Option<String>,
    is_final: bool,
    saw_error: bool,
    /// `content_block_delta` events seen.
    deltas: u64,
}

impl Default for AnthropicSseScanner {
    fn default() -> Self {
        Self::new()
    }
}

impl AnthropicSseScanner {
    pub fn new() -> Self {
        AnthropicSseScanner {
            line: Line::Field,
            head: Vec::with_capacity(8),
            after_cr: false,
            strip_space: false,
            first_line: true,
            event_name: Vec::new(),
            event: None,
            sniffed: None,
            data_mode: DataMode::None,
            data: Vec::new(),
            usage: Usage::default(),
            model: None,
            is_final: false,
            saw_error: false,
            deltas: 0,
        }
    }

    /// Consumes bytes of the current line (no line terminator inside `seg`).
    fn take(&mut self, mut seg: &[u8]) {
        while !seg.is_empty() {
            match self.line {
                Line::Field => match seg.iter().position(|&b| b == b':') {
                    Some(i) => {
                        if self.push_head(&seg[..i]) {
                            self.begin_value();
                        } else {
                            self.line = Line::Skip;
                        }
                        seg = &seg[i + 1..];
                    }
                    None => {
                        if !self.push_head(seg) {
                            self.line = Line::Skip;
                        }
                        return;
                    }
                },
                Line::EventValue => {
                    seg = self.strip_leading_space(seg);
                    let room = (MAX_EVENT_NAME + 1).saturating_sub(self.event_name.len());
                    self.event_name
                        .extend_from_slice(&seg[..seg.len().min(room)]);
                    return;
                }
                Line::DataKeep => {
                    seg = self.strip_leading_space(seg);
                    self.push_data(seg);
                    return;
                }
                Line::Skip => return,
            }
        }
    }

    /// Appends to the field name; false when it is too long to be `event` or `data`.
    fn push_head(&mut self, bytes: &[u8]) -> bool {
        if self.head.len() + bytes.len() > BOM.len() + 5 {
            return false;
        }
        self.head.extend_from_slice(bytes);
        true
    }

    fn field_name(&self) -> &[u8] {
        match self.head.strip_prefix(BOM) {
            Some(rest) if self.first_line => rest,
            _ => &self.head,
        }
    }

    fn strip_leading_space<'a>(&mut self, seg: &'a [u8]) -> &'a [u8] {
        if self.strip_space && !seg.is_empty() {
            self.strip_space = false;
            if seg[0] == b' ' {
                return &seg[1..];
            }
        }
        seg
    }

    /// A `:` ended the field name.
    fn begin_value(&mut self) {
        self.strip_space = true;
        match self.field_name() {
            b"event" => {
                self.event_name.clear();
                self.line = Line::EventValue;
            }
            b"data" => self.begin_data(),
            _ => self.line = Line::Skip,
        }
    }

    /// A `data` field starts: decide (once per event) whether its payload is kept.
    fn begin_data(&mut self) {
        match self.data_mode {
            DataMode::None => {
                self.data_mode = match self.event {
                    Some(kind) if kind.needs_data() => DataMode::Keep,
                    Some(_) => DataMode::Skip,
                    None => DataMode::Sniff,
                };
            }
            // Multi-line data: SSE joins the lines with `\n`.
            DataMode::Sniff | DataMode::Keep => self.push_data(b"\n"),
            DataMode::Skip => {}
        }
        self.line = match self.data_mode {
            DataMode::Sniff | DataMode::Keep => Line::DataKeep,
            _ => Line::Skip,
        };
    }

    fn push_data(&mut self, mut bytes: &[u8]) {
        while self.data_mode == DataMode::Sniff && !bytes.is_empty() {
            // Take only what the sniff can use, so an unneeded frame is never copied.
            let n = bytes
                .len()
                .min((MAX_SNIFF + 1).saturating_sub(self.data.len()).max(1));
            self.data.extend_from_slice(&bytes[..n]);
            bytes = &bytes[n..];
            match sniff_type(&self.data) {
                Sniff::Need => {}
                Sniff::Unknown => self.data_mode = DataMode::Keep,
                Sniff::Type(kind) => {
                    self.sniffed = Some(kind);
                    if kind.needs_data() {
                        self.data_mode = DataMode::Keep;
                    } else {
                        self.data.clear();
                        self.data_mode = DataMode::Skip;
                        self.line = Line::Skip;
                        return;
                    }
                }
            }
        }
        if bytes.is_empty() {
            return;
        }
        if self.data.len() + bytes.len() > MAX_FRAME_BYTES {
            // Too large to be a usage frame we can trust: count nothing from it.
            self.data = Vec::new();
            self.data_mode = DataMode::Skip;
            self.line = Line::Skip;
            return;
        }
        self.data.extend_from_slice(bytes);
    }

    fn end_line(&mut self) {
        match self.line {
            Line::Field => match self.field_name() {
                b"" => self.dispatch(),
                b"data" => self.begin_data(),
                b"event" => self.event = None,
                _ => {}
            },
            Line::EventValue => {
                self.event = if self.event_name.is_empty() {
                    None
                } else if self.event_name.len() > MAX_EVENT_NAME {
                    Some(Kind::Other)
                } else {
                    Some(Kind::from_name(&self.event_name))
                };
            }
            Line::DataKeep | Line::Skip => {}
        }
        self.line = Line::Field;
        self.head.clear();
        self.strip_space = false;
        self.first_line = false;
    }

    /// A blank line: the event is complete. Events without data are not dispatched (as in SSE).
    fn dispatch(&mut self) {
        if self.data_mode != DataMode::None {
            let kind = self.event.or(self.sniffed);
            match kind {
                Some(Kind::MessageStop) => self.is_final = true,
                Some(Kind::Error) => self.saw_error = true,
                Some(Kind::ContentDelta) => self.deltas += 1,
                Some(Kind::Other) => {}
                Some(kind @ (Kind::MessageStart | Kind::MessageDelta)) => {
                    if self.data_mode == DataMode::Keep {
                        self.apply_frame(Some(kind));
                    }
                }
                // No event line and no leading type: the payload was kept; let it say.
                None => {
                    if matches!(self.data_mode, DataMode::Keep | DataMode::Sniff) {
                        self.apply_frame(None);
                    }
                }
            }
        }
        self.event = None;
        self.sniffed = None;
        self.data_mode = DataMode::None;
        if self.data.capacity() > 64 << 10 {
            self.data = Vec::new();
        } else {
            self.data.clear();
        }
    }

    fn apply_frame(&mut self, kind: Option<Kind>) {
        let Ok(frame) = serde_json::from_slice::<Frame>(&self.data) else {
            return;
        };
        let kind =
            kind.unwrap_or_else(|| Kind::from_name(frame.kind.as_deref().unwrap_or("").as_bytes()));
        match kind {
            Kind::MessageStart => {
                if let Some(message) = frame.message {
                    if let Some(model) = message.model {
                        self.model = Some(model);
                    }
                    if let Some(usage) = message.usage.and_then(|u| u.0) {
                        self.usage = Usage::default();
                        merge_usage(&mut self.usage, &usage);
                    }
                }
            }
            Kind::MessageDelta => {
                if let Some(usage) = frame.usage.and_then(|u| u.0) {
                    merge_usage(&mut self.usage, &usage);
                }
            }
            Kind::MessageStop => self.is_final = true,
            Kind::Error => self.saw_error = true,
            Kind::ContentDelta => self.deltas += 1,
            Kind::Other => {}
        }
    }
}

impl UsageScanner for AnthropicSseScanner {
    fn feed(&mut self, mut chunk: &[u8]) {
        while !chunk.is_empty() {
            if self.after_cr {
                self.after_cr = false;
                if chunk[0] == b'\n' {
                    chunk = &chunk[1..];
                    continue;
                }
            }
            match chunk.iter().position(|&b| b == b'\n' || b == b'\r') {
                Some(i) => {
                    self.take(&chunk[..i]);
                    self.end_line();
                    self.after_cr = chunk[i] == b'\r';
                    chunk = &chunk[i + 1..];
                }
                None => {
                    self.take(chunk);
                    return;
                }
            }
        }
    }

    fn is_final(&self) -> bool {
        self.is_final
    }

    /// Until the stream is final, output is at least the number of content deltas seen: the
    /// vendor's running count arrives only with `message_delta`, which a cut stream never sends.
    fn usage(&mut self) -> Usage {
        let mut u = self.usage;
        if !self.is_final {
            u.output_tokens = u.output_tokens.max(self.deltas);
        }
        u
    }

    fn saw_error(&self) -> bool {
        self.saw_error
    }

    fn model(&self) -> Option<&str> {
        self.model.as_deref()
    }
}

/// Scanner for a non-stream Messages body: keeps the bytes, parses them once on demand.
#[derive(Debug, Default)]
pub struct AnthropicJsonScanner {
    /// The body, up to [`MAX_BODY_BYTES`].
    body: Vec<u8>,
    /// Once the body overflowed: its last bytes (at most twice [`BODY_TAIL_BYTES`]).
    tail: Option<Vec<u8>>,
    fed: u64,
    /// `fed` when the cached result was computed.
    parsed_at: Option<u64>,
    usage: Usage,
    model: Option<String>,
    is_final: bool,
    /// From the leading `{"type":"error"` (known before parsing) or the parse.
    sniffed_error: bool,
    parsed_error: bool,
    sniff_done: bool,
}

impl AnthropicJsonScanner {
    pub fn new() -> Self {
        Self::default()
    }

    fn parse(&mut self) {
        self.usage = Usage::default();
        self.model = None;
        self.is_final = false;
        self.parsed_error = false;
        match &self.tail {
            None => {
                let Ok(body) = serde_json::from_slice::<Body>(&self.body) else {
                    return;
                };
                self.parsed_error = body.kind.as_deref() == Some("error");
                self.model = body.model;
                if let Some(usage) = body.usage.and_then(|u| u.0) {
                    merge_usage(&mut self.usage, &usage);
                    self.is_final = true;
                }
            }
            Some(tail) => {
                if let Some(usage) = usage_in_tail(tail) {
                    merge_usage(&mut self.usage, &usage);
                    self.is_final = true;
                }
            }
        }
    }
}

impl UsageScanner for AnthropicJsonScanner {
    fn feed(&mut self, chunk: &[u8]) {
        if chunk.is_empty() {
            return;
        }
        self.fed += chunk.len() as u64;
        match &mut self.tail {
            None if self.body.len() + chunk.len() <= MAX_BODY_BYTES => {
                self.body.extend_from_slice(chunk)
            }
            None => {
                // Keep the head for the error sniff below; from now on only the tail grows.
                let mut tail =
                    self.body[self.body.len().saturating_sub(BODY_TAIL_BYTES)..].to_vec();
                tail.extend_from_slice(chunk);
                self.body.truncate(MAX_SNIFF);
                self.body.shrink_to_fit();
                self.tail = Some(trim_tail(tail));
            }
            Some(tail) => {
                tail.extend_from_slice(chunk);
                if tail.len() > 2 * BODY_TAIL_BYTES {
                    *tail = trim_tail(std::mem::take(tail));
                }
            }
        }
        if !self.sniff_done {
            match sniff_type(&self.body) {
                Sniff::Need => {}
                Sniff::Unknown => self.sniff_done = true,
                Sniff::Type(kind) => {
                    self.sniff_done = true;
                    self.sniffed_error = kind == Kind::Error;
                }
            }
        }
    }

    fn is_final(&self) -> bool {
        self.is_final
    }

    fn usage(&mut self) -> Usage {
        if self.parsed_at != Some(self.fed) {
            self.parse();
            self.parsed_at = Some(self.fed);
        }
        self.usage
    }

    fn saw_error(&self) -> bool {
        self.sniffed_error || self.parsed_error
    }

    fn model(&self) -> Option<&str> {
        self.model.as_deref()
    }
}

fn trim_tail(mut tail: Vec<u8>) -> Vec<u8> {
    if tail.len() > BODY_TAIL_BYTES {
        tail.drain(..tail.len() - BODY_TAIL_BYTES);
    }
    tail
}

/// Finds the last `"usage": {...}` object in the tail of an oversized body. A literal `"usage"`
/// followed by `:` can only be a key; Anthropic writes the top-level `usage` last.
fn usage_in_tail(tail: &[u8]) -> Option<UsageObject> {
    let key = b"\"usage\"";
    let mut end = tail.len();
    while let Some(pos) = tail[..end].windows(key.len()).rposition(|w| w == key) {
        let rest = &tail[pos + key.len()..];
        let rest = trim_ws(rest);
        if let Some(rest) = rest.strip_prefix(b":") {
            let rest = trim_ws(rest);
            if rest.first() == Some(&b'{') {
                let mut values =
                    serde_json::Deserializer::from_slice(rest).into_iter::<Only<UsageObject>>();
                if let Some(Ok(Only(Some(v)))) = values.next() {
                    return Some(v);
                }
            }
        }
        end = pos;
    }
    None
}

fn trim_ws(b: &[u8]) -> &[u8] {
    let n = b.iter().take_while(|c| c.is_ascii_whitespace()).count();
    &b[n..]
}

/// What the first bytes of a JSON payload say about its `type`.
#[derive(Debug, PartialEq, Eq)]
enum Sniff {
    /// Not enough bytes yet.
    Need,
    /// `type` is not the first key (or the payload is not an object): parse it whole.
    Unknown,
    Type(Kind),
}

/// Reads a leading `{"type":"NAME"` (whitespace allowed). The answer for a prefix never changes
/// once it is not [`Sniff::Need`], so chunking cannot change the outcome.
fn sniff_type(b: &[u8]) -> Sniff {
    let mut i = 0;
    for lit in [&b"{"[..], b"\"type\"", b":", b"\""] {
        while i < b.len() && b[i].is_ascii_whitespace() {
            i += 1;
        }
        let avail = &b[i..];
        let n = avail.len().min(lit.len());
        if avail[..n] != lit[..n] {
            return Sniff::Unknown;
        }
        if n < lit.len() {
            return if b.len() > MAX_SNIFF {
                Sniff::Unknown
            } else {
                Sniff::Need
            };
        }
        i += lit.len();
    }
    let rest = &b[i..];
    match rest.iter().position(|&c| c == b'"' || c == b'\\') {
        Some(j) if rest[j] == b'"' => Sniff::Type(Kind::from_name(&rest[..j])),
        Some(_) => Sniff::Unknown,
        None if rest.len() > MAX_EVENT_NAME => Sniff::Type(Kind::Other),
        None => Sniff::Need,
    }
}

/// The parts of an SSE payload we read; everything else is skipped by serde without allocating.
#[derive(Deserialize)]
struct Frame {
    #[serde(rename = "type")]
    kind: Option<String>,
    message: Option<MessageHead>,
    usage: Option<Only<UsageObject>>,
}

#[derive(Deserialize)]
struct MessageHead {
    model: Option<String>,
    usage: Option<Only<UsageObject>>,
}

/// The parts of a non-stream body we read.
#[derive(Deserialize)]
struct Body {
    #[serde(rename = "type")]
    kind: Option<String>,
    model: Option<String>,
    usage: Option<Only<UsageObject>>,
}

/// Merges one Anthropic `usage` object into `u`: fields present (and non-null) overwrite, absent
/// ones keep their value.
///
/// Cache writes: the `cache_creation` split wins when present; if the total
/// `cache_creation_input_tokens` exceeds the split, the remainder is billed as 5m writes (never
/// undercharge). A total without a split keeps the known 1h part and puts the rest in 5m, which
/// for a fresh usage means "all 5m" (old API versions only had the total).
fn merge_usage(u: &mut Usage, v: &UsageObject) {
    if let Some(n) = v.input_tokens {
        u.input_tokens = n;
    }
    if let Some(n) = v.output_tokens {
        u.output_tokens = n;
    }
    if let Some(n) = v.cache_read_input_tokens {
        u.cache_read_tokens = n;
    }
    let total = v.cache_creation_input_tokens;
    match v.cache_creation {
        Some((m5, h1)) => {
            let (m5, h1) = (m5.unwrap_or(0), h1.unwrap_or(0));
            let extra = total.unwrap_or(0).saturating_sub(m5.saturating_add(h1));
            u.cache_creation_5m_tokens = m5.saturating_add(extra);
            u.cache_creation_1h_tokens = h1;
        }
        None => {
            if let Some(total) = total {
                let h1 = u.cache_creation_1h_tokens.min(total);
                u.cache_creation_1h_tokens = h1;
                u.cache_creation_5m_tokens = total - h1;
            }
        }
    }
    if let Some(n) = v.web_search_requests {
        u.web_search_requests = n;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Everything a scanner reports, compared across chunkings.
    #[derive(Debug, PartialEq, Eq)]
    struct Outcome {
        usage: Usage,
        is_final: bool,
        saw_error: bool,
        model: Option<String>,
    }

    fn outcome(s: &mut dyn UsageScanner) -> Outcome {
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

    /// Feeds `bytes` whole, split in two at every position, and one byte at a time; all must agree.
    fn every_chunking<S: UsageScanner>(new: impl Fn() -> S, bytes: &[u8]) -> Outcome {
        let whole = run(new(), &[bytes]);
        for i in 0..=bytes.len() {
            let got = run(new(), &[&bytes[..i], &bytes[i..]]);
            assert_eq!(got, whole, "split at byte {i}");
        }
        let mut s = new();
        for b in bytes {
            s.feed(std::slice::from_ref(b));
        }
        assert_eq!(outcome(&mut s), whole, "one byte at a time");
        whole
    }

    /// Runs an SSE fixture (written with `\n`) with `\n`, `\r\n` and `\r` line endings, every
    /// chunking; all must agree.
    fn sse(fixture: &str) -> Outcome {
        let lf = every_chunking(AnthropicSseScanner::new, fixture.as_bytes());
        for ending in ["\r\n", "\r"] {
            let other = fixture.replace('\n', ending);
            assert_eq!(
                every_chunking(AnthropicSseScanner::new, other.as_bytes()),
                lf,
                "line ending {ending:?}"
            );
        }
        lf
    }

    fn json(fixture: &str) -> Outcome {
        every_chunking(AnthropicJsonScanner::new, fixture.as_bytes())
    }

    fn usage(input: u64, m5: u64, h1: u64, read: u64, output: u64) -> Usage {
        Usage {
            input_tokens: input,
            output_tokens: output,
            cache_creation_5m_tokens: m5,
            cache_creation_1h_tokens: h1,
            cache_read_tokens: read,
            web_search_requests: 0,
        }
    }

    const TEXT: &str = r#"event: message_start
data: {"type":"message_start","message":{"id":"msg_01XFDUDYJgAACzvnptvVoYEL","type":"message","role":"assistant","model":"claude-sonnet-4-5-20250929","content":[],"stop_reason":null,"stop_sequence":null,"usage":{"input_tokens":25,"cache_creation_input_tokens":0,"cache_read_input_tokens":0,"cache_creation":{"ephemeral_5m_input_tokens":0,"ephemeral_1h_input_tokens":0},"output_tokens":1,"service_tier":"standard"}}}

event: content_block_start
data: {"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}

event: ping
data: {"type": "ping"}

event: content_block_delta
data: {"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"Hello"}}

event: content_block_delta
data: {"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"! 你好，世界 🌍 — \"usage\":{\"output_tokens\":999} event: message_stop"}}

event: content_block_stop
data: {"type":"content_block_stop","index":0}

event: message_delta
data: {"type":"message_delta","delta":{"stop_reason":"end_turn","stop_sequence":null},"usage":{"output_tokens":15}}

event: message_stop
data: {"type":"message_stop"}

"#;

    const TOOL_USE: &str = r#"event: message_start
data: {"type":"message_start","message":{"id":"msg_014p7gG3wDgGV9EUtLvnow3U","type":"message","role":"assistant","model":"claude-haiku-4-5-20251001","stop_sequence":null,"usage":{"input_tokens":472,"output_tokens":2},"content":[],"stop_reason":null}}

event: content_block_start
data: {"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}

event: ping
data: {"type": "ping"}

event: content_block_delta
data: {"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"Okay"}}

event: content_block_delta
data: {"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":", let's check the weather for San Francisco, CA:"}}

event: content_block_stop
data: {"type":"content_block_stop","index":0}

event: content_block_start
data: {"type":"content_block_start","index":1,"content_block":{"type":"tool_use","id":"toolu_01T1x1fJ34qAmk2tNTrN7Up6","name":"get_weather","input":{}}}

event: content_block_delta
data: {"type":"content_block_delta","index":1,"delta":{"type":"input_json_delta","partial_json":""}}

event: content_block_delta
data: {"type":"content_block_delta","index":1,"delta":{"type":"input_json_delta","partial_json":"{\"location\":"}}

event: content_block_delta
data: {"type":"content_block_delta","index":1,"delta":{"type":"input_json_delta","partial_json":" \"San Francisco, CA\", \"usage\": {\"output_tokens\": 5000}}"}}

event: content_block_stop
data: {"type":"content_block_stop","index":1}

event: message_delta
data: {"type":"message_delta","delta":{"stop_reason":"tool_use","stop_sequence":null},"usage":{"output_tokens":89}}

event: message_stop
data: {"type":"message_stop"}

"#;

    const THINKING: &str = r#"event: ping
data: {"type": "ping"}

event: message_start
data: {"type":"message_start","message":{"id":"msg_01","type":"message","role":"assistant","model":"claude-opus-4-5-20251101","content":[],"stop_reason":null,"stop_sequence":null,"usage":{"input_tokens":12,"cache_creation_input_tokens":0,"cache_read_input_tokens":4096,"output_tokens":3}}}

event: content_block_start
data: {"type":"content_block_start","index":0,"content_block":{"type":"thinking","thinking":"","signature":""}}

event: content_block_delta
data: {"type":"content_block_delta","index":0,"delta":{"type":"thinking_delta","thinking":"Let me solve this step by step:\n\n1. First break down 27 * 453"}}

event: ping
data: {"type": "ping"}

event: content_block_delta
data: {"type":"content_block_delta","index":0,"delta":{"type":"thinking_delta","thinking":"\n2. 453 = 400 + 50 + 3"}}

event: content_block_delta
data: {"type":"content_block_delta","index":0,"delta":{"type":"signature_delta","signature":"EqQBCgIYAhIM1gbcDa9GJwZA2b3hGgxBdjrkzLoky3dl1pkiMOYds..."}}

event: content_block_stop
data: {"type":"content_block_stop","index":0}

event: content_block_start
data: {"type":"content_block_start","index":1,"content_block":{"type":"text","text":""}}

event: content_block_delta
data: {"type":"content_block_delta","index":1,"delta":{"type":"text_delta","text":"27 * 453 = 12,231"}}

event: content_block_stop
data: {"type":"content_block_stop","index":1}

event: ping
data: {"type": "ping"}

event: message_delta
data: {"type":"message_delta","delta":{"stop_reason":"end_turn","stop_sequence":null},"usage":{"output_tokens":240}}

event: ping
data: {"type": "ping"}

event: message_stop
data: {"type":"message_stop"}

"#;

    const CACHE_SPLIT: &str = r#"event: message_start
data: {"type":"message_start","message":{"id":"msg_02","type":"message","role":"assistant","model":"claude-sonnet-4-5-20250929","content":[],"stop_reason":null,"stop_sequence":null,"usage":{"input_tokens":7,"cache_creation_input_tokens":3000,"cache_read_input_tokens":500,"cache_creation":{"ephemeral_5m_input_tokens":1000,"ephemeral_1h_input_tokens":2000},"output_tokens":1,"service_tier":"standard"}}}

event: content_block_start
data: {"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}

event: content_block_delta
data: {"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"cached"}}

event: content_block_stop
data: {"type":"content_block_stop","index":0}

event: message_delta
data: {"type":"message_delta","delta":{"stop_reason":"end_turn","stop_sequence":null},"usage":{"output_tokens":42}}

event: message_stop
data: {"type":"message_stop"}

"#;

    /// Older API versions: a cache-write total without the TTL split.
    const LEGACY_CACHE: &str = r#"event: message_start
data: {"type":"message_start","message":{"id":"msg_03","type":"message","role":"assistant","model":"claude-3-5-haiku-20241022","content":[],"stop_reason":null,"stop_sequence":null,"usage":{"input_tokens":3,"cache_creation_input_tokens":1500,"cache_read_input_tokens":0,"output_tokens":1}}}

event: message_delta
data: {"type":"message_delta","delta":{"stop_reason":"end_turn","stop_sequence":null},"usage":{"output_tokens":9}}

event: message_stop
data: {"type":"message_stop"}

"#;

    /// Web search: the final message_delta restates the input side and counts searches.
    const DELTA_INPUT: &str = r#"event: message_start
data: {"type":"message_start","message":{"id":"msg_04","type":"message","role":"assistant","model":"claude-sonnet-4-5-20250929","content":[],"stop_reason":null,"stop_sequence":null,"usage":{"input_tokens":2679,"cache_creation_input_tokens":40,"cache_read_input_tokens":0,"cache_creation":{"ephemeral_5m_input_tokens":0,"ephemeral_1h_input_tokens":40},"output_tokens":3}}}

event: content_block_start
data: {"type":"content_block_start","index":0,"content_block":{"type":"server_tool_use","id":"srvtoolu_014hJH82Qum7Td6UV8gDXThB","name":"web_search","input":{}}}

event: content_block_delta
data: {"type":"content_block_delta","index":0,"delta":{"type":"input_json_delta","partial_json":"{\"query\":\"weather NYC today\"}"}}

event: content_block_stop
data: {"type":"content_block_stop","index":0}

event: content_block_start
data: {"type":"content_block_start","index":1,"content_block":{"type":"web_search_tool_result","tool_use_id":"srvtoolu_014hJH82Qum7Td6UV8gDXThB","content":[{"type":"web_search_result","title":"Weather in New York City","url":"https://weather.example/nyc","encrypted_content":"Ev0DCioIAxgCIiQ3NmU4ZmI4OC1k"}]}}

event: content_block_stop
data: {"type":"content_block_stop","index":1}

event: message_delta
data: {"type":"message_delta","delta":{"stop_reason":"end_turn","stop_sequence":null},"usage":{"input_tokens":10682,"cache_creation_input_tokens":50,"cache_read_input_tokens":1200,"output_tokens":510,"server_tool_use":{"web_search_requests":1}}}

event: message_delta
data: {"type":"message_delta","delta":{"stop_reason":"end_turn","stop_sequence":null},"usage":{"input_tokens":null,"output_tokens":511}}

event: message_stop
data: {"type":"message_stop"}

"#;

    const ERROR_AFTER_200: &str = r#"event: message_start
data: {"type":"message_start","message":{"id":"msg_05","type":"message","role":"assistant","model":"claude-sonnet-4-5-20250929","content":[],"stop_reason":null,"stop_sequence":null,"usage":{"input_tokens":1800,"cache_creation_input_tokens":0,"cache_read_input_tokens":0,"output_tokens":1}}}

event: content_block_start
data: {"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}

event: content_block_delta
data: {"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"Partial ans"}}

event: error
data: {"type":"error","error":{"type":"overloaded_error","message":"Overloaded"},"request_id":"req_011CSHoEeqs5C35K2UUqR7Fy"}

"#;

    const CUT_IN_CONTENT: &str = r#"event: message_start
data: {"type":"message_start","message":{"id":"msg_06","type":"message","role":"assistant","model":"claude-sonnet-4-5-20250929","content":[],"stop_reason":null,"stop_sequence":null,"usage":{"input_tokens":900,"cache_creation_input_tokens":0,"cache_read_input_tokens":100,"output_tokens":2}}}

event: content_block_start
data: {"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}

event: content_block_delta
data: {"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"The answer is"}}

event: content_block_delta
data: {"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":" partial, cut ri"#;

    /// Cut after a complete `data:` line but before the blank line that dispatches it: an SSE
    /// client never saw this message_delta, so it counts nothing.
    const CUT_IN_DELTA: &str = r#"event: message_start
data: {"type":"message_start","message":{"id":"msg_07","type":"message","role":"assistant","model":"claude-sonnet-4-5-20250929","content":[],"stop_reason":null,"stop_sequence":null,"usage":{"input_tokens":900,"output_tokens":2}}}

event: message_delta
data: {"type":"message_delta","delta":{"stop_reason":"max_tokens","stop_sequence":null},"usage":{"output_tokens":64}}

event: message_delta
data: {"type":"message_delta","delta":{"stop_reason":"end_turn","stop_sequence":null},"usage":{"output_tokens":128}}
"#;

    /// No `event:` lines (the kind comes from the JSON), comments, `id:`/`retry:` fields, a
    /// frame whose `type` is not the first key, and multi-line data.
    const DATA_ONLY: &str = r#": keep-alive comment
retry: 3000

data: {"type":"message_start","message":{"id":"msg_08","type":"message","role":"assistant","model":"claude-haiku-4-5","content":[],"stop_reason":null,"stop_sequence":null,"usage":{"input_tokens":31,"cache_creation_input_tokens":10,"cache_read_input_tokens":0,"output_tokens":1}}}

id: 2
data: { "type" : "ping" }

data: {"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"hi"}}

data: {"index":0,"delta":{"type":"text_delta","text":"there"},"type":"content_block_delta"}

data: {"usage":{"output_tokens":7},
data: "type":"message_delta","delta":{"stop_reason":"end_turn"}}

data:{"type":"message_stop"}

"#;

    #[test]
    fn text_stream() {
        let o = sse(TEXT);
        assert_eq!(o.usage, usage(25, 0, 0, 0, 15));
        assert!(o.is_final && !o.saw_error);
        assert_eq!(o.model.as_deref(), Some("claude-sonnet-4-5-20250929"));
    }

    #[test]
    fn tool_use_stream_ignores_usage_like_text_in_content() {
        let o = sse(TOOL_USE);
        assert_eq!(o.usage, usage(472, 0, 0, 0, 89));
        assert!(o.is_final && !o.saw_error);
        assert_eq!(o.model.as_deref(), Some("claude-haiku-4-5-20251001"));
    }

    #[test]
    fn thinking_stream_with_pings_anywhere() {
        let o = sse(THINKING);
        assert_eq!(o.usage, usage(12, 0, 0, 4096, 240));
        assert!(o.is_final && !o.saw_error);
    }

    #[test]
    fn cache_write_split_by_ttl() {
        let o = sse(CACHE_SPLIT);
        assert_eq!(o.usage, usage(7, 1000, 2000, 500, 42));
        assert_eq!(o.usage.prompt_tokens(), 3507);
        assert!(o.is_final);
    }

    #[test]
    fn cache_write_total_without_split_is_5m() {
        let o = sse(LEGACY_CACHE);
        assert_eq!(o.usage, usage(3, 1500, 0, 0, 9));
    }

    #[test]
    fn message_delta_overwrites_present_input_fields() {
        let o = sse(DELTA_INPUT);
        // Total 50 cache writes with 40 known as 1h from message_start: the rest is 5m.
        let mut want = usage(10682, 10, 40, 1200, 511);
        want.web_search_requests = 1;
        assert_eq!(o.usage, want);
        assert!(o.is_final);
    }

    #[test]
    fn error_event_after_200() {
        let o = sse(ERROR_AFTER_200);
        assert!(o.saw_error && !o.is_final);
        assert_eq!(o.usage, usage(1800, 0, 0, 0, 1));
    }

    #[test]
    fn stream_cut_keeps_input_and_output_so_far() {
        let o = sse(CUT_IN_CONTENT);
        assert!(!o.is_final && !o.saw_error);
        assert_eq!(o.usage, usage(900, 0, 0, 100, 2));

        let o = sse(CUT_IN_DELTA);
        assert!(!o.is_final);
        assert_eq!(o.usage, usage(900, 0, 0, 0, 64));
    }

    #[test]
    fn frames_without_event_lines() {
        let o = sse(DATA_ONLY);
        assert_eq!(o.usage, usage(31, 10, 0, 0, 7));
        assert!(o.is_final && !o.saw_error);
        assert_eq!(o.model.as_deref(), Some("claude-haiku-4-5"));

        let o = sse(
            "data: {\"type\":\"error\",\"error\":{\"type\":\"api_error\",\"message\":\"x\"}}\n\n",
        );
        assert!(o.saw_error);
    }

    #[test]
    fn empty_and_garbage_streams() {
        assert_eq!(sse(""), sse("\n\n\n"));
        let o = sse("event: message_start\ndata: {not json\n\nevent: message_delta\ndata: []\n\n");
        assert!(o.usage.is_empty() && !o.is_final);
        // An event without data is not dispatched.
        assert!(!sse("event: message_stop\n\n").is_final);
        // A UTF-8 BOM before the first field is ignored.
        assert!(sse("\u{feff}event: message_stop\ndata: {}\n\n").is_final);
    }

    #[test]
    fn huge_content_frames_are_skipped_without_buffering() {
        let big_text = "x".repeat(3 << 20);
        for named in [true, false] {
            let delta = format!(
                r#"{}data: {{"type":"content_block_delta","index":0,"delta":{{"type":"text_delta","text":"{big_text}"}}}}

"#,
                if named {
                    "event: content_block_delta\n"
                } else {
                    ""
                }
            );
            let stream = [
                TEXT.split_at(TEXT.find("event: content_block_stop").unwrap())
                    .0,
                &delta,
            ]
            .concat()
                + &TEXT[TEXT.find("event: content_block_stop").unwrap()..];
            let mut s = AnthropicSseScanner::new();
            for chunk in stream.as_bytes().chunks(16 << 10) {
                s.feed(chunk);
                assert!(s.data.capacity() <= 4096, "buffered a content frame");
            }
            assert_eq!(
                outcome(&mut s),
                run(AnthropicSseScanner::new(), &[TEXT.as_bytes()])
            );
        }
    }

    #[test]
    fn oversized_usage_frame_counts_nothing() {
        let pad = "p".repeat(MAX_FRAME_BYTES + 10);
        let stream = format!(
            "event: message_start\ndata: {{\"type\":\"message_start\",\"message\":{{\"model\":\"m\",\"pad\":\"{pad}\",\"usage\":{{\"input_tokens\":5,\"output_tokens\":1}}}}}}\n\n\
             event: message_delta\ndata: {{\"type\":\"message_delta\",\"usage\":{{\"output_tokens\":3}}}}\n\n\
             event: message_stop\ndata: {{\"type\":\"message_stop\"}}\n\n"
        );
        let mut s = AnthropicSseScanner::new();
        for chunk in stream.as_bytes().chunks(100_000) {
            s.feed(chunk);
            assert!(s.data.len() <= MAX_FRAME_BYTES);
        }
        let o = outcome(&mut s);
        assert_eq!(o.usage, usage(0, 0, 0, 0, 3));
        assert!(o.is_final);
        assert_eq!(o.model, None);
    }

    #[test]
    fn sniffing_a_leading_type() {
        assert_eq!(sniff_type(b"{\"type\":\"ping\"}"), Sniff::Type(Kind::Other));
        assert_eq!(
            sniff_type(b" { \"type\" :\n \"message_start\""),
            Sniff::Type(Kind::MessageStart)
        );
        assert_eq!(sniff_type(b"{\"ty"), Sniff::Need);
        assert_eq!(sniff_type(b"{\"type\":\"message_st"), Sniff::Need);
        assert_eq!(sniff_type(b"{\"index\":0"), Sniff::Unknown);
        assert_eq!(sniff_type(b"[1]"), Sniff::Unknown);
        assert_eq!(sniff_type(b"{\"type\":\"a\\u0062\""), Sniff::Unknown);
    }

    const JSON_BODY: &str = r#"{"id":"msg_01XFDUDYJgAACzvnptvVoYEL","type":"message","role":"assistant","model":"claude-sonnet-4-5-20250929","content":[{"type":"text","text":"Hi! \"usage\":{\"output_tokens\":1} 你好 🌍"}],"stop_reason":"end_turn","stop_sequence":null,"usage":{"input_tokens":2095,"cache_creation_input_tokens":3000,"cache_read_input_tokens":4000,"cache_creation":{"ephemeral_5m_input_tokens":1000,"ephemeral_1h_input_tokens":2000},"output_tokens":503,"service_tier":"standard"}}"#;

    const JSON_TOOL_USE: &str = r#"{
  "content": [
    {"type": "text", "text": "Let me search."},
    {"type": "server_tool_use", "id": "srvtoolu_01", "name": "web_search", "input": {"query": "usage"}},
    {"type": "tool_use", "id": "toolu_01", "name": "record", "input": {"usage": {"output_tokens": 99999}}}
  ],
  "id": "msg_02",
  "model": "claude-haiku-4-5-20251001",
  "role": "assistant",
  "stop_reason": "tool_use",
  "type": "message",
  "usage": {"input_tokens": 410, "cache_creation_input_tokens": 120, "cache_read_input_tokens": 0, "output_tokens": 77, "server_tool_use": {"web_search_requests": 2}}
}"#;

    const JSON_ERROR: &str = r#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"},"request_id":"req_011CSHoEeqs5C35K2UUqR7Fy"}"#;

    #[test]
    fn json_message_body() {
        let o = json(JSON_BODY);
        assert_eq!(o.usage, usage(2095, 1000, 2000, 4000, 503));
        assert!(o.is_final && !o.saw_error);
        assert_eq!(o.model.as_deref(), Some("claude-sonnet-4-5-20250929"));
    }

    #[test]
    fn json_tool_use_body_reads_top_level_usage() {
        let o = json(JSON_TOOL_USE);
        let mut want = usage(410, 120, 0, 0, 77);
        want.web_search_requests = 2;
        assert_eq!(o.usage, want);
        assert!(o.is_final && !o.saw_error);
        assert_eq!(o.model.as_deref(), Some("claude-haiku-4-5-20251001"));
    }

    #[test]
    fn json_error_body() {
        let o = json(JSON_ERROR);
        assert!(o.saw_error && !o.is_final);
        assert!(o.usage.is_empty());
        // Known before parsing, from the leading type.
        let mut s = AnthropicJsonScanner::new();
        s.feed(&JSON_ERROR.as_bytes()[..20]);
        assert!(s.saw_error());
        // And when `type` is not the first key, from the parse.
        assert!(json(r#"{"error":{"type":"api_error","message":"x"},"type":"error"}"#).saw_error);
    }

    #[test]
    fn json_truncated_or_empty_body_is_not_final() {
        let o = json(&JSON_BODY[..JSON_BODY.len() - 1]);
        assert!(!o.is_final && o.usage.is_empty());
        let o = json("");
        assert!(!o.is_final && o.usage.is_empty() && !o.saw_error);
        let o = json(r#"{"type":"message","model":"m"}"#);
        assert!(!o.is_final && o.model.as_deref() == Some("m"));
    }

    #[test]
    fn json_usage_reparses_after_more_bytes() {
        let mut s = AnthropicJsonScanner::new();
        let (a, b) = JSON_BODY.as_bytes().split_at(100);
        s.feed(a);
        assert!(s.usage().is_empty() && !s.is_final());
        s.feed(b);
        assert_eq!(s.usage(), usage(2095, 1000, 2000, 4000, 503));
        assert!(s.is_final());
    }

    #[test]
    fn json_oversized_body_reads_usage_from_the_tail() {
        let pad = "y".repeat(MAX_BODY_BYTES + 1000);
        let body = JSON_BODY.replacen("\"Hi! ", &format!("\"{pad}"), 1);
        let mut s = AnthropicJsonScanner::new();
        for chunk in body.as_bytes().chunks(1 << 20) {
            s.feed(chunk);
        }
        assert!(s.body.len() <= MAX_SNIFF);
        assert!(s.tail.as_ref().unwrap().len() <= 2 * BODY_TAIL_BYTES);
        assert_eq!(s.usage(), usage(2095, 1000, 2000, 4000, 503));
        assert!(s.is_final() && !s.saw_error());
    }
}
