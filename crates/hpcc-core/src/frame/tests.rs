//! The frame codec: round trips, caps before allocation, truncation, and the byte layout the
//! daemon IPC and the agent protocol already speak. Messages here are prost's `Vec<u8>`
//! (`google.protobuf.BytesValue`), so the tests need no generated code.

use proptest::prelude::*;

use super::*;

fn read_bytes(wire: &[u8], max: u32) -> Result<Option<Vec<u8>>, FrameError> {
    read_frame::<Vec<u8>>(&mut &wire[..], max)
}

#[test]
fn frames_round_trip_back_to_back() {
    let mut wire = Vec::new();
    write_frame(&mut wire, &b"hello".to_vec(), MAX_FRAME_LEN).expect("write");
    write_frame(&mut wire, &Vec::<u8>::new(), MAX_FRAME_LEN).expect("write");
    let mut reader = &wire[..];
    let first = read_frame::<Vec<u8>>(&mut reader, MAX_FRAME_LEN).expect("one");
    assert_eq!(first.as_deref(), Some(&b"hello"[..]));
    let second = read_frame::<Vec<u8>>(&mut reader, MAX_FRAME_LEN).expect("two");
    assert_eq!(second.as_deref(), Some(&b""[..]));
    assert!(matches!(
        read_frame::<Vec<u8>>(&mut reader, MAX_FRAME_LEN),
        Ok(None)
    ));
}

#[test]
fn the_wire_format_is_a_little_endian_length_then_the_message() {
    // BytesValue "hi": field 1, wire type 2 (0x0a), length 2, then the bytes; 4 bytes in all.
    let frame = encode(&b"hi".to_vec(), MAX_FRAME_LEN).expect("encode");
    assert_eq!(frame, [4, 0, 0, 0, 0x0a, 2, b'h', b'i']);
    assert_eq!(
        encode_prefix(0x0102_0304, u32::MAX).expect("fits"),
        [4, 3, 2, 1]
    );
    assert_eq!(
        decode_prefix([4, 3, 2, 1], u32::MAX).expect("fits"),
        0x0102_0304
    );
}

#[test]
fn oversized_lengths_are_refused_before_allocating() {
    let mut wire = u32::MAX.to_le_bytes().to_vec();
    wire.extend_from_slice(b"tail");
    assert!(matches!(
        read_bytes(&wire, MAX_FRAME_LEN),
        Err(FrameError::TooLarge {
            len: 0xffff_ffff,
            max: MAX_FRAME_LEN
        })
    ));
    let mut small = Vec::new();
    write_frame(&mut small, &vec![7u8; 100], MAX_FRAME_LEN).expect("write");
    assert!(matches!(
        read_bytes(&small, 99),
        Err(FrameError::TooLarge { len: 102, max: 99 })
    ));
    let refused = write_frame(&mut Vec::new(), &vec![7u8; 100], 99);
    assert!(matches!(
        refused,
        Err(FrameError::TooLarge { len: 102, max: 99 })
    ));
    let message = refused.expect_err("refused").to_string();
    assert_eq!(message, "frame of 102 bytes is over the 99-byte limit");
}

#[test]
fn truncated_frames_are_errors_not_hangs_or_panics() {
    let mut wire = Vec::new();
    write_frame(&mut wire, &b"0123456789".to_vec(), MAX_FRAME_LEN).expect("write");
    for cut in 1..wire.len() {
        assert!(
            matches!(
                read_bytes(&wire[..cut], MAX_FRAME_LEN),
                Err(FrameError::Truncated)
            ),
            "cut at {cut}"
        );
    }
}

#[test]
fn undecodable_bodies_and_failing_transports_name_the_problem() {
    let decode = read_bytes(&[2, 0, 0, 0, 0xff, 0xff], MAX_FRAME_LEN);
    assert!(matches!(decode, Err(FrameError::Decode(_))), "{decode:?}");

    struct Failing;
    impl Read for Failing {
        fn read(&mut self, _: &mut [u8]) -> io::Result<usize> {
            Err(io::Error::other("line cut"))
        }
    }
    let failed = read_frame::<Vec<u8>>(&mut Failing, MAX_FRAME_LEN).expect_err("fails");
    assert_eq!(failed.to_string(), "frame i/o: line cut");
    assert_eq!(io::Error::from(failed).to_string(), "line cut");
}

/// A reader that hands out one byte per call and is interrupted before each: the prefix loop
/// must keep partial progress.
struct Trickle<'a> {
    bytes: &'a [u8],
    interrupt: bool,
}

impl Read for Trickle<'_> {
    fn read(&mut self, buffer: &mut [u8]) -> io::Result<usize> {
        self.interrupt = !self.interrupt;
        if self.interrupt {
            return Err(io::ErrorKind::Interrupted.into());
        }
        match (self.bytes.split_first(), buffer.first_mut()) {
            (Some((first, rest)), Some(slot)) => {
                *slot = *first;
                self.bytes = rest;
                Ok(1)
            }
            _ => Ok(0),
        }
    }
}

#[test]
fn short_and_interrupted_reads_still_make_whole_frames() {
    let wire = encode(&b"trickle".to_vec(), MAX_FRAME_LEN).expect("encode");
    let mut reader = Trickle {
        bytes: &wire,
        interrupt: false,
    };
    let read = read_frame::<Vec<u8>>(&mut reader, MAX_FRAME_LEN).expect("read");
    assert_eq!(read.as_deref(), Some(&b"trickle"[..]));
}

proptest! {
    #[test]
    fn arbitrary_bytes_never_panic_and_bodies_round_trip(
        wire in proptest::collection::vec(any::<u8>(), 0..64),
        body in proptest::collection::vec(any::<u8>(), 0..256),
    ) {
        let _ = read_bytes(&wire, 1024);
        let mut framed = Vec::new();
        write_frame(&mut framed, &body, 1024).expect("write");
        prop_assert_eq!(read_bytes(&framed, 1024).expect("read"), Some(body));
    }

    #[test]
    fn any_length_prefix_is_checked_before_reading(
        len in any::<u32>(),
        tail in proptest::collection::vec(any::<u8>(), 0..16),
    ) {
        let max = 1 << 20;
        let mut wire = len.to_le_bytes().to_vec();
        wire.extend_from_slice(&tail);
        let result = read_bytes(&wire, max);
        if len > max {
            prop_assert!(matches!(result, Err(FrameError::TooLarge { .. })), "{result:?}");
        } else if usize::try_from(len).unwrap_or(usize::MAX) > tail.len() {
            prop_assert!(matches!(result, Err(FrameError::Truncated)), "{result:?}");
        }
    }
}

#[cfg(feature = "async")]
mod asynchronous {
    //! The tokio flavour reads what the blocking one writes, and the other way round.

    use proptest::prelude::*;

    use super::super::asynchronous::{read_frame, write_frame};
    use super::super::{FrameError, MAX_FRAME_LEN};

    fn block_on<T>(future: impl std::future::Future<Output = T>) -> T {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("a current-thread runtime builds")
            .block_on(future)
    }

    fn read_bytes(wire: &[u8], max: u32) -> Result<Option<Vec<u8>>, FrameError> {
        block_on(read_frame::<Vec<u8>, _>(&mut &wire[..], max))
    }

    #[test]
    fn both_flavours_speak_the_same_bytes() {
        let message = b"same bytes".to_vec();
        let mut from_async = Vec::new();
        block_on(write_frame(&mut from_async, &message, MAX_FRAME_LEN)).expect("write");
        let mut from_sync = Vec::new();
        super::write_frame(&mut from_sync, &message, MAX_FRAME_LEN).expect("write");
        assert_eq!(from_async, from_sync);
        assert_eq!(
            read_bytes(&from_sync, MAX_FRAME_LEN).expect("read"),
            Some(message)
        );
    }

    #[test]
    fn caps_truncation_and_clean_ends() {
        assert!(matches!(read_bytes(&[], MAX_FRAME_LEN), Ok(None)));
        assert!(matches!(
            read_bytes(&[1, 0], MAX_FRAME_LEN),
            Err(FrameError::Truncated)
        ));
        assert!(matches!(
            read_bytes(&[5, 0, 0, 0, 1], MAX_FRAME_LEN),
            Err(FrameError::Truncated)
        ));
        assert!(matches!(
            read_bytes(&101u32.to_le_bytes(), 100),
            Err(FrameError::TooLarge { len: 101, max: 100 })
        ));
        assert!(matches!(
            read_bytes(&[2, 0, 0, 0, 0xff, 0xff], MAX_FRAME_LEN),
            Err(FrameError::Decode(_))
        ));
        let refused = block_on(write_frame(&mut Vec::new(), &vec![0u8; 100], 99));
        assert!(matches!(
            refused,
            Err(FrameError::TooLarge { len: 102, max: 99 })
        ));
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic_and_bodies_round_trip(
            wire in proptest::collection::vec(any::<u8>(), 0..96),
            body in proptest::collection::vec(any::<u8>(), 0..256),
        ) {
            let _ = read_bytes(&wire, 1024);
            let mut framed = Vec::new();
            block_on(write_frame(&mut framed, &body, 1024)).expect("write");
            prop_assert_eq!(read_bytes(&framed, 1024).expect("read"), Some(body));
        }
    }
}
