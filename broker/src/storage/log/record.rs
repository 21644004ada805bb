//! Record framing: encoding into a write buffer, header parsing and CRC checks.
//!
//! On-disk layout of one record (all integers big-endian):
//!
//! ```text
//! [len u32][crc32c u32][seq u64][timestamp_ms u64][hdr_len u16][headers: hdr_len bytes][payload]
//! ```
//!
//! `len` counts every byte after the crc field, and the crc covers exactly those bytes.

/// Bytes before the CRC-covered part: the `len` and `crc` fields.
pub(crate) const PREFIX_LEN: usize = 8;

/// Fixed header size: `len` + `crc` + `seq` + `timestamp_ms` + `hdr_len`.
pub(crate) const HEADER_LEN: usize = 26;

/// Smallest valid `len` value: `seq` + `timestamp_ms` + `hdr_len`, no headers, empty payload.
const MIN_LEN: u32 = (HEADER_LEN - PREFIX_LEN) as u32;

/// Largest payload a record can carry: `len` must still fit in a `u32`.
pub(crate) const MAX_PAYLOAD: usize = (u32::MAX - MIN_LEN) as usize;

/// Total on-disk size of a record with `payload_len` payload bytes and no headers,
/// or `None` when the payload is larger than [`MAX_PAYLOAD`].
pub(crate) fn encoded_len(payload_len: usize) -> Option<u64> {
    if payload_len > MAX_PAYLOAD {
        return None;
    }
    Some((HEADER_LEN + payload_len) as u64)
}

/// Appends one encoded record to `buf`.
///
/// The caller must have checked `payload.len() <= MAX_PAYLOAD` (via [`encoded_len`]); a larger
/// payload would have its length field truncated, so this is guarded by a debug assertion only.
pub(crate) fn encode(buf: &mut Vec<u8>, seq: u64, timestamp_ms: u64, payload: &[u8]) {
    debug_assert!(payload.len() <= MAX_PAYLOAD);
    let start = buf.len();
    let len = MIN_LEN.saturating_add(u32::try_from(payload.len()).unwrap_or(u32::MAX));
    buf.reserve(HEADER_LEN + payload.len());
    buf.extend_from_slice(&len.to_be_bytes());
    buf.extend_from_slice(&[0u8; 4]); // crc placeholder
    buf.extend_from_slice(&seq.to_be_bytes());
    buf.extend_from_slice(&timestamp_ms.to_be_bytes());
    buf.extend_from_slice(&0u16.to_be_bytes()); // no headers yet
    buf.extend_from_slice(payload);
    let crc = crc32c::crc32c(&buf[start + PREFIX_LEN..]);
    buf[start + 4..start + 8].copy_from_slice(&crc.to_be_bytes());
}

/// The fixed-size header of one record, as read from disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RecordHeader {
    /// Bytes after the crc field (headers, payload and the fixed fields they follow).
    pub len: u32,
    /// Stored CRC32C of the `len` bytes after the crc field.
    pub crc: u32,
    /// Sequence number.
    pub seq: u64,
    /// Append timestamp in milliseconds since the Unix epoch.
    pub timestamp_ms: u64,
    /// Length of the (currently always empty) header block.
    pub hdr_len: u16,
}

impl RecordHeader {
    /// Parses the fixed header; `Err` names what is malformed (a length too small to hold the
    /// fixed fields, or a header block longer than the record). Never panics on any input.
    pub(crate) fn parse(bytes: &[u8; HEADER_LEN]) -> Result<RecordHeader, String> {
        let h = RecordHeader {
            len: u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]),
            crc: u32::from_be_bytes([bytes[4], bytes[5], bytes[6], bytes[7]]),
            seq: u64::from_be_bytes([
                bytes[8], bytes[9], bytes[10], bytes[11], bytes[12], bytes[13], bytes[14],
                bytes[15],
            ]),
            timestamp_ms: u64::from_be_bytes([
                bytes[16], bytes[17], bytes[18], bytes[19], bytes[20], bytes[21], bytes[22],
                bytes[23],
            ]),
            hdr_len: u16::from_be_bytes([bytes[24], bytes[25]]),
        };
        if h.len < MIN_LEN {
            return Err(format!("record length {} below minimum {MIN_LEN}", h.len));
        }
        if u32::from(h.hdr_len) > h.len - MIN_LEN {
            return Err(format!(
                "header block of {} bytes does not fit record length {}",
                h.hdr_len, h.len
            ));
        }
        Ok(h)
    }

    /// Total on-disk size of the record, prefix included.
    pub(crate) fn total_len(&self) -> u64 {
        PREFIX_LEN as u64 + u64::from(self.len)
    }

    /// Payload length in bytes (always fits: `parse` checked the header block fits in `len`).
    #[cfg(test)]
    pub(crate) fn payload_len(&self) -> u32 {
        self.len - MIN_LEN - u32::from(self.hdr_len)
    }

    /// Offset of the payload from the start of the record.
    pub(crate) fn payload_offset(&self) -> usize {
        HEADER_LEN + usize::from(self.hdr_len)
    }
}

/// True when the CRC stored in `record` (a whole encoded record, prefix included) matches its
/// contents. A slice shorter than the prefix is never valid.
pub(crate) fn crc_matches(crc: u32, record: &[u8]) -> bool {
    record.len() >= PREFIX_LEN && crc32c::crc32c(&record[PREFIX_LEN..]) == crc
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encode_parse_round_trip() {
        let mut buf = Vec::new();
        encode(&mut buf, 42, 7, b"hello");
        assert_eq!(buf.len() as u64, encoded_len(5).unwrap_or(0));
        let mut hdr = [0u8; HEADER_LEN];
        hdr.copy_from_slice(&buf[..HEADER_LEN]);
        let h = RecordHeader::parse(&hdr).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!((h.seq, h.timestamp_ms, h.hdr_len), (42, 7, 0));
        assert_eq!(h.payload_len(), 5);
        assert_eq!(h.total_len(), buf.len() as u64);
        assert!(crc_matches(h.crc, &buf));
        assert_eq!(&buf[h.payload_offset()..], b"hello");
        buf[HEADER_LEN] ^= 1;
        assert!(!crc_matches(h.crc, &buf));
    }

    #[test]
    fn parse_rejects_bad_lengths() {
        let mut hdr = [0u8; HEADER_LEN];
        assert!(RecordHeader::parse(&hdr).is_err());
        hdr[3] = 18;
        hdr[25] = 1; // header block of 1 byte in a record with no room for it
        assert!(RecordHeader::parse(&hdr).is_err());
        hdr[25] = 0;
        assert!(RecordHeader::parse(&hdr).is_ok());
    }
}
