//! The resynchronisation preamble of `hpcc.agent.v1` over a virtio-serial port.
//!
//! A vsock or Unix socket connection is a fresh byte stream; a virtio-serial port is one long
//! stream that successive hosts take turns on. When a host cancels a job and another connects
//! to the same port at once, the guest may still hold bytes the first host sent, and the
//! agent may still write answers meant for it. So each connection begins with a preamble:
//!
//! 1. The host writes [`SYNC_MAGIC`] and a random nonce of [`NONCE_LEN`] bytes, and may write
//!    the same preamble again while it waits (the first copy may have been eaten by the end
//!    of the previous connection).
//! 2. The agent discards everything until it sees a whole preamble, then answers once with
//!    [`ACK_MAGIC`] and the same nonce, and skips any further copies of that preamble.
//! 3. The host discards everything until it sees the answer with its own nonce; only then do
//!    frames flow, and the agent writes nothing for the previous connection after the answer.
//!
//! The first four bytes of either magic, read as a frame's length prefix, exceed
//! [`crate::MAX_AGENT_FRAME_LEN`], so a preamble is never taken for the start of a frame, and
//! the magic's first byte occurs nowhere else in it, so scanning needs no backtracking.

/// What a host writes before its nonce.
pub const SYNC_MAGIC: [u8; 8] = *b"\xffHPCCsyn";

/// What the agent writes before the nonce it answers.
pub const ACK_MAGIC: [u8; 8] = *b"\xffHPCCack";

/// The length of a connection's nonce.
pub const NONCE_LEN: usize = 16;

/// A magic and a nonce.
pub const PREAMBLE_LEN: usize = SYNC_MAGIC.len() + NONCE_LEN;

/// `magic` followed by `nonce`.
pub fn preamble(magic: &[u8; 8], nonce: &[u8; NONCE_LEN]) -> [u8; PREAMBLE_LEN] {
    let mut bytes = [0u8; PREAMBLE_LEN];
    bytes[..magic.len()].copy_from_slice(magic);
    bytes[magic.len()..].copy_from_slice(nonce);
    bytes
}

/// Finds the first `magic` + nonce in a stream fed in pieces, discarding what comes before.
#[derive(Debug, Clone)]
pub struct Scanner {
    magic: [u8; 8],
    window: Vec<u8>,
}

impl Scanner {
    /// A scanner for preambles that start with `magic`.
    pub fn new(magic: [u8; 8]) -> Scanner {
        Scanner {
            magic,
            window: Vec::with_capacity(PREAMBLE_LEN),
        }
    }

    /// Feeds `bytes`; once a whole preamble has been seen, returns its nonce and how many
    /// bytes of `bytes` it took (the rest belongs to whatever follows the preamble), and
    /// starts afresh.
    pub fn feed(&mut self, bytes: &[u8]) -> Option<([u8; NONCE_LEN], usize)> {
        for (index, &byte) in bytes.iter().enumerate() {
            let at = self.window.len();
            if at >= self.magic.len() || byte == self.magic[at] {
                self.window.push(byte);
            } else {
                self.window.clear();
                if byte == self.magic[0] {
                    self.window.push(byte);
                }
            }
            if self.window.len() == PREAMBLE_LEN {
                let mut nonce = [0u8; NONCE_LEN];
                nonce.copy_from_slice(&self.window[self.magic.len()..]);
                self.window.clear();
                return Some((nonce, index + 1));
            }
        }
        None
    }
}

/// Drops repeated copies of one preamble at the start of a stream fed in pieces, and passes
/// everything from the first byte that is not part of a copy on.
#[derive(Debug, Clone)]
pub struct RepeatSkipper {
    preamble: [u8; PREAMBLE_LEN],
    matched: usize,
    done: bool,
}

impl RepeatSkipper {
    /// Skips copies of `preamble`.
    pub fn new(preamble: [u8; PREAMBLE_LEN]) -> RepeatSkipper {
        RepeatSkipper {
            preamble,
            matched: 0,
            done: false,
        }
    }

    /// The bytes of `bytes` to pass on: a partial copy held back from earlier pieces that
    /// turned out not to be one, then the rest.
    pub fn feed(&mut self, bytes: &[u8]) -> Vec<u8> {
        if self.done {
            return bytes.to_vec();
        }
        for (index, &byte) in bytes.iter().enumerate() {
            if byte == self.preamble[self.matched] {
                self.matched += 1;
                if self.matched == PREAMBLE_LEN {
                    self.matched = 0;
                }
                continue;
            }
            self.done = true;
            let mut out = self.preamble[..self.matched].to_vec();
            out.extend_from_slice(&bytes[index..]);
            return out;
        }
        Vec::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NONCE: [u8; NONCE_LEN] = *b"0123456789abcdef";

    /// Feeds `stream` split at every position into pieces of `piece` bytes.
    fn scan(stream: &[u8], piece: usize) -> Option<([u8; NONCE_LEN], usize)> {
        let mut scanner = Scanner::new(SYNC_MAGIC);
        let mut offset = 0;
        for chunk in stream.chunks(piece) {
            if let Some((nonce, used)) = scanner.feed(chunk) {
                return Some((nonce, offset + used));
            }
            offset += chunk.len();
        }
        None
    }

    #[test]
    fn finds_the_preamble_after_any_garbage_in_any_pieces() {
        let mut stream = b"\xff\xffHPC\xffHPCCs stale bytes of another host \xff".to_vec();
        let garbage = stream.len();
        stream.extend_from_slice(&preamble(&SYNC_MAGIC, &NONCE));
        stream.extend_from_slice(b"frames");
        for piece in 1..stream.len() {
            assert_eq!(
                scan(&stream, piece),
                Some((NONCE, garbage + PREAMBLE_LEN)),
                "{piece}"
            );
        }
        assert_eq!(scan(b"\xffHPCCsyn0123", 3), None);
        assert_eq!(scan(&preamble(&ACK_MAGIC, &NONCE), 5), None);
    }

    #[test]
    fn a_preamble_is_never_a_frame_length() {
        for magic in [SYNC_MAGIC, ACK_MAGIC] {
            let len = u32::from_le_bytes([magic[0], magic[1], magic[2], magic[3]]);
            assert!(len > crate::MAX_AGENT_FRAME_LEN);
            assert!(!magic[1..].contains(&magic[0]));
        }
    }

    #[test]
    fn repeats_are_skipped_and_the_rest_passes_whole() {
        let copy = preamble(&SYNC_MAGIC, &NONCE);
        let mut stream = copy.repeat(2);
        stream.extend_from_slice(&copy[..5]);
        stream.extend_from_slice(b"\x05\0\0\0frame");
        for piece in 1..stream.len() {
            let mut skipper = RepeatSkipper::new(copy);
            let out: Vec<u8> = stream
                .chunks(piece)
                .flat_map(|chunk| skipper.feed(chunk))
                .collect();
            let mut expected = copy[..5].to_vec();
            expected.extend_from_slice(b"\x05\0\0\0frame");
            assert_eq!(out, expected, "{piece}");
        }
        let mut skipper = RepeatSkipper::new(copy);
        assert_eq!(skipper.feed(b"\x05\0\0\0"), b"\x05\0\0\0");
        assert_eq!(skipper.feed(&copy), copy);
    }
}
