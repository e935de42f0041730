//! HL7 v2 over bytes: parsing, field paths, escapes, character sets, batches and ACKs.
//!
//! Everything here works on the bytes as received. Parsing never copies or rewrites the
//! frame; values are slices into it. Text is decoded (escapes, MSH-18 character set) only when
//! a caller asks. Nothing here does I/O or knows about sockets.

mod ack;
mod batch;
mod charset;
mod delimiters;
mod edit;
mod envelope;
mod escape;
mod message;
mod path;

pub use ack::{
    AckCode, AckCondition, AckError, AckMode, AckStamp, AckStamper, ErrorCode, ErrorLocation,
    FixedStamper, SystemStamper, Verdict, build_ack,
};
pub use batch::{SplitError, split_messages};
pub use charset::{Charset, DeclaredCharset};
pub use delimiters::{DelimiterError, Delimiters};
pub use edit::{Document, EditError};
pub use envelope::{
    CountProblem, Envelope, EnvelopeError, Group, envelope_field, is_envelope, parse_envelope,
};
pub use escape::{escape, unescape};
pub use message::{HeaderKind, Message, ParseError, Segment, Version};

/// The `index`-th (0-based) piece of `bytes` split on `separator` (whole value when `None`).
pub fn split_piece(bytes: &[u8], separator: Option<u8>, index: usize) -> Option<&[u8]> {
    message::nth_split(bytes, separator, index)
}
pub use path::{FieldPath, FieldPattern, PathError, PathPattern, Pick};
