//! Incremental Server-Sent Events parsing, so each event can be recorded as it passes while
//! the bytes are forwarded untouched. Pending bytes are bounded: an event larger than the
//! bound is forwarded but not parsed, and counted (`take_oversized`) so that the record says
//! so; parsing resumes with the next event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SseEvent {
    pub id: Option<String>,
    pub event: Option<String>,
    pub data: String,
}

pub struct SseParser {
    pending: Vec<u8>,
    /// How far `pending` was already searched for a separator, so each byte is scanned once.
    scanned: usize,
    max_pending: usize,
    /// Inside an event over `max_pending`: its size so far. Only the last few of its bytes
    /// are kept in `pending`, where a separator may begin.
    skipping: Option<u64>,
    /// Sizes of the events skipped for their size since the last `take_oversized`.
    oversized: Vec<u64>,
}

/// A separator is at most this long: the bytes kept while skipping, so one that straddles
/// reads is still found.
const SEPARATOR_TAIL: usize = 3;

impl SseParser {
    pub fn new(max_pending: usize) -> Self {
        SseParser {
            pending: Vec::new(),
            scanned: 0,
            max_pending,
            skipping: None,
            oversized: Vec::new(),
        }
    }

    /// True between events: something can be inserted into the stream here.
    pub fn at_boundary(&self) -> bool {
        self.pending.is_empty() && self.skipping.is_none()
    }

    /// The sizes of the events too large to parse since the last call.
    pub fn take_oversized(&mut self) -> Vec<u64> {
        std::mem::take(&mut self.oversized)
    }

    /// Feeds bytes; returns the events they complete.
    pub fn feed(&mut self, bytes: &[u8]) -> Vec<SseEvent> {
        let mut events = Vec::new();
        if let Some(skipped) = self.skipping.take() {
            let kept = self.pending.len();
            self.pending.extend_from_slice(bytes);
            match find_event_end(&self.pending, 0) {
                None => {
                    self.skipping = Some(skipped + bytes.len() as u64);
                    self.keep_separator_tail();
                    return events;
                }
                Some((end, separator)) => {
                    // `skipped` already counts the kept tail.
                    self.oversized
                        .push((skipped + end as u64).saturating_sub(kept as u64));
                    self.pending.drain(..end + separator);
                    self.scanned = 0;
                }
            }
        } else {
            self.pending.extend_from_slice(bytes);
        }
        let mut start = 0;
        // A separator may straddle reads: re-check the last 3 bytes already scanned.
        let mut from = self.scanned.saturating_sub(SEPARATOR_TAIL);
        while let Some((end, separator)) = find_event_end(&self.pending[start..], from) {
            if let Some(event) = parse_event(&self.pending[start..start + end]) {
                events.push(event);
            }
            start += end + separator;
            from = 0;
        }
        self.pending.drain(..start);
        self.scanned = self.pending.len();
        if self.pending.len() > self.max_pending {
            self.skipping = Some(self.pending.len() as u64);
            self.keep_separator_tail();
        }
        events
    }

    fn keep_separator_tail(&mut self) {
        let cut = self.pending.len().saturating_sub(SEPARATOR_TAIL);
        self.pending.drain(..cut);
        self.scanned = 0;
    }
}

/// Position and length of the first blank-line separator at or after `from`.
pub(crate) fn find_event_end(buf: &[u8], from: usize) -> Option<(usize, usize)> {
    let mut i = from;
    while let Some(offset) = memchr::memchr2(b'\n', b'\r', buf.get(i..)?) {
        i += offset;
        let rest = &buf[i..];
        if rest.starts_with(b"\r\n\r\n") {
            return Some((i, 4));
        }
        if rest.starts_with(b"\n\n") || rest.starts_with(b"\r\r") {
            return Some((i, 2));
        }
        i += 1;
    }
    None
}

fn parse_event(raw: &[u8]) -> Option<SseEvent> {
    // Checking valid UTF-8 whole is much faster than the lossy walk, which only invalid
    // text needs.
    let text = match std::str::from_utf8(raw) {
        Ok(text) => std::borrow::Cow::Borrowed(text),
        Err(_) => String::from_utf8_lossy(raw),
    };
    let mut event = SseEvent {
        id: None,
        event: None,
        data: String::new(),
    };
    let mut has_data = false;
    for line in text
        .split(['\n', '\r'])
        .filter(|l| !l.is_empty() && !l.starts_with(':'))
    {
        let (field, value) = line.split_once(':').unwrap_or((line, ""));
        let value = value.strip_prefix(' ').unwrap_or(value);
        match field {
            "data" => {
                if has_data {
                    event.data.push('\n');
                }
                event.data.push_str(value);
                has_data = true;
            }
            "id" => event.id = Some(value.to_string()),
            "event" => event.event = Some(value.to_string()),
            _ => {}
        }
    }
    (has_data || event.id.is_some() || event.event.is_some()).then_some(event)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_split_across_reads_are_reassembled() {
        let mut p = SseParser::new(1 << 20);
        assert!(p.feed(b"id: 1\nevent: mess").is_empty());
        let events = p.feed(b"age\ndata: {\"a\":\ndata: 1}\n\n: comment\n\ndata: x\r\n\r\n");
        assert_eq!(events.len(), 2);
        assert_eq!(events[0].id.as_deref(), Some("1"));
        assert_eq!(events[0].event.as_deref(), Some("message"));
        assert_eq!(events[0].data, "{\"a\":\n1}");
        assert_eq!(events[1].data, "x");
    }

    #[test]
    fn separators_split_across_reads_are_found() {
        let mut p = SseParser::new(1 << 20);
        assert!(p.feed(b"data: a\r\n\r").is_empty());
        let events = p.feed(b"\ndata: b\n");
        assert_eq!(events.len(), 1);
        assert_eq!(events[0].data, "a");
        assert_eq!(p.feed(b"\n")[0].data, "b");
    }

    #[test]
    fn an_oversized_event_is_counted_and_parsing_resumes_after_it() {
        let mut p = SseParser::new(16);
        assert!(p.feed(b"data: 0123456789012345678901234567890").is_empty());
        assert!(!p.at_boundary());
        assert!(p.feed(b"0123456789\r\n\r").is_empty());
        let after = p.feed(b"\ndata: next\n\n");
        assert_eq!(after.len(), 1);
        assert_eq!(after[0].data, "next");
        assert_eq!(p.take_oversized(), vec![47]);
        assert!(p.at_boundary());
        assert!(p.take_oversized().is_empty());
    }
}
