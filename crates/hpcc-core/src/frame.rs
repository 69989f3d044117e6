//! Length-prefixed protobuf frames: a 4-byte little-endian length, then that many bytes of one
//! message. The one encoding of both the daemon IPC (`hpcc` ⇄ `hpccd`) and `hpcc.agent.v1`
//! (worker ⇄ guest agent); the bytes on the wire are the same as before this module served
//! both, so old and new peers interoperate.
//!
//! - The pure halves, [`encode_prefix`], [`decode_prefix`] and [`encode`], know nothing of
//!   transports.
//! - [`read_frame`] and [`write_frame`] run them over blocking [`std::io`] (the wrapper and the
//!   daemon's connection threads, with timeouts set on the socket).
//! - [`asynchronous`] (feature `async`) runs the very same functions over tokio's
//!   `AsyncRead`/`AsyncWrite`, for the agent and the runtime. It lives here, behind a feature,
//!   rather than in the tokio crates: the agent and the runtime both need it and may not depend
//!   on each other, and one read loop is the point. The feature only adds tokio's `io-util`
//!   traits; the wrapper, which does not enable it, stays free of tokio.
//!
//! **Caps.** Every read checks the announced length against the caller's `max` *before*
//! allocating, so a garbage or hostile prefix costs nothing but the refusal; every write checks
//! it too, so we never send what the peer would refuse. The caps are the callers':
//! [`MAX_FRAME_LEN`] for the daemon IPC, `hpcc_proto::MAX_AGENT_FRAME_LEN` for the agent.
//!
//! **End of stream.** A peer that closes cleanly between frames is not an error: reads return
//! `Ok(None)`. Closing inside a frame (prefix or body) is [`FrameError::Truncated`].
//!
//! **Flushing.** [`write_frame`] (both flavours) writes the whole frame and then flushes, so a
//! frame is on its way when the call returns and no caller can leave a peer waiting on bytes
//! stuck in a buffer. A caller that batches many frames through a buffered writer on purpose
//! (the runtime sending a job's inputs) writes [`encode`]'s bytes itself and flushes where it
//! then waits for the peer.

use std::io::{self, Read, Write};

use prost::Message;

#[cfg(feature = "async")]
pub mod asynchronous;

/// The length of the prefix that announces a frame's body length.
pub const PREFIX_LEN: usize = 4;

/// The largest frame of the daemon IPC: a compile's stdout and stderr travel in one reply, and
/// a compiler can be chatty, but not this chatty.
pub const MAX_FRAME_LEN: u32 = 64 << 20;

/// Why a frame could not be read or written. The message carries its cause (the daemon and the
/// runtime print it with `{}` into a refusal or an agent error), so the cause is not repeated as
/// a `source`.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FrameError {
    /// The announced (or, when writing, the encoded) length is over the cap; nothing was
    /// allocated or sent.
    #[error("frame of {len} bytes is over the {max}-byte limit")]
    TooLarge {
        /// The announced or encoded length.
        len: u64,
        /// The cap.
        max: u32,
    },
    /// The stream ended inside a frame.
    #[error("connection closed inside a frame")]
    Truncated,
    /// The body is not a valid message of the expected type.
    #[error("undecodable frame body: {0}")]
    Decode(prost::DecodeError),
    /// Reading or writing failed.
    #[error("frame i/o: {0}")]
    Io(io::Error),
}

impl From<FrameError> for io::Error {
    /// For callers that speak `io::Result`: an i/o failure stays itself, a refused or
    /// undecodable frame becomes `InvalidData`.
    fn from(error: FrameError) -> Self {
        match error {
            FrameError::Io(error) => error,
            FrameError::Truncated => io::ErrorKind::UnexpectedEof.into(),
            other => io::Error::new(io::ErrorKind::InvalidData, other),
        }
    }
}

/// The prefix announcing a body of `len` bytes, or `TooLarge` when `len` is over `max`.
pub fn encode_prefix(len: usize, max: u32) -> Result<[u8; PREFIX_LEN], FrameError> {
    let too_large = || FrameError::TooLarge {
        len: u64::try_from(len).unwrap_or(u64::MAX),
        max,
    };
    let len = u32::try_from(len).map_err(|_| too_large())?;
    if len > max {
        return Err(too_large());
    }
    Ok(len.to_le_bytes())
}

/// The body length a prefix announces, or `TooLarge` when it is over `max`.
pub fn decode_prefix(prefix: [u8; PREFIX_LEN], max: u32) -> Result<usize, FrameError> {
    let len = u32::from_le_bytes(prefix);
    let too_large = FrameError::TooLarge {
        len: u64::from(len),
        max,
    };
    if len > max {
        return Err(too_large);
    }
    usize::try_from(len).map_err(|_| too_large)
}

/// One whole frame (prefix and body) carrying `message`.
pub fn encode<M: Message>(message: &M, max: u32) -> Result<Vec<u8>, FrameError> {
    let len = message.encoded_len();
    let prefix = encode_prefix(len, max)?;
    let mut frame = Vec::with_capacity(PREFIX_LEN + len);
    frame.extend_from_slice(&prefix);
    // Encoding into a Vec grows it as needed, so this cannot run out of room.
    message
        .encode(&mut frame)
        .map_err(|_| FrameError::TooLarge {
            len: u64::try_from(len).unwrap_or(u64::MAX),
            max,
        })?;
    Ok(frame)
}

/// Decodes a body read after its prefix.
fn decode_body<M: Message + Default>(body: &[u8]) -> Result<M, FrameError> {
    M::decode(body).map_err(FrameError::Decode)
}

/// A prefix being filled by reads of any size, shared by the blocking and async readers.
#[derive(Default)]
struct Prefix {
    bytes: [u8; PREFIX_LEN],
    filled: usize,
}

/// Where a prefix stands after a read.
enum Progress {
    /// More bytes are needed.
    Partial,
    /// The stream ended cleanly before the frame began.
    Ended,
    /// The prefix is complete and announces this many body bytes (within the cap).
    Body(usize),
}

impl Prefix {
    fn unfilled(&mut self) -> &mut [u8] {
        &mut self.bytes[self.filled..]
    }

    /// Records a read of `read` bytes into [`Prefix::unfilled`].
    fn advance(&mut self, read: usize, max: u32) -> Result<Progress, FrameError> {
        if read == 0 {
            return if self.filled == 0 {
                Ok(Progress::Ended)
            } else {
                Err(FrameError::Truncated)
            };
        }
        self.filled += read;
        if self.filled < PREFIX_LEN {
            Ok(Progress::Partial)
        } else {
            decode_prefix(self.bytes, max).map(Progress::Body)
        }
    }
}

/// Maps a failed body read: the stream ending early is `Truncated`.
fn body_error(error: io::Error) -> FrameError {
    if error.kind() == io::ErrorKind::UnexpectedEof {
        FrameError::Truncated
    } else {
        FrameError::Io(error)
    }
}

/// Reads one frame and decodes its body as an `M`, refusing lengths over `max` before
/// allocating; `Ok(None)` when the stream ends cleanly before a frame begins.
pub fn read_frame<M: Message + Default>(
    reader: &mut impl Read,
    max: u32,
) -> Result<Option<M>, FrameError> {
    let mut prefix = Prefix::default();
    let len = loop {
        let read = match reader.read(prefix.unfilled()) {
            Ok(read) => read,
            Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
            Err(error) => return Err(FrameError::Io(error)),
        };
        match prefix.advance(read, max)? {
            Progress::Partial => {}
            Progress::Ended => return Ok(None),
            Progress::Body(len) => break len,
        }
    };
    let mut body = vec![0u8; len];
    reader.read_exact(&mut body).map_err(body_error)?;
    decode_body(&body).map(Some)
}

/// Writes one frame carrying `message` (refused when over `max`), then flushes.
pub fn write_frame(
    writer: &mut impl Write,
    message: &impl Message,
    max: u32,
) -> Result<(), FrameError> {
    let frame = encode(message, max)?;
    writer.write_all(&frame).map_err(FrameError::Io)?;
    writer.flush().map_err(FrameError::Io)
}

#[cfg(test)]
mod tests;
