//! Frames of `hpcc.agent.v1` on the host side: a 4-byte little-endian length, then one protobuf
//! message, the length checked against [`MAX_AGENT_FRAME_LEN`] before the body is allocated.
//!
//! The agent has its own copy of these few lines: it may depend on nothing of hpcc but
//! `hpcc-proto`, which holds no logic.

use std::io;

use hpcc_proto::MAX_AGENT_FRAME_LEN;
use prost::Message;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// A frame that could not be read or written.
#[derive(Debug, thiserror::Error)]
pub(crate) enum FrameError {
    /// The length prefix is above the cap.
    #[error("frame of {len} bytes exceeds the limit of {max} bytes")]
    TooLong { len: u64, max: u32 },
    /// The stream ended inside a frame.
    #[error("connection closed inside a frame")]
    Truncated,
    /// The body is not a valid message.
    #[error("undecodable frame body: {0}")]
    Decode(#[source] prost::DecodeError),
    /// Reading or writing failed.
    #[error("frame i/o: {0}")]
    Io(#[source] io::Error),
}

/// Reads one frame; `Ok(None)` when the stream ends cleanly before a frame starts.
pub(crate) async fn read_frame<M, R>(reader: &mut R) -> Result<Option<M>, FrameError>
where
    M: Message + Default,
    R: AsyncRead + Unpin,
{
    let mut prefix = [0u8; 4];
    let mut filled = 0;
    while filled < prefix.len() {
        let read = reader
            .read(&mut prefix[filled..])
            .await
            .map_err(FrameError::Io)?;
        if read == 0 {
            return if filled == 0 {
                Ok(None)
            } else {
                Err(FrameError::Truncated)
            };
        }
        filled += read;
    }
    let len = u32::from_le_bytes(prefix);
    let too_long = FrameError::TooLong {
        len: u64::from(len),
        max: MAX_AGENT_FRAME_LEN,
    };
    if len > MAX_AGENT_FRAME_LEN {
        return Err(too_long);
    }
    let len = usize::try_from(len).map_err(|_| too_long)?;
    let mut body = vec![0u8; len];
    match reader.read_exact(&mut body).await {
        Ok(_) => {}
        Err(error) if error.kind() == io::ErrorKind::UnexpectedEof => {
            return Err(FrameError::Truncated)
        }
        Err(error) => return Err(FrameError::Io(error)),
    }
    M::decode(body.as_slice())
        .map(Some)
        .map_err(FrameError::Decode)
}

/// Writes one frame (without flushing).
pub(crate) async fn write_frame<M, W>(writer: &mut W, message: &M) -> Result<(), FrameError>
where
    M: Message,
    W: AsyncWrite + Unpin,
{
    let len = message.encoded_len();
    let len32 = u32::try_from(len)
        .ok()
        .filter(|len| *len <= MAX_AGENT_FRAME_LEN)
        .ok_or(FrameError::TooLong {
            len: u64::try_from(len).unwrap_or(u64::MAX),
            max: MAX_AGENT_FRAME_LEN,
        })?;
    let mut buffer = Vec::with_capacity(4 + len);
    buffer.extend_from_slice(&len32.to_le_bytes());
    // Encoding into a Vec cannot run out of room.
    let _ = message.encode(&mut buffer);
    writer.write_all(&buffer).await.map_err(FrameError::Io)
}

#[cfg(test)]
mod tests {
    use hpcc_proto::agent::{agent_message, AgentMessage, OutputsDone};
    use proptest::prelude::*;

    use super::*;

    fn decode(bytes: &[u8]) -> Result<Option<AgentMessage>, FrameError> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("a current-thread runtime builds");
        let mut reader = bytes;
        runtime.block_on(read_frame::<AgentMessage, _>(&mut reader))
    }

    #[test]
    fn round_trip_and_errors() {
        let message = AgentMessage {
            kind: Some(agent_message::Kind::OutputsDone(OutputsDone {})),
        };
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime");
        let mut bytes = Vec::new();
        runtime
            .block_on(write_frame(&mut bytes, &message))
            .expect("encodes");
        assert_eq!(decode(&bytes).expect("decodes"), Some(message));
        assert!(matches!(decode(&[]), Ok(None)));
        assert!(matches!(decode(&[3]), Err(FrameError::Truncated)));
        assert!(matches!(decode(&[9, 0, 0, 0]), Err(FrameError::Truncated)));
        let too_long = (MAX_AGENT_FRAME_LEN + 1).to_le_bytes();
        assert!(matches!(decode(&too_long), Err(FrameError::TooLong { .. })));
        assert!(matches!(
            decode(&[1, 0, 0, 0, 0xff]),
            Err(FrameError::Decode(_))
        ));
    }

    proptest! {
        #[test]
        fn decoding_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..96)) {
            let _ = decode(&bytes);
        }

        #[test]
        fn oversized_prefixes_are_refused_before_reading(len in (MAX_AGENT_FRAME_LEN + 1)..=u32::MAX) {
            let result = decode(&len.to_le_bytes());
            prop_assert!(matches!(result, Err(FrameError::TooLong { .. })), "{result:?}");
        }
    }
}
