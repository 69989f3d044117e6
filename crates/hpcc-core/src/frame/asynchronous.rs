//! The frames of [`crate::frame`] over tokio's `AsyncRead`/`AsyncWrite` (feature `async`): the
//! same prefix handling, caps, errors and flush rule as the blocking pair, for the guest agent
//! and the runtime's agent client.

use prost::Message;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::{body_error, decode_body, encode, FrameError, Prefix, Progress};

/// Reads one frame and decodes its body as an `M`, refusing lengths over `max` before
/// allocating; `Ok(None)` when the stream ends cleanly before a frame begins.
pub async fn read_frame<M, R>(reader: &mut R, max: u32) -> Result<Option<M>, FrameError>
where
    M: Message + Default,
    R: AsyncRead + Unpin,
{
    let mut prefix = Prefix::default();
    let len = loop {
        let read = reader
            .read(prefix.unfilled())
            .await
            .map_err(FrameError::Io)?;
        match prefix.advance(read, max)? {
            Progress::Partial => {}
            Progress::Ended => return Ok(None),
            Progress::Body(len) => break len,
        }
    };
    let mut body = vec![0u8; len];
    reader.read_exact(&mut body).await.map_err(body_error)?;
    decode_body(&body).map(Some)
}

/// Writes one frame carrying `message` (refused when over `max`), then flushes.
pub async fn write_frame<W>(
    writer: &mut W,
    message: &impl Message,
    max: u32,
) -> Result<(), FrameError>
where
    W: AsyncWrite + Unpin,
{
    let frame = encode(message, max)?;
    writer.write_all(&frame).await.map_err(FrameError::Io)?;
    writer.flush().await.map_err(FrameError::Io)
}
