//! An incremental SSE event reader shared by the OpenAI and Gemini scanners.
//!
//! It follows the SSE parsing rules (lines end in `\n`, `\r\n` or `\r`; a blank line dispatches;
//! `data` lines are joined with `\n`; one optional space after the colon; a leading BOM) and is fed
//! the client's bytes split anywhere. Per event the handler decides from the `event:` name whether
//! the payload is worth keeping; a kept payload is bounded by [`MAX_FRAME_BYTES`], past which
//! only its last [`TAIL_BYTES`] are kept (a terminal event carrying a whole long response still
//! has its `usage` at the end).

/// The largest payload kept whole.
pub const MAX_FRAME_BYTES: usize = 1 << 20;

/// What is kept of a larger payload: its end.
pub const TAIL_BYTES: usize = 64 << 10;

const MAX_EVENT_NAME: usize = 64;
const BOM: &[u8] = b"\xEF\xBB\xBF";

/// One dispatched event.
pub struct Event<'a> {
    /// The `event:` name (empty when there was none).
    pub name: &'a [u8],
    /// The payload if kept (empty otherwise).
    pub data: &'a [u8],
    /// Whether the handler asked to keep the payload.
    pub kept: bool,
    /// The payload outgrew [`MAX_FRAME_BYTES`]; `data` is its tail.
    pub truncated: bool,
}

/// What a scanner does with events.
pub trait Handler {
    /// Whether to keep the payload of an event with this name (empty: no `event:` line).
    fn wants(&self, name: &[u8]) -> bool;
    fn event(&mut self, event: Event<'_>);
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Line {
    Field,
    EventValue,
    Data,
    Skip,
}

#[derive(Debug)]
pub struct SseReader {
    line: Line,
    head: Vec<u8>,
    after_cr: bool,
    strip_space: bool,
    first_line: bool,
    name: Vec<u8>,
    data: Vec<u8>,
    has_data: bool,
    keep: bool,
    truncated: bool,
}

impl Default for SseReader {
    fn default() -> Self {
        SseReader {
            line: Line::Field,
            head: Vec::with_capacity(8),
            after_cr: false,
            strip_space: false,
            first_line: true,
            name: Vec::new(),
            data: Vec::new(),
            has_data: false,
            keep: false,
            truncated: false,
        }
    }
}

impl SseReader {
    pub fn feed<H: Handler>(&mut self, mut chunk: &[u8], h: &mut H) {
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
                    self.take(&chunk[..i], h);
                    self.end_line(h);
                    self.after_cr = chunk[i] == b'\r';
                    chunk = &chunk[i + 1..];
                }
                None => {
                    self.take(chunk, h);
                    return;
                }
            }
        }
    }

    fn field(&self) -> &[u8] {
        match self.head.strip_prefix(BOM) {
            Some(rest) if self.first_line => rest,
            _ => &self.head,
        }
    }

    fn take<H: Handler>(&mut self, mut seg: &[u8], h: &mut H) {
        while !seg.is_empty() {
            match self.line {
                Line::Field => match seg.iter().position(|&b| b == b':') {
                    Some(i) => {
                        if self.push_head(&seg[..i]) {
                            self.begin_value(h);
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
                    seg = self.strip(seg);
                    let room = (MAX_EVENT_NAME + 1).saturating_sub(self.name.len());
                    self.name.extend_from_slice(&seg[..seg.len().min(room)]);
                    return;
                }
                Line::Data => {
                    seg = self.strip(seg);
                    self.push_data(seg);
                    return;
                }
                Line::Skip => return,
            }
        }
    }

    fn strip<'a>(&mut self, seg: &'a [u8]) -> &'a [u8] {
        if self.strip_space && !seg.is_empty() {
            self.strip_space = false;
            if seg[0] == b' ' {
                return &seg[1..];
            }
        }
        seg
    }

    fn push_head(&mut self, b: &[u8]) -> bool {
        if self.head.len() + b.len() > BOM.len() + 5 {
            return false;
        }
        self.head.extend_from_slice(b);
        true
    }

    fn begin_value<H: Handler>(&mut self, h: &mut H) {
        self.strip_space = true;
        match self.field() {
            b"event" => {
                self.name.clear();
                self.line = Line::EventValue;
            }
            b"data" => self.begin_data(h),
            _ => self.line = Line::Skip,
        }
    }

    fn begin_data<H: Handler>(&mut self, h: &mut H) {
        if !self.has_data {
            self.has_data = true;
            self.keep = self.name.len() <= MAX_EVENT_NAME && h.wants(&self.name);
        } else if self.keep {
            self.push_data(b"\n");
        }
        self.line = if self.keep { Line::Data } else { Line::Skip };
    }

    fn push_data(&mut self, b: &[u8]) {
        self.data.extend_from_slice(b);
        if self.data.len() > MAX_FRAME_BYTES {
            self.truncated = true;
        }
        if self.truncated && self.data.len() > 2 * TAIL_BYTES {
            self.data.drain(..self.data.len() - TAIL_BYTES);
        }
    }

    fn end_line<H: Handler>(&mut self, h: &mut H) {
        if self.line == Line::Field {
            match self.field() {
                b"" => self.dispatch(h),
                b"data" => self.begin_data(h),
                b"event" => self.name.clear(),
                _ => {}
            }
        }
        self.line = Line::Field;
        self.head.clear();
        self.strip_space = false;
        self.first_line = false;
    }

    fn dispatch<H: Handler>(&mut self, h: &mut H) {
        if self.has_data {
            if self.truncated && self.data.len() > TAIL_BYTES {
                self.data.drain(..self.data.len() - TAIL_BYTES);
            }
            let name: &[u8] = if self.name.len() > MAX_EVENT_NAME {
                b""
            } else {
                &self.name
            };
            h.event(Event {
                name,
                data: &self.data,
                kept: self.keep,
                truncated: self.truncated,
            });
        }
        self.name.clear();
        self.has_data = false;
        self.keep = false;
        self.truncated = false;
        if self.data.capacity() > 64 << 10 {
            self.data = Vec::new();
        } else {
            self.data.clear();
        }
    }
}

/// Finds `"key"` followed by `:` and an object, and parses that object: how usage is read from
/// the kept tail of an oversized payload or body. A literal `"key"` followed by `:` outside a
/// string can only be a key; the last one wins (the vendors write usage last).
pub fn object_after_key(hay: &[u8], key: &str) -> Option<serde_json::Value> {
    let needle = format!("\"{key}\"");
    let needle = needle.as_bytes();
    let mut end = hay.len();
    while let Some(pos) = hay[..end].windows(needle.len()).rposition(|w| w == needle) {
        let rest = trim_ws(&hay[pos + needle.len()..]);
        if let Some(rest) = rest.strip_prefix(b":") {
            let rest = trim_ws(rest);
            if rest.first() == Some(&b'{') {
                let mut values =
                    serde_json::Deserializer::from_slice(rest).into_iter::<serde_json::Value>();
                if let Some(Ok(v)) = values.next() {
                    return Some(v);
                }
            }
        }
        end = pos;
    }
    None
}

/// True if `"key"` appears followed (after optional whitespace) by `:` and then `{` — a cheap
/// test for "this payload carries a `key` object" before parsing it.
pub fn has_object_key(hay: &[u8], key: &str) -> bool {
    let needle = format!("\"{key}\"");
    let needle = needle.as_bytes();
    let mut from = 0;
    while let Some(pos) = hay[from..].windows(needle.len()).position(|w| w == needle) {
        let at = from + pos + needle.len();
        let rest = trim_ws(&hay[at..]);
        if let Some(rest) = rest.strip_prefix(b":")
            && trim_ws(rest).first() == Some(&b'{')
        {
            return true;
        }
        from = at;
    }
    false
}

/// True if the bytes contain `needle`.
pub fn contains(hay: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && hay.windows(needle.len()).any(|w| w == needle)
}

fn trim_ws(b: &[u8]) -> &[u8] {
    let start = b
        .iter()
        .position(|c| !c.is_ascii_whitespace())
        .unwrap_or(b.len());
    &b[start..]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Default)]
    struct Collect(Vec<(String, String, bool)>);

    impl Handler for Collect {
        fn wants(&self, name: &[u8]) -> bool {
            name != b"skip"
        }
        fn event(&mut self, e: Event<'_>) {
            self.0.push((
                String::from_utf8_lossy(e.name).into_owned(),
                String::from_utf8_lossy(e.data).into_owned(),
                e.kept,
            ));
        }
    }

    const FIXTURE: &str = "\u{feff}: comment\nevent: a\ndata: {\"x\":1}\n\nevent: skip\ndata: big\ndata: more\n\ndata:no-space\ndata:  two\n\nid: 3\nevent: e\n\ndata\n\n";

    #[test]
    fn events_at_every_split_and_line_ending() {
        let want = vec![
            ("a".to_owned(), "{\"x\":1}".to_owned(), true),
            ("skip".to_owned(), String::new(), false),
            (String::new(), "no-space\n two".to_owned(), true),
            (String::new(), String::new(), true),
        ];
        for ending in ["\n", "\r\n", "\r"] {
            let text = FIXTURE.replace('\n', ending);
            let bytes = text.as_bytes();
            for i in 0..=bytes.len() {
                let mut r = SseReader::default();
                let mut c = Collect::default();
                r.feed(&bytes[..i], &mut c);
                r.feed(&bytes[i..], &mut c);
                assert_eq!(c.0, want, "split at {i}, ending {ending:?}");
            }
        }
    }

    #[test]
    fn oversized_payloads_keep_their_tail() {
        let mut text = String::from("data: {\"pad\":\"");
        text.push_str(&"x".repeat(MAX_FRAME_BYTES + 10));
        text.push_str("\",\"usage\":{\"n\":7}}\n\n");
        let mut r = SseReader::default();
        #[derive(Default)]
        struct Tail(Option<(bool, serde_json::Value)>);
        impl Handler for Tail {
            fn wants(&self, _: &[u8]) -> bool {
                true
            }
            fn event(&mut self, e: Event<'_>) {
                self.0 = Some((e.truncated, object_after_key(e.data, "usage").unwrap()));
            }
        }
        let mut t = Tail::default();
        for c in text.as_bytes().chunks(7919) {
            r.feed(c, &mut t);
        }
        let (truncated, usage) = t.0.unwrap();
        assert!(truncated);
        assert_eq!(usage["n"], 7);
    }

    #[test]
    fn key_tests() {
        assert!(has_object_key(br#"{"usage": {"a":1}}"#, "usage"));
        assert!(!has_object_key(br#"{"usage":null}"#, "usage"));
        assert!(!has_object_key(br#"{"text":"\"usage\""}"#, "usage"));
    }
}
