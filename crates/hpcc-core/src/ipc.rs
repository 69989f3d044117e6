//! Frames for local IPC: a 4-byte little-endian length, then that many bytes.
//!
//! Both ends check the length against a cap *before* allocating, so a garbage or hostile
//! length prefix costs nothing but the refusal. Reading is generic over [`std::io::Read`] so the
//! same rules serve Unix sockets and TCP; the daemon's own loop uses them with timeouts set on
//! the socket.

use std::io::{self, Read, Write};

/// The largest frame either side accepts: a compile's stdout and stderr travel in one reply,
/// and a compiler can be chatty, but not this chatty.
pub const MAX_FRAME_LEN: u32 = 64 << 20;

/// Why a frame could not be read.
#[derive(Debug)]
pub enum FrameError {
    /// The peer closed the connection cleanly before a new frame began.
    Closed,
    /// The length prefix is over the cap; nothing was allocated.
    TooLarge(u32),
    /// The connection failed or closed inside a frame.
    Io(io::Error),
}

impl std::fmt::Display for FrameError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FrameError::Closed => f.write_str("connection closed"),
            FrameError::TooLarge(len) => {
                write!(
                    f,
                    "frame of {len} bytes is over the {MAX_FRAME_LEN}-byte limit"
                )
            }
            FrameError::Io(error) => write!(f, "{error}"),
        }
    }
}

impl std::error::Error for FrameError {}

/// Reads one frame, refusing lengths over `max`.
pub fn read_frame(reader: &mut impl Read, max: u32) -> Result<Vec<u8>, FrameError> {
    let mut prefix = [0u8; 4];
    let mut filled = 0;
    while filled < prefix.len() {
        match reader.read(&mut prefix[filled..]) {
            Ok(0) if filled == 0 => return Err(FrameError::Closed),
            Ok(0) => return Err(FrameError::Io(io::ErrorKind::UnexpectedEof.into())),
            Ok(read) => filled += read,
            Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
            Err(error) => return Err(FrameError::Io(error)),
        }
    }
    let len = u32::from_le_bytes(prefix);
    if len > max {
        return Err(FrameError::TooLarge(len));
    }
    let len = usize::try_from(len).map_err(|_| FrameError::TooLarge(len))?;
    let mut body = vec![0u8; len];
    reader.read_exact(&mut body).map_err(FrameError::Io)?;
    Ok(body)
}

/// Writes one frame (prefix and body in one write where the transport allows).
pub fn write_frame(writer: &mut impl Write, body: &[u8]) -> io::Result<()> {
    let len = u32::try_from(body.len())
        .ok()
        .filter(|len| *len <= MAX_FRAME_LEN)
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "frame too large"))?;
    let mut frame = Vec::with_capacity(4 + body.len());
    frame.extend_from_slice(&len.to_le_bytes());
    frame.extend_from_slice(body);
    writer.write_all(&frame)?;
    writer.flush()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_back_to_back() {
        let mut wire = Vec::new();
        write_frame(&mut wire, b"hello").expect("write");
        write_frame(&mut wire, b"").expect("write");
        let mut reader = &wire[..];
        assert_eq!(
            read_frame(&mut reader, MAX_FRAME_LEN).expect("one"),
            b"hello"
        );
        assert_eq!(read_frame(&mut reader, MAX_FRAME_LEN).expect("two"), b"");
        assert!(matches!(
            read_frame(&mut reader, MAX_FRAME_LEN),
            Err(FrameError::Closed)
        ));
    }

    #[test]
    fn oversized_lengths_are_refused_before_allocating() {
        let mut wire = u32::MAX.to_le_bytes().to_vec();
        wire.extend_from_slice(b"tail");
        assert!(matches!(
            read_frame(&mut &wire[..], MAX_FRAME_LEN),
            Err(FrameError::TooLarge(u32::MAX))
        ));
        let mut small = Vec::new();
        write_frame(&mut small, &[7u8; 100]).expect("write");
        assert!(matches!(
            read_frame(&mut &small[..], 99),
            Err(FrameError::TooLarge(100))
        ));
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_bytes_never_panic_and_bodies_round_trip(
            wire in proptest::collection::vec(proptest::num::u8::ANY, 0..64),
            body in proptest::collection::vec(proptest::num::u8::ANY, 0..256),
        ) {
            let _ = read_frame(&mut &wire[..], 1024);
            let mut framed = Vec::new();
            write_frame(&mut framed, &body).expect("write");
            proptest::prop_assert_eq!(read_frame(&mut &framed[..], 1024).expect("read"), body);
        }
    }

    #[test]
    fn truncated_frames_are_errors_not_hangs_or_panics() {
        let mut wire = Vec::new();
        write_frame(&mut wire, b"0123456789").expect("write");
        for cut in 1..wire.len() {
            assert!(
                matches!(
                    read_frame(&mut &wire[..cut], MAX_FRAME_LEN),
                    Err(FrameError::Io(_))
                ),
                "cut at {cut}"
            );
        }
    }
}
