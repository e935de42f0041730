//! The MLLP codec: frames are `0x0B <message bytes> 0x1C 0x0D`.
//!
//! Tolerance rules (each one keeps a sender working without ever guessing at content):
//! - bytes before a start block are discarded and counted ([`MllpCodec::take_discarded`]);
//! - `0x1C` ends a frame; the `0x0D` that should follow is consumed when it comes, and its
//!   absence is counted ([`MllpCodec::take_missing_trailers`]) instead of stalling the frame;
//!   a line feed after the end block or trailer (`0x1C 0x0D 0x0A`, `0x1C 0x0A`) is swallowed;
//! - a start block inside a frame abandons the partial frame (counted as discarded) and starts
//!   a new one, since `0x0B` cannot occur inside HL7 text;
//! - a frame longer than `max_frame_size` is an error: the caller closes the connection.
//!
//! The decoder only ever looks at each byte once, so any chunking of the input stream (down to
//! one byte per read) yields the same frames; a property test holds it to that.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use tokio_util::codec::{Decoder, Encoder};

/// Start block.
pub const START_BLOCK: u8 = 0x0B;
/// End block.
pub const END_BLOCK: u8 = 0x1C;
/// Carriage return that follows the end block.
pub const TRAILER: u8 = 0x0D;

/// Why the stream cannot go on.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// The frame grew past the configured maximum.
    #[error(
        "frame exceeds MAX_FRAME_SIZE ({limit} bytes); raise MAX_FRAME_SIZE if such messages are expected"
    )]
    TooLarge {
        /// The configured maximum.
        limit: usize,
    },
    /// The stream ended inside a frame.
    #[error("connection closed in the middle of a frame ({received} bytes received, no end block)")]
    Incomplete {
        /// Bytes of the unfinished frame.
        received: usize,
    },
    /// Socket error. Not marked as the error's source: the message names it already, and a
    /// chain printer (`{:#}`) would print it twice.
    #[error("i/o error: {0}")]
    Io(std::io::Error),
}

impl From<std::io::Error> for FrameError {
    fn from(error: std::io::Error) -> Self {
        Self::Io(error)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// Looking for a start block.
    Idle,
    /// Inside a frame; `scanned` bytes after the start block hold no end block.
    InFrame { scanned: usize },
    /// An end block was seen; the next byte should be the trailer.
    AfterEnd,
    /// The trailer was seen; a line feed right after it is swallowed too.
    AfterTrailer,
}

/// MLLP framing as a `tokio_util` codec.
#[derive(Debug)]
pub struct MllpCodec {
    max_frame_size: usize,
    state: State,
    discarded: u64,
    missing_trailers: u64,
}

impl MllpCodec {
    /// A codec that refuses frames longer than `max_frame_size` bytes.
    pub fn new(max_frame_size: usize) -> Self {
        Self {
            max_frame_size,
            state: State::Idle,
            discarded: 0,
            missing_trailers: 0,
        }
    }

    /// True between a start block and its end block.
    pub fn in_frame(&self) -> bool {
        matches!(self.state, State::InFrame { .. })
    }

    /// Bytes discarded outside frames since the last call.
    pub fn take_discarded(&mut self) -> u64 {
        std::mem::take(&mut self.discarded)
    }

    /// End blocks not followed by `0x0D` since the last call.
    pub fn take_missing_trailers(&mut self) -> u64 {
        std::mem::take(&mut self.missing_trailers)
    }
}

impl Decoder for MllpCodec {
    type Item = Bytes;
    type Error = FrameError;

    fn decode(&mut self, buffer: &mut BytesMut) -> Result<Option<Bytes>, FrameError> {
        loop {
            match self.state {
                State::AfterEnd => {
                    let Some(&next) = buffer.first() else {
                        return Ok(None);
                    };
                    self.state = State::Idle;
                    match next {
                        TRAILER => {
                            buffer.advance(1);
                            self.state = State::AfterTrailer;
                        }
                        b'\n' => {
                            buffer.advance(1);
                            self.missing_trailers += 1;
                        }
                        _ => self.missing_trailers += 1,
                    }
                }
                State::AfterTrailer => {
                    let Some(&next) = buffer.first() else {
                        return Ok(None);
                    };
                    if next == b'\n' {
                        buffer.advance(1);
                    }
                    self.state = State::Idle;
                }
                State::Idle => match memchr::memchr(START_BLOCK, buffer) {
                    Some(position) => {
                        self.discarded += position as u64;
                        buffer.advance(position + 1);
                        self.state = State::InFrame { scanned: 0 };
                    }
                    None => {
                        self.discarded += buffer.len() as u64;
                        buffer.clear();
                        return Ok(None);
                    }
                },
                State::InFrame { scanned } => {
                    let found = memchr::memchr2(END_BLOCK, START_BLOCK, &buffer[scanned..]);
                    let Some(relative) = found else {
                        if buffer.len() > self.max_frame_size {
                            self.state = State::Idle;
                            return Err(FrameError::TooLarge {
                                limit: self.max_frame_size,
                            });
                        }
                        self.state = State::InFrame {
                            scanned: buffer.len(),
                        };
                        return Ok(None);
                    };
                    let position = scanned + relative;
                    if position > self.max_frame_size {
                        self.state = State::Idle;
                        return Err(FrameError::TooLarge {
                            limit: self.max_frame_size,
                        });
                    }
                    if buffer[position] == START_BLOCK {
                        // A new start block abandons the unfinished frame.
                        self.discarded += position as u64 + 1;
                        buffer.advance(position + 1);
                        self.state = State::InFrame { scanned: 0 };
                        continue;
                    }
                    let frame = buffer.split_to(position).freeze();
                    buffer.advance(1);
                    self.state = State::AfterEnd;
                    return Ok(Some(frame));
                }
            }
        }
    }

    fn decode_eof(&mut self, buffer: &mut BytesMut) -> Result<Option<Bytes>, FrameError> {
        if let Some(frame) = self.decode(buffer)? {
            return Ok(Some(frame));
        }
        if self.in_frame() {
            let received = buffer.len();
            buffer.clear();
            self.state = State::Idle;
            return Err(FrameError::Incomplete { received });
        }
        Ok(None)
    }
}

impl<T: AsRef<[u8]>> Encoder<T> for MllpCodec {
    type Error = FrameError;

    fn encode(&mut self, message: T, buffer: &mut BytesMut) -> Result<(), FrameError> {
        let message = message.as_ref();
        buffer.reserve(message.len() + 3);
        buffer.put_u8(START_BLOCK);
        buffer.put_slice(message);
        buffer.put_u8(END_BLOCK);
        buffer.put_u8(TRAILER);
        Ok(())
    }
}

/// Wrap one message in MLLP framing.
pub fn frame(message: &[u8]) -> Vec<u8> {
    let mut framed = Vec::with_capacity(message.len() + 3);
    framed.push(START_BLOCK);
    framed.extend_from_slice(message);
    framed.push(END_BLOCK);
    framed.push(TRAILER);
    framed
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn decode_all(codec: &mut MllpCodec, chunks: &[&[u8]]) -> Vec<Bytes> {
        let mut buffer = BytesMut::new();
        let mut frames = Vec::new();
        for chunk in chunks {
            buffer.extend_from_slice(chunk);
            while let Some(frame) = codec.decode(&mut buffer).expect("decodes") {
                frames.push(frame);
            }
        }
        frames
    }

    #[test]
    fn junk_before_start_block_is_discarded_and_counted() {
        let mut codec = MllpCodec::new(1024);
        let frames = decode_all(&mut codec, &[b"junk\r\n\x0bMSH|a\x1c\x0d"]);
        assert_eq!(frames, vec![Bytes::from_static(b"MSH|a")]);
        assert_eq!(codec.take_discarded(), 6);
        assert_eq!(codec.take_discarded(), 0);
    }

    #[test]
    fn end_block_without_trailer_still_ends_the_frame() {
        let mut codec = MllpCodec::new(1024);
        let frames = decode_all(&mut codec, &[b"\x0bone\x1c\x0btwo\x1c\x0d"]);
        assert_eq!(
            frames,
            vec![Bytes::from_static(b"one"), Bytes::from_static(b"two")]
        );
        assert_eq!(codec.take_missing_trailers(), 1);
        assert_eq!(codec.take_discarded(), 0);
    }

    #[test]
    fn line_feed_after_the_trailer_is_not_junk() {
        let mut codec = MllpCodec::new(1024);
        let frames = decode_all(
            &mut codec,
            &[b"\x0bone\x1c\x0d\n\x0btwo\x1c\n\x0bthree\x1c\x0d"],
        );
        assert_eq!(frames.len(), 3);
        assert_eq!(codec.take_discarded(), 0);
        assert_eq!(codec.take_missing_trailers(), 1);
    }

    #[test]
    fn restarted_frame_abandons_the_partial_one() {
        let mut codec = MllpCodec::new(1024);
        let frames = decode_all(&mut codec, &[b"\x0bpartial\x0bwhole\x1c\x0d"]);
        assert_eq!(frames, vec![Bytes::from_static(b"whole")]);
        assert_eq!(codec.take_discarded(), 8);
    }

    #[test]
    fn empty_frame_is_a_frame() {
        let mut codec = MllpCodec::new(1024);
        assert_eq!(
            decode_all(&mut codec, &[b"\x0b\x1c\x0d"]),
            vec![Bytes::new()]
        );
    }

    #[test]
    fn oversize_frame_is_an_error_before_buffering_more() {
        let mut codec = MllpCodec::new(8);
        let mut buffer = BytesMut::from(&b"\x0b123456789"[..]);
        assert!(matches!(
            codec.decode(&mut buffer),
            Err(FrameError::TooLarge { limit: 8 })
        ));
        let mut codec = MllpCodec::new(8);
        let mut exact = BytesMut::from(&b"\x0b12345678\x1c\x0d"[..]);
        assert_eq!(
            codec.decode(&mut exact).expect("fits").as_deref(),
            Some(&b"12345678"[..])
        );
        let mut codec = MllpCodec::new(8);
        let mut over = BytesMut::from(&b"\x0b123456789\x1c\x0d"[..]);
        assert!(codec.decode(&mut over).is_err());
    }

    #[test]
    fn eof_inside_a_frame_is_reported() {
        let mut codec = MllpCodec::new(64);
        let mut buffer = BytesMut::from(&b"\x0bMSH|unfinished"[..]);
        assert!(matches!(
            codec.decode_eof(&mut buffer),
            Err(FrameError::Incomplete { received: 14 })
        ));
    }

    #[test]
    fn encoder_and_frame_agree() {
        let mut codec = MllpCodec::new(64);
        let mut buffer = BytesMut::new();
        codec.encode(b"MSH|x", &mut buffer).expect("encodes");
        assert_eq!(&buffer[..], frame(b"MSH|x").as_slice());
    }

    fn stream_strategy() -> impl Strategy<Value = (Vec<u8>, Vec<usize>)> {
        let message = proptest::collection::vec(
            any::<u8>().prop_filter("no framing bytes", |b| *b != START_BLOCK && *b != END_BLOCK),
            0..40,
        );
        let junk = proptest::collection::vec(
            any::<u8>().prop_filter("no start block", |b| *b != START_BLOCK),
            0..5,
        );
        (proptest::collection::vec((junk, message, any::<bool>()), 0..6)).prop_flat_map(|parts| {
            let mut stream = Vec::new();
            for (junk, message, trailer) in parts {
                stream.extend_from_slice(&junk);
                stream.push(START_BLOCK);
                stream.extend_from_slice(&message);
                stream.push(END_BLOCK);
                if trailer {
                    stream.push(TRAILER);
                }
            }
            let length = stream.len();
            (Just(stream), proptest::collection::vec(0..=length, 0..12))
        })
    }

    proptest! {
        #[test]
        fn any_chunking_yields_the_same_frames((stream, mut cuts) in stream_strategy()) {
            let mut whole = MllpCodec::new(1 << 16);
            let expected = decode_all(&mut whole, &[&stream]);
            cuts.sort_unstable();
            let mut chunks = Vec::new();
            let mut start = 0;
            for cut in cuts {
                chunks.push(&stream[start..cut]);
                start = cut;
            }
            chunks.push(&stream[start..]);
            let mut chunked = MllpCodec::new(1 << 16);
            prop_assert_eq!(decode_all(&mut chunked, &chunks), expected.clone());
            let single: Vec<&[u8]> = stream.chunks(1).collect();
            let mut bytewise = MllpCodec::new(1 << 16);
            prop_assert_eq!(decode_all(&mut bytewise, &single), expected);
            prop_assert_eq!(chunked.take_discarded(), whole.take_discarded());
        }
    }
}
