//! A minimal length-prefixed binary codec for hpcc's own on-disk formats.
//!
//! Every read is bounds-checked against the remaining input, so a truncated or hostile file
//! yields [`WireError`] rather than a panic or a huge allocation.

/// Why a byte string could not be decoded.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum WireError {
    /// The input ended inside a field.
    #[error("truncated at byte {0}")]
    Truncated(usize),
    /// The magic bytes at the start are wrong (another format or another version).
    #[error("wrong magic or version")]
    BadMagic,
    /// A field holds a value the format does not allow.
    #[error("invalid field at byte {0}")]
    Invalid(usize),
    /// Bytes are left over after the last field.
    #[error("{0} trailing bytes")]
    Trailing(usize),
}

/// Appends fields to a buffer.
#[derive(Default)]
pub(crate) struct Writer {
    pub(crate) bytes: Vec<u8>,
}

impl Writer {
    pub(crate) fn new(magic: &[u8]) -> Writer {
        Writer {
            bytes: magic.to_vec(),
        }
    }

    pub(crate) fn u8(&mut self, value: u8) {
        self.bytes.push(value);
    }

    pub(crate) fn u32(&mut self, value: u32) {
        self.bytes.extend_from_slice(&value.to_le_bytes());
    }

    pub(crate) fn u64(&mut self, value: u64) {
        self.bytes.extend_from_slice(&value.to_le_bytes());
    }

    pub(crate) fn i64(&mut self, value: i64) {
        self.bytes.extend_from_slice(&value.to_le_bytes());
    }

    pub(crate) fn bytes(&mut self, value: &[u8]) {
        self.u64(value.len() as u64);
        self.bytes.extend_from_slice(value);
    }

    pub(crate) fn raw(&mut self, value: &[u8]) {
        self.bytes.extend_from_slice(value);
    }
}

/// Reads fields back, never past the end.
pub(crate) struct Reader<'a> {
    input: &'a [u8],
    position: usize,
}

impl<'a> Reader<'a> {
    pub(crate) fn new(input: &'a [u8], magic: &[u8]) -> Result<Reader<'a>, WireError> {
        if !input.starts_with(magic) {
            return Err(WireError::BadMagic);
        }
        Ok(Reader {
            input,
            position: magic.len(),
        })
    }

    pub(crate) fn take(&mut self, count: usize) -> Result<&'a [u8], WireError> {
        let end = self
            .position
            .checked_add(count)
            .filter(|&end| end <= self.input.len())
            .ok_or(WireError::Truncated(self.position))?;
        let slice = &self.input[self.position..end];
        self.position = end;
        Ok(slice)
    }

    pub(crate) fn u8(&mut self) -> Result<u8, WireError> {
        Ok(self.take(1)?[0])
    }

    pub(crate) fn u32(&mut self) -> Result<u32, WireError> {
        let mut buffer = [0u8; 4];
        buffer.copy_from_slice(self.take(4)?);
        Ok(u32::from_le_bytes(buffer))
    }

    pub(crate) fn u64(&mut self) -> Result<u64, WireError> {
        let mut buffer = [0u8; 8];
        buffer.copy_from_slice(self.take(8)?);
        Ok(u64::from_le_bytes(buffer))
    }

    pub(crate) fn i64(&mut self) -> Result<i64, WireError> {
        let mut buffer = [0u8; 8];
        buffer.copy_from_slice(self.take(8)?);
        Ok(i64::from_le_bytes(buffer))
    }

    pub(crate) fn bytes(&mut self) -> Result<&'a [u8], WireError> {
        let at = self.position;
        let length = usize::try_from(self.u64()?).map_err(|_| WireError::Invalid(at))?;
        self.take(length)
    }

    pub(crate) fn digest(&mut self) -> Result<crate::digest::Digest, WireError> {
        let mut buffer = [0u8; 32];
        buffer.copy_from_slice(self.take(32)?);
        Ok(crate::digest::Digest(buffer))
    }

    /// A count of items that each take at least `min_item_size` bytes: bounded by what is left,
    /// so a corrupt count cannot make the caller reserve gigabytes.
    pub(crate) fn count(&mut self, min_item_size: usize) -> Result<usize, WireError> {
        let at = self.position;
        let count = usize::try_from(self.u32()?).map_err(|_| WireError::Invalid(at))?;
        let remaining = self.input.len() - self.position;
        if count.saturating_mul(min_item_size.max(1)) > remaining {
            return Err(WireError::Invalid(at));
        }
        Ok(count)
    }

    pub(crate) fn position(&self) -> usize {
        self.position
    }

    pub(crate) fn finish(self) -> Result<(), WireError> {
        match self.input.len() - self.position {
            0 => Ok(()),
            left => Err(WireError::Trailing(left)),
        }
    }
}
