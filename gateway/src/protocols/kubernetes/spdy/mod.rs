//! SPDY/3.1, read for the record. kubectl speaks it for port-forward: over a plain upgrade
//! (`Upgrade: SPDY/3.1`) up to 1.30, and from 1.31 tunnelled in WebSocket messages
//! (`SPDY/3.1+portforward.k8s.io`). kubectl 1.29 and older speak it for exec and attach too.
//! Every stream is opened by the client with a `streamtype` header naming its role.
//!
//! The reader follows one direction of a connection and never changes a byte: each side
//! compresses its header blocks with its own zlib stream, which the reader inflates in order.
//! Data frames are passed on as they arrive, so a large frame is never buffered whole.
pub mod dictionary;
pub mod relay;

use bytes::{Buf, Bytes, BytesMut};
use flate2::{Decompress, FlushDecompress};

/// Control frames are small (headers, settings, pings); a larger one is refused, not buffered.
const MAX_CONTROL_FRAME: usize = 64 * 1024;
/// A header block may not inflate past this: a zlib bomb stops here.
const MAX_HEADER_BLOCK: usize = 256 * 1024;

const SYN_STREAM: u16 = 1;
const SYN_REPLY: u16 = 2;
const RST_STREAM: u16 = 3;
const HEADERS: u16 = 8;
const FLAG_FIN: u8 = 0x01;

/// What a frame means for the record.
#[derive(Debug, PartialEq)]
pub enum Frame {
    /// SYN_STREAM: a stream opened, with its headers (names lower-case, as SPDY requires).
    Opened {
        stream: u32,
        headers: Vec<(String, String)>,
    },
    /// Part or all of a DATA frame's payload.
    Data { stream: u32, data: Bytes },
    /// This side sent its last byte on the stream (FIN).
    Finished { stream: u32 },
    /// RST_STREAM, with its status code.
    Reset { stream: u32, status: u32 },
}

#[derive(Debug, thiserror::Error)]
pub enum SpdyError {
    #[error("not SPDY/3: a control frame of version {0}")]
    Version(u16),
    #[error("a SPDY control frame of {0} bytes, over the {MAX_CONTROL_FRAME}-byte limit")]
    ControlFrameTooLarge(usize),
    #[error("a SPDY header block inflating past {MAX_HEADER_BLOCK} bytes")]
    HeaderBlockTooLarge,
    #[error("a SPDY header block that does not inflate: {0}")]
    Inflate(String),
    #[error("a malformed SPDY {0}")]
    Malformed(&'static str),
}

/// One direction of a SPDY connection.
pub struct SpdyReader {
    pending: BytesMut,
    /// The DATA frame being read: its stream, how much of it is still to come, and its FIN.
    data: Option<(u32, usize, bool)>,
    inflate: Decompress,
}

impl Default for SpdyReader {
    fn default() -> Self {
        SpdyReader {
            pending: BytesMut::new(),
            data: None,
            inflate: Decompress::new(true),
        }
    }
}

impl SpdyReader {
    /// Reads what `bytes` completes; a partial frame waits for the next call.
    pub fn read(&mut self, bytes: &[u8]) -> Result<Vec<Frame>, SpdyError> {
        self.pending.extend_from_slice(bytes);
        let mut frames = Vec::new();
        loop {
            if let Some((stream, left, fin)) = self.data {
                let take = left.min(self.pending.len());
                if take > 0 {
                    let data = self.pending.split_to(take).freeze();
                    frames.push(Frame::Data { stream, data });
                }
                if take < left {
                    self.data = Some((stream, left - take, fin));
                    return Ok(frames);
                }
                self.data = None;
                if fin {
                    frames.push(Frame::Finished { stream });
                }
            }
            if self.pending.len() < 8 {
                return Ok(frames);
            }
            let word = u32::from_be_bytes(self.pending[..4].try_into().expect("4 bytes"));
            let flags = self.pending[4];
            let length =
                u32::from_be_bytes([0, self.pending[5], self.pending[6], self.pending[7]]) as usize;
            if word & 0x8000_0000 == 0 {
                self.pending.advance(8);
                // An empty DATA frame with FIN still ends its stream.
                self.data = Some((word, length, flags & FLAG_FIN != 0));
                continue;
            }
            let version = ((word >> 16) & 0x7fff) as u16;
            if version != 3 {
                return Err(SpdyError::Version(version));
            }
            if length > MAX_CONTROL_FRAME {
                return Err(SpdyError::ControlFrameTooLarge(length));
            }
            if self.pending.len() < 8 + length {
                return Ok(frames);
            }
            self.pending.advance(8);
            let payload = self.pending.split_to(length).freeze();
            self.control(word as u16, flags, payload, &mut frames)?;
        }
    }

    fn control(
        &mut self,
        kind: u16,
        flags: u8,
        payload: Bytes,
        frames: &mut Vec<Frame>,
    ) -> Result<(), SpdyError> {
        let stream_at = |offset: usize, what| {
            payload
                .get(offset..offset + 4)
                .map(|b| u32::from_be_bytes(b.try_into().expect("4 bytes")) & 0x7fff_ffff)
                .ok_or(SpdyError::Malformed(what))
        };
        match kind {
            SYN_STREAM => {
                let stream = stream_at(0, "SYN_STREAM")?;
                // Stream, associated stream, priority and slot come before the header block.
                let block = payload
                    .get(10..)
                    .ok_or(SpdyError::Malformed("SYN_STREAM"))?;
                let headers = parse_headers(&self.inflate(block)?)?;
                frames.push(Frame::Opened { stream, headers });
                if flags & FLAG_FIN != 0 {
                    frames.push(Frame::Finished { stream });
                }
            }
            SYN_REPLY | HEADERS => {
                let stream = stream_at(0, "SYN_REPLY or HEADERS")?;
                // Read only to keep this side's zlib stream in step.
                self.inflate(&payload[4..])?;
                if flags & FLAG_FIN != 0 {
                    frames.push(Frame::Finished { stream });
                }
            }
            RST_STREAM => {
                let stream = stream_at(0, "RST_STREAM")?;
                let status = stream_at(4, "RST_STREAM")?;
                frames.push(Frame::Reset { stream, status });
            }
            // SETTINGS, PING, GOAWAY, WINDOW_UPDATE carry nothing to record.
            _ => {}
        }
        Ok(())
    }

    /// Inflates one header block, continuing this side's zlib stream.
    fn inflate(&mut self, mut block: &[u8]) -> Result<Vec<u8>, SpdyError> {
        let mut out = Vec::with_capacity(block.len() * 4 + 64);
        loop {
            if out.len() == out.capacity() {
                if out.len() >= MAX_HEADER_BLOCK {
                    return Err(SpdyError::HeaderBlockTooLarge);
                }
                out.reserve(out.len());
            }
            let (read, written) = (self.inflate.total_in(), out.len());
            let result = self
                .inflate
                .decompress_vec(block, &mut out, FlushDecompress::Sync);
            block = &block[(self.inflate.total_in() - read) as usize..];
            match result {
                Ok(_) => {}
                // The zlib header asks for SPDY's dictionary before the first block.
                Err(e) if e.needs_dictionary().is_some() => {
                    self.inflate
                        .set_dictionary(&dictionary::dictionary())
                        .map_err(|e| SpdyError::Inflate(e.to_string()))?;
                    continue;
                }
                Err(e) => return Err(SpdyError::Inflate(e.to_string())),
            }
            let room_left = out.len() < out.capacity();
            if block.is_empty() && room_left {
                return Ok(out);
            }
            if room_left && out.len() == written {
                return Err(SpdyError::Inflate("no progress".into()));
            }
        }
    }
}

/// A header block: a count, then each name and value with its length (values may hold
/// several, separated by NUL).
fn parse_headers(mut block: &[u8]) -> Result<Vec<(String, String)>, SpdyError> {
    let next = |block: &mut &[u8]| -> Option<String> {
        let length = u32::from_be_bytes(block.get(..4)?.try_into().ok()?) as usize;
        let text = block.get(4..4 + length)?;
        let text = String::from_utf8_lossy(text).replace('\0', ",");
        *block = &block[4 + length..];
        Some(text)
    };
    let count = block
        .get(..4)
        .map(|b| u32::from_be_bytes(b.try_into().expect("4 bytes")))
        .ok_or(SpdyError::Malformed("header block"))?;
    block = &block[4..];
    let mut headers = Vec::new();
    for _ in 0..count {
        let name = next(&mut block).ok_or(SpdyError::Malformed("header block"))?;
        let value = next(&mut block).ok_or(SpdyError::Malformed("header block"))?;
        headers.push((name, value));
    }
    if !block.is_empty() {
        return Err(SpdyError::Malformed("header block"));
    }
    Ok(headers)
}

#[cfg(test)]
mod tests {
    use flate2::{Compress, Compression, FlushCompress};

    use super::*;

    /// A peer's side of the connection, compressing as spdystream does.
    struct Writer(Compress, bool);

    impl Writer {
        fn new() -> Self {
            Writer(Compress::new(Compression::best(), true), false)
        }

        fn block(&mut self, headers: &[(&str, &str)]) -> Vec<u8> {
            if !self.1 {
                self.0.set_dictionary(&dictionary::dictionary()).unwrap();
                self.1 = true;
            }
            let mut plain = (headers.len() as u32).to_be_bytes().to_vec();
            for (name, value) in headers {
                for text in [name, value] {
                    plain.extend_from_slice(&(text.len() as u32).to_be_bytes());
                    plain.extend_from_slice(text.as_bytes());
                }
            }
            let mut out = Vec::with_capacity(plain.len() + 64);
            self.0
                .compress_vec(&plain, &mut out, FlushCompress::Sync)
                .unwrap();
            out
        }

        fn control(kind: u16, flags: u8, payload: &[u8]) -> Vec<u8> {
            let mut frame = vec![0x80, 3];
            frame.extend_from_slice(&kind.to_be_bytes());
            frame.push(flags);
            frame.extend_from_slice(&(payload.len() as u32).to_be_bytes()[1..]);
            frame.extend_from_slice(payload);
            frame
        }

        fn syn_stream(&mut self, stream: u32, headers: &[(&str, &str)]) -> Vec<u8> {
            let mut payload = stream.to_be_bytes().to_vec();
            payload.extend_from_slice(&[0, 0, 0, 0, 0, 0]);
            payload.extend_from_slice(&self.block(headers));
            Self::control(SYN_STREAM, 0, &payload)
        }

        fn data(stream: u32, fin: bool, data: &[u8]) -> Vec<u8> {
            let mut frame = stream.to_be_bytes().to_vec();
            frame.push(if fin { FLAG_FIN } else { 0 });
            frame.extend_from_slice(&(data.len() as u32).to_be_bytes()[1..]);
            frame.extend_from_slice(data);
            frame
        }
    }

    fn opened(stream: u32, headers: &[(&str, &str)]) -> Frame {
        Frame::Opened {
            stream,
            headers: headers
                .iter()
                .map(|(n, v)| (n.to_string(), v.to_string()))
                .collect(),
        }
    }

    #[test]
    fn the_dictionary_is_the_drafts() {
        let dictionary = dictionary::dictionary();
        assert_eq!(dictionary.len(), 1423);
        assert!(dictionary.ends_with(b",utf-,*,enq=0."));
    }

    #[test]
    fn streams_and_their_data_are_read_across_any_split() {
        let mut peer = Writer::new();
        let data_headers = [("port", "8080"), ("requestid", "0"), ("streamtype", "data")];
        let error_headers = [
            ("port", "8080"),
            ("requestid", "0"),
            ("streamtype", "error"),
        ];
        let mut wire = peer.syn_stream(1, &error_headers);
        wire.extend(peer.syn_stream(3, &data_headers));
        wire.extend(Writer::data(3, false, b"GET / HTTP/1.1\r\n"));
        wire.extend(Writer::control(3, 0, &[0, 0, 0, 3, 0, 0, 0, 5]));
        wire.extend(Writer::data(1, true, b""));
        for split in [1, 3, 7, 64, wire.len()] {
            let mut reader = SpdyReader::default();
            let mut frames = Vec::new();
            for piece in wire.chunks(split) {
                frames.extend(reader.read(piece).unwrap());
            }
            // Data split across reads arrives in pieces: join them to compare.
            let mut joined: Vec<Frame> = Vec::new();
            for frame in frames {
                match (joined.last_mut(), frame) {
                    (Some(Frame::Data { stream: s, data }), Frame::Data { stream, data: more })
                        if *s == stream =>
                    {
                        *data = [data.as_ref(), &more].concat().into()
                    }
                    (_, frame) => joined.push(frame),
                }
            }
            assert_eq!(
                joined,
                vec![
                    opened(1, &error_headers),
                    opened(3, &data_headers),
                    Frame::Data {
                        stream: 3,
                        data: Bytes::from_static(b"GET / HTTP/1.1\r\n")
                    },
                    Frame::Reset {
                        stream: 3,
                        status: 5
                    },
                    Frame::Finished { stream: 1 },
                ],
                "split every {split} bytes"
            );
        }
    }

    #[test]
    fn bad_input_is_an_error_not_a_panic() {
        let mut reader = SpdyReader::default();
        let bomb = Writer::control(SYN_STREAM, 0, &[0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 1, 2, 3]);
        assert!(matches!(reader.read(&bomb), Err(SpdyError::Inflate(_))));
        let version_2 = [0x80, 2, 0, 1, 0, 0, 0, 0];
        assert!(matches!(
            SpdyReader::default().read(&version_2),
            Err(SpdyError::Version(2))
        ));
        let huge = [0x80, 3, 0, 1, 0, 0xff, 0xff, 0xff];
        assert!(matches!(
            SpdyReader::default().read(&huge),
            Err(SpdyError::ControlFrameTooLarge(_))
        ));
        let truncated = Writer::control(RST_STREAM, 0, &[0, 0, 0, 1]);
        assert!(matches!(
            SpdyReader::default().read(&truncated),
            Err(SpdyError::Malformed(_))
        ));
    }
}
