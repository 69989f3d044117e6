//! Frames of `hpcc.agent.v1`: a 4-byte little-endian length, then one protobuf message.
//!
//! The length is checked against [`MAX_AGENT_FRAME_LEN`] before the body is allocated, so a
//! peer cannot make us reserve more than that by sending a large prefix.

use std::io;

use hpcc_proto::MAX_AGENT_FRAME_LEN;
use prost::Message;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// A frame that could not be read or written.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FrameError {
    /// The length prefix is above the cap.
    #[error("frame of {len} bytes exceeds the limit of {max} bytes")]
    TooLong {
        /// The announced (or encoded) length.
        len: u64,
        /// The cap.
        max: u32,
    },
    /// The stream ended inside a frame.
    #[error("connection closed inside a frame")]
    Truncated,
    /// The body is not a valid message.
    #[error("undecodable frame body")]
    Decode(#[source] prost::DecodeError),
    /// Reading or writing failed.
    #[error("frame i/o")]
    Io(#[source] io::Error),
}

/// Checks a length prefix against the cap and returns the body length.
pub fn body_len(prefix: [u8; 4]) -> Result<usize, FrameError> {
    let len = u32::from_le_bytes(prefix);
    if len > MAX_AGENT_FRAME_LEN {
        return Err(FrameError::TooLong {
            len: u64::from(len),
            max: MAX_AGENT_FRAME_LEN,
        });
    }
    usize::try_from(len).map_err(|_| FrameError::TooLong {
        len: u64::from(len),
        max: MAX_AGENT_FRAME_LEN,
    })
}

/// Reads one frame; `Ok(None)` when the stream ends cleanly before a frame starts.
pub async fn read_frame<M, R>(reader: &mut R) -> Result<Option<M>, FrameError>
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
    let len = body_len(prefix)?;
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

/// Encodes one frame (prefix and body).
pub fn encode_frame<M: Message>(message: &M) -> Result<Vec<u8>, FrameError> {
    let len = message.encoded_len();
    let max = MAX_AGENT_FRAME_LEN;
    let len32 = u32::try_from(len)
        .ok()
        .filter(|len| *len <= max)
        .ok_or(FrameError::TooLong {
            len: u64::try_from(len).unwrap_or(u64::MAX),
            max,
        })?;
    let mut buffer = Vec::with_capacity(4 + len);
    buffer.extend_from_slice(&len32.to_le_bytes());
    message
        .encode(&mut buffer)
        .map_err(|_| FrameError::TooLong {
            len: u64::from(len32),
            max,
        })?;
    Ok(buffer)
}

/// Writes one frame and flushes it.
pub async fn write_frame<M, W>(writer: &mut W, message: &M) -> Result<(), FrameError>
where
    M: Message,
    W: AsyncWrite + Unpin,
{
    let buffer = encode_frame(message)?;
    writer.write_all(&buffer).await.map_err(FrameError::Io)?;
    writer.flush().await.map_err(FrameError::Io)
}

#[cfg(test)]
mod tests {
    use hpcc_proto::agent::{host_message, HostMessage, InputsDone};
    use proptest::prelude::*;

    use super::*;

    fn decode(bytes: &[u8]) -> Result<Option<HostMessage>, FrameError> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("a current-thread runtime builds");
        let mut reader = bytes;
        runtime.block_on(read_frame::<HostMessage, _>(&mut reader))
    }

    #[test]
    fn round_trip() {
        let message = HostMessage {
            kind: Some(host_message::Kind::InputsDone(InputsDone {})),
        };
        let bytes = encode_frame(&message).expect("small message encodes");
        assert_eq!(decode(&bytes).expect("decodes"), Some(message));
    }

    #[test]
    fn caps_and_truncation() {
        assert!(matches!(decode(&[]), Ok(None)));
        assert!(matches!(decode(&[1, 0]), Err(FrameError::Truncated)));
        assert!(matches!(
            decode(&[5, 0, 0, 0, 1]),
            Err(FrameError::Truncated)
        ));
        let too_long = (MAX_AGENT_FRAME_LEN + 1).to_le_bytes();
        assert!(matches!(decode(&too_long), Err(FrameError::TooLong { .. })));
        assert!(matches!(
            decode(&[2, 0, 0, 0, 0xff, 0xff]),
            Err(FrameError::Decode(_))
        ));
    }

    proptest! {
        #[test]
        fn decoding_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = decode(&bytes);
        }

        #[test]
        fn any_length_prefix_is_checked_before_reading(len in any::<u32>(), tail in proptest::collection::vec(any::<u8>(), 0..16)) {
            let mut bytes = len.to_le_bytes().to_vec();
            bytes.extend_from_slice(&tail);
            let result = decode(&bytes);
            if len > MAX_AGENT_FRAME_LEN {
                prop_assert!(matches!(result, Err(FrameError::TooLong { .. })), "{result:?}");
            } else if usize::try_from(len).unwrap_or(usize::MAX) > tail.len() {
                prop_assert!(matches!(result, Err(FrameError::Truncated)), "{result:?}");
            }
        }
    }
}
