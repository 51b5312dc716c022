//! SPDY/3.1 framing, as kubectl and the kubelet speak it for port-forward and (kubectl 1.29
//! and older) exec and attach: 8-byte frame heads, and header blocks compressed with one
//! zlib stream per direction, primed with SPDY's dictionary.
#[path = "../../../gateway/src/protocols/kubernetes/spdy/dictionary.rs"]
mod dictionary;

use std::collections::HashMap;

use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress};
use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt},
    sync::mpsc,
};

pub const SYN_STREAM: u16 = 1;
pub const SYN_REPLY: u16 = 2;
pub const RST_STREAM: u16 = 3;
pub const PING: u16 = 6;
pub const GOAWAY: u16 = 7;
pub const FIN: u8 = 1;

/// One SPDY frame as read: a control frame's type, or a data frame's stream.
pub enum Frame {
    Control {
        kind: u16,
        flags: u8,
        payload: Vec<u8>,
    },
    Data {
        stream: u32,
        flags: u8,
        payload: Vec<u8>,
    },
}

pub async fn read_frame(from: &mut (impl AsyncRead + Unpin)) -> std::io::Result<Frame> {
    let mut head = [0u8; 8];
    from.read_exact(&mut head).await?;
    let word = u32::from_be_bytes(head[..4].try_into().expect("4 bytes"));
    let flags = head[4];
    let length = u32::from_be_bytes([0, head[5], head[6], head[7]]) as usize;
    let mut payload = vec![0u8; length];
    from.read_exact(&mut payload).await?;
    Ok(match word & 0x8000_0000 {
        0 => Frame::Data {
            stream: word,
            flags,
            payload,
        },
        _ => Frame::Control {
            kind: word as u16,
            flags,
            payload,
        },
    })
}

pub fn control(kind: u16, flags: u8, payload: &[u8]) -> Vec<u8> {
    let mut frame = vec![0x80, 3];
    frame.extend_from_slice(&kind.to_be_bytes());
    frame.push(flags);
    frame.extend_from_slice(&(payload.len() as u32).to_be_bytes()[1..]);
    frame.extend_from_slice(payload);
    frame
}

pub fn data(stream: u32, flags: u8, payload: &[u8]) -> Vec<u8> {
    let mut frame = stream.to_be_bytes().to_vec();
    frame.push(flags);
    frame.extend_from_slice(&(payload.len() as u32).to_be_bytes()[1..]);
    frame.extend_from_slice(payload);
    frame
}

/// Both directions' header compression: one zlib stream each way, with SPDY's dictionary.
pub struct Headers {
    inflate: Decompress,
    deflate: Compress,
}

impl Headers {
    /// A SYN_STREAM's stream and headers, and the SYN_REPLY (no headers) that accepts it.
    pub fn accept(&mut self, syn_stream: &[u8]) -> Option<(u32, HashMap<String, String>, Vec<u8>)> {
        let stream = u32::from_be_bytes(syn_stream.get(..4)?.try_into().ok()?);
        let opened = self.read(syn_stream.get(10..)?)?;
        let mut reply = stream.to_be_bytes().to_vec();
        reply.extend(self.empty());
        Some((stream, opened, control(SYN_REPLY, 0, &reply)))
    }

    pub fn new() -> Headers {
        let mut deflate = Compress::new(Compression::default(), true);
        deflate
            .set_dictionary(&dictionary::dictionary())
            .expect("a fresh stream takes a dictionary");
        Headers {
            inflate: Decompress::new(true),
            deflate,
        }
    }

    fn read(&mut self, mut block: &[u8]) -> Option<HashMap<String, String>> {
        let mut plain = Vec::with_capacity(4096);
        while !block.is_empty() {
            let before = self.inflate.total_in();
            let result = self
                .inflate
                .decompress_vec(block, &mut plain, FlushDecompress::Sync);
            block = &block[(self.inflate.total_in() - before) as usize..];
            match result {
                Err(e) if e.needs_dictionary().is_some() => {
                    self.inflate
                        .set_dictionary(&dictionary::dictionary())
                        .ok()?;
                }
                Err(_) => return None,
                Ok(_) if plain.len() == plain.capacity() => plain.reserve(plain.len()),
                Ok(_) => {}
            }
        }
        let word =
            |at: usize| Some(u32::from_be_bytes(plain.get(at..at + 4)?.try_into().ok()?) as usize);
        let mut headers = HashMap::new();
        let mut at = 4;
        for _ in 0..word(0)? {
            let name = String::from_utf8_lossy(plain.get(at + 4..at + 4 + word(at)?)?).to_string();
            at += 4 + word(at)?;
            let value = String::from_utf8_lossy(plain.get(at + 4..at + 4 + word(at)?)?).to_string();
            at += 4 + word(at)?;
            headers.insert(name, value);
        }
        Some(headers)
    }

    /// An empty header block, as a SYN_REPLY carries.
    fn empty(&mut self) -> Vec<u8> {
        let mut out = Vec::with_capacity(64);
        self.deflate
            .compress_vec(&[0, 0, 0, 0], &mut out, FlushCompress::Sync)
            .expect("compressing into room enough");
        out
    }
}

/// Writes the frames sent to the returned channel, in order, from one task (frames from many
/// tasks must not interleave); the stream is shut down once every sender is gone.
pub fn writer(mut to: impl AsyncWrite + Send + Unpin + 'static) -> mpsc::Sender<Vec<u8>> {
    let (frames, mut outgoing) = mpsc::channel::<Vec<u8>>(64);
    tokio::spawn(async move {
        while let Some(frame) = outgoing.recv().await {
            if to.write_all(&frame).await.is_err() || to.flush().await.is_err() {
                return;
            }
        }
        let _ = to.shutdown().await;
    });
    frames
}
