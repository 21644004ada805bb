//! Record framing: encoding into a write buffer, header parsing, header decoding and CRC checks.
//!
//! On-disk layout of one record (all integers big-endian):
//!
//! ```text
//! [len u32][crc32c u32][seq u64][timestamp_ms u64][count u16][stamp?][headers][payload]
//! count:   bit 15 set when a producer stamp follows; bits 0-14 the number of headers
//! stamp:   [producer id u128][producer seq u64]   (24 bytes, only when bit 15 is set)
//! headers: count × [name_len u16][name: UTF-8][value_len u32][value: UTF-8]
//! ```
//!
//! `len` counts every byte after the crc field, and the crc covers exactly those bytes (message
//! headers and stamp included). Records written before headers were stored have `count` 0 and
//! read the same way; records written before producer stamps never have bit 15 set (no
//! message ever had 32 768 headers: the wire allows at most 1 024), so they read the same way
//! too. A broker older than the stamp would refuse a stamped record as malformed: downgrading
//! past this format is not supported.

use weir_protocol::{Headers, ProducerStamp};

use super::Message;

/// Bytes before the CRC-covered part: the `len` and `crc` fields.
pub(crate) const PREFIX_LEN: usize = 8;

/// Fixed header size: `len` + `crc` + `seq` + `timestamp_ms` + `count`.
pub(crate) const HEADER_LEN: usize = 26;

/// Smallest valid `len` value: `seq` + `timestamp_ms` + `count`, no headers, empty payload.
const MIN_LEN: u32 = (HEADER_LEN - PREFIX_LEN) as u32;

/// Bytes of the length fields of one message header: `name_len` (u16) and `value_len` (u32).
const FIELD_LENS: usize = 6;

/// Most message headers one record holds (`count`'s low 15 bits).
const MAX_HEADERS: usize = 0x7fff;

/// The bit of `count` that says a producer stamp follows it.
const STAMPED: u16 = 0x8000;

/// Bytes of a producer stamp: the producer's id (u128) and its sequence (u64).
const STAMP_LEN: usize = 24;

/// Longest header name a record holds, in bytes (`name_len` is a `u16`).
const MAX_HEADER_NAME_BYTES: usize = u16::MAX as usize;

/// Longest header value a record holds, in bytes (`value_len` is a `u32`).
const MAX_HEADER_VALUE_BYTES: usize = u32::MAX as usize;

/// The record-format bound `headers` break, as `(name, value)` of the bound —
/// `("max_headers", 32767)`, `("max_header_name_bytes", 65535)` or
/// `("max_header_value_bytes", 4294967295)` — or `None` when they fit. A message that breaks
/// one is refused by [`super::SegmentLog::append_batch`], so callers that must not fail a whole
/// batch check each message first.
pub fn exceeded_header_bound(headers: &[(String, String)]) -> Option<(&'static str, u64)> {
    let bound = |name, value: usize| Some((name, value as u64));
    if headers.len() > MAX_HEADERS {
        return bound("max_headers", MAX_HEADERS);
    }
    if headers.iter().any(|(n, _)| n.len() > MAX_HEADER_NAME_BYTES) {
        return bound("max_header_name_bytes", MAX_HEADER_NAME_BYTES);
    }
    if headers
        .iter()
        .any(|(_, v)| v.len() > MAX_HEADER_VALUE_BYTES)
    {
        return bound("max_header_value_bytes", MAX_HEADER_VALUE_BYTES);
    }
    None
}

/// Total on-disk size of the record of `message` (prefix included), whether or not it
/// [`fits`].
pub(crate) fn encoded_len(message: &Message) -> u64 {
    let headers: u64 = message
        .headers
        .iter()
        .map(|(n, v)| (FIELD_LENS + n.len() + v.len()) as u64)
        .sum();
    let stamp = if message.producer.is_some() {
        STAMP_LEN as u64
    } else {
        0
    };
    HEADER_LEN as u64 + stamp + headers + message.payload.len() as u64
}

/// Whether `message` can be encoded as one record: its headers within the bounds of
/// [`exceeded_header_bound`] and the whole within the `u32` of the `len` field (about 4 GiB).
pub(crate) fn fits(message: &Message) -> bool {
    exceeded_header_bound(&message.headers).is_none()
        && encoded_len(message) - PREFIX_LEN as u64 <= u64::from(u32::MAX)
}

/// Appends one encoded record to `buf`.
///
/// The caller must have checked [`fits`]; a message that does not would have length fields
/// truncated, so this is guarded by a debug assertion only.
#[cfg(test)]
pub(crate) fn encode(buf: &mut Vec<u8>, seq: u64, timestamp_ms: u64, message: &Message) {
    encode_head(buf, seq, timestamp_ms, message);
    buf.extend_from_slice(&message.payload);
}

/// Appends one record to `buf` without its payload, which follows it on disk: the record's
/// fields, headers and crc (computed over the payload too). Written with the payload as two
/// buffers of one vectored write, the payload is never copied. The caller must have checked
/// [`fits`], as for [`encode`].
pub(crate) fn encode_head(buf: &mut Vec<u8>, seq: u64, timestamp_ms: u64, message: &Message) {
    debug_assert!(fits(message));
    let start = buf.len();
    let total = encoded_len(message);
    let len = u32::try_from(total - PREFIX_LEN as u64).unwrap_or(u32::MAX);
    let mut count = u16::try_from(message.headers.len()).unwrap_or(u16::MAX) & !STAMPED;
    if message.producer.is_some() {
        count |= STAMPED;
    }
    buf.reserve(usize::try_from(total).unwrap_or(0) - message.payload.len());
    buf.extend_from_slice(&len.to_be_bytes());
    buf.extend_from_slice(&[0u8; 4]); // crc placeholder
    buf.extend_from_slice(&seq.to_be_bytes());
    buf.extend_from_slice(&timestamp_ms.to_be_bytes());
    buf.extend_from_slice(&count.to_be_bytes());
    if let Some(stamp) = message.producer {
        buf.extend_from_slice(&stamp.id.to_be_bytes());
        buf.extend_from_slice(&stamp.seq.to_be_bytes());
    }
    for (name, value) in &message.headers {
        let name_len = u16::try_from(name.len()).unwrap_or(u16::MAX);
        let value_len = u32::try_from(value.len()).unwrap_or(u32::MAX);
        buf.extend_from_slice(&name_len.to_be_bytes());
        buf.extend_from_slice(name.as_bytes());
        buf.extend_from_slice(&value_len.to_be_bytes());
        buf.extend_from_slice(value.as_bytes());
    }
    let crc = crc32c::crc32c(&buf[start + PREFIX_LEN..]);
    let crc = crc32c::crc32c_append(crc, &message.payload);
    buf[start + 4..start + 8].copy_from_slice(&crc.to_be_bytes());
}

/// The fixed-size header of one record, as read from disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RecordHeader {
    /// Bytes after the crc field (message headers, payload and the fixed fields they follow).
    pub len: u32,
    /// Stored CRC32C of the `len` bytes after the crc field.
    pub crc: u32,
    /// Sequence number.
    pub seq: u64,
    /// Append timestamp in milliseconds since the Unix epoch.
    pub timestamp_ms: u64,
    /// Number of message headers after the fixed header (and the stamp).
    pub header_count: u16,
    /// Whether a producer stamp follows the fixed header.
    pub stamped: bool,
}

impl RecordHeader {
    /// Parses the fixed header; `Err` names what is malformed (a length too small to hold the
    /// fixed fields, or more message headers than the record has room for). Never panics on any
    /// input.
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
            header_count: u16::from_be_bytes([bytes[24], bytes[25]]) & !STAMPED,
            stamped: bytes[24] & 0x80 != 0,
        };
        if h.len < MIN_LEN {
            return Err(format!("record length {} below minimum {MIN_LEN}", h.len));
        }
        let stamp = if h.stamped { STAMP_LEN as u64 } else { 0 };
        let least = stamp + u64::from(h.header_count) * FIELD_LENS as u64;
        if least > u64::from(h.len - MIN_LEN) {
            return Err(format!(
                "{} headers do not fit record length {}",
                h.header_count, h.len
            ));
        }
        Ok(h)
    }

    /// Total on-disk size of the record, prefix included.
    pub(crate) fn total_len(&self) -> u64 {
        PREFIX_LEN as u64 + u64::from(self.len)
    }
}

/// The message headers of one record as stored, already checked by [`split_body`] (every length
/// within the record, every name and value UTF-8), so turning them into [`Headers`] cannot fail.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RawHeaders<'a> {
    count: u16,
    bytes: &'a [u8],
}

impl<'a> RawHeaders<'a> {
    /// Bytes of the header names and values (their framing not counted).
    pub(crate) fn content_bytes(&self) -> u64 {
        (self.bytes.len() - FIELD_LENS * usize::from(self.count)) as u64
    }

    /// The value of the first header named `name`, if any (allocates nothing).
    pub(crate) fn find(&self, name: &str) -> Option<&'a str> {
        let mut rest = self.bytes;
        (0..self.count).find_map(|_| {
            let (n, value, after) = next_header(rest).ok()?;
            rest = after;
            (n == name).then_some(value)
        })
    }

    /// Owned copies of the headers, in stored order (allocates only when there are some).
    pub(crate) fn to_headers(self) -> Headers {
        let mut rest = self.bytes;
        (0..self.count)
            .map_while(|_| {
                let (name, value, after) = next_header(rest).ok()?;
                rest = after;
                Some((name.to_owned(), value.to_owned()))
            })
            .collect()
    }
}

/// The parts of a record after its fixed header: its producer stamp, its message headers and
/// its payload.
pub(crate) type Split<'a> = (Option<ProducerStamp>, RawHeaders<'a>, &'a [u8]);

/// Splits the bytes of a record after its fixed header `h` into its producer stamp (when `h`
/// says it has one), its message headers and its payload. `Err` names the first header whose
/// name or value length runs past the end of the record, or whose name or value is not UTF-8,
/// or a stamp cut short. Never panics on any input.
pub(crate) fn split_body<'a>(h: &RecordHeader, body: &'a [u8]) -> Result<Split<'a>, String> {
    let (producer, body) = if h.stamped {
        let (stamp, rest) = body
            .split_first_chunk::<STAMP_LEN>()
            .ok_or("producer stamp runs past the record")?;
        let (id, seq) = stamp.split_at(16);
        let stamp = ProducerStamp {
            id: u128::from_be_bytes(id.try_into().expect("16 bytes")),
            seq: u64::from_be_bytes(seq.try_into().expect("8 bytes")),
        };
        (Some(stamp), rest)
    } else {
        (None, body)
    };
    let (headers, payload) = split_headers(h.header_count, body)?;
    Ok((producer, headers, payload))
}

/// Splits `body` into its `count` message headers and its payload (see [`split_body`]).
fn split_headers(count: u16, body: &[u8]) -> Result<(RawHeaders<'_>, &[u8]), String> {
    let mut rest = body;
    for i in 0..count {
        rest = next_header(rest)
            .map_err(|e| format!("header {} of {count}: {e}", u32::from(i) + 1))?
            .2;
    }
    let (bytes, payload) = body.split_at(body.len() - rest.len());
    Ok((RawHeaders { count, bytes }, payload))
}

/// The header at the start of `bytes`: its name, its value, and the bytes after it.
fn next_header(bytes: &[u8]) -> Result<(&str, &str, &[u8]), String> {
    let (name, rest) = field(bytes, 2, "name")?;
    let (value, rest) = field(rest, 4, "value")?;
    Ok((name, value, rest))
}

/// The UTF-8 field at the start of `bytes`, preceded by its big-endian length of `width` bytes,
/// and the bytes after it; `what` names the field in errors.
fn field<'a>(bytes: &'a [u8], width: usize, what: &str) -> Result<(&'a str, &'a [u8]), String> {
    let (len, rest) = bytes
        .split_at_checked(width)
        .ok_or_else(|| format!("{what} length runs past the record"))?;
    let len = len.iter().fold(0usize, |n, &b| n << 8 | usize::from(b));
    let (text, rest) = rest
        .split_at_checked(len)
        .ok_or_else(|| format!("{what} of {len} bytes runs past the record"))?;
    let text = std::str::from_utf8(text).map_err(|_| format!("{what} is not UTF-8"))?;
    Ok((text, rest))
}

/// True when the CRC stored in `record` (a whole encoded record, prefix included) matches its
/// contents. A slice shorter than the prefix is never valid.
pub(crate) fn crc_matches(crc: u32, record: &[u8]) -> bool {
    record.len() >= PREFIX_LEN && crc32c::crc32c(&record[PREFIX_LEN..]) == crc
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;

    fn message(headers: &[(&str, &str)], payload: &'static [u8]) -> Message {
        Message {
            producer: None,
            headers: headers
                .iter()
                .map(|&(n, v)| (n.to_owned(), v.to_owned()))
                .collect(),
            payload: Bytes::from_static(payload),
        }
    }

    /// Encodes `m` and decodes it again: (header, headers, payload, the encoded bytes).
    fn round_trip(m: &Message) -> (RecordHeader, Headers, Vec<u8>, Vec<u8>) {
        let mut buf = Vec::new();
        encode(&mut buf, 42, 7, m);
        assert_eq!(buf.len() as u64, encoded_len(m));
        let mut hdr = [0u8; HEADER_LEN];
        hdr.copy_from_slice(&buf[..HEADER_LEN]);
        let h = RecordHeader::parse(&hdr).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(h.total_len(), buf.len() as u64);
        assert!(crc_matches(h.crc, &buf));
        let (producer, headers, payload) =
            split_body(&h, &buf[HEADER_LEN..]).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(producer, m.producer);
        (h, headers.to_headers(), payload.to_vec(), buf)
    }

    #[test]
    fn encode_parse_round_trip() {
        let m = message(&[], b"hello");
        let (h, headers, payload, mut buf) = round_trip(&m);
        assert_eq!((h.seq, h.timestamp_ms, h.header_count), (42, 7, 0));
        assert_eq!((headers, payload), (m.headers, b"hello".to_vec()));
        buf[HEADER_LEN] ^= 1;
        assert!(!crc_matches(h.crc, &buf));
    }

    #[test]
    fn headers_round_trip_in_order_with_unicode_empty_and_repeated_names() {
        let m = message(
            &[
                ("trace", "abc"),
                ("", ""),
                ("ключ", "значение ✓ 🦀"),
                ("trace", "def"),
                ("empty-value", ""),
            ],
            b"body",
        );
        let (h, headers, payload, _) = round_trip(&m);
        assert_eq!(h.header_count, 5);
        assert_eq!((headers, payload), (m.headers, b"body".to_vec()));
        let (_, headers, payload, _) = round_trip(&message(&[("only", "headers")], b""));
        assert_eq!(headers, vec![("only".to_owned(), "headers".to_owned())]);
        assert!(payload.is_empty());
    }

    #[test]
    fn a_record_without_headers_is_laid_out_as_before_headers_existed() {
        let (_, _, _, buf) = round_trip(&message(&[], b"old"));
        let mut old = Vec::new();
        old.extend_from_slice(&21u32.to_be_bytes());
        old.extend_from_slice(&buf[4..8]);
        old.extend_from_slice(&42u64.to_be_bytes());
        old.extend_from_slice(&7u64.to_be_bytes());
        old.extend_from_slice(&0u16.to_be_bytes());
        old.extend_from_slice(b"old");
        assert_eq!(buf, old);
    }

    #[test]
    fn a_stamp_round_trips_and_an_unstamped_record_keeps_its_old_layout() {
        let mut m = message(&[("k", "v")], b"body");
        m.producer = Some(ProducerStamp {
            id: u128::MAX - 7,
            seq: 42,
        });
        let (h, headers, payload, buf) = round_trip(&m);
        assert!(h.stamped);
        assert_eq!(h.header_count, 1);
        assert_eq!((headers, payload), (m.headers.clone(), b"body".to_vec()));
        assert_eq!(buf[24], 0x80, "bit 15 of count marks the stamp");
        m.producer = None;
        let (h, _, _, plain) = round_trip(&m);
        assert!(!h.stamped);
        assert_eq!(plain.len() + STAMP_LEN, buf.len());
        // A stamped record cut inside its stamp is refused, not misread.
        let mut hdr = [0u8; HEADER_LEN];
        hdr.copy_from_slice(&buf[..HEADER_LEN]);
        let h = RecordHeader::parse(&hdr).unwrap();
        assert!(split_body(&h, &buf[HEADER_LEN..HEADER_LEN + 10]).is_err());
    }

    #[test]
    fn parse_rejects_bad_lengths() {
        let mut hdr = [0u8; HEADER_LEN];
        assert!(RecordHeader::parse(&hdr).is_err());
        hdr[3] = 18;
        hdr[25] = 1; // one header in a record with no room for it
        assert!(RecordHeader::parse(&hdr).is_err());
        hdr[3] = 24;
        assert!(RecordHeader::parse(&hdr).is_ok());
        hdr[25] = 0;
        assert!(RecordHeader::parse(&hdr).is_ok());
    }

    #[test]
    fn bad_header_lengths_and_bytes_are_errors_not_panics() {
        let (_, _, _, buf) = round_trip(&message(&[("name", "value")], b"payload"));
        let body = &buf[HEADER_LEN..];
        // name_len is body[0..2], value_len body[6..10].
        for (at, byte) in [(0, 0xff), (1, 0xff), (6, 0x01), (9, 0xff)] {
            let mut bad = body.to_vec();
            bad[at] = byte;
            let e = split_headers(1, &bad).map(|_| ()).unwrap_err();
            assert!(e.contains("runs past the record"), "{e}");
        }
        let mut bad = body.to_vec();
        bad[2] = 0xff; // first byte of the name
        assert!(split_headers(1, &bad).unwrap_err().contains("not UTF-8"));
        assert!(
            split_headers(2, body).is_err(),
            "a second header that is not there"
        );
        for cut in 0..11 {
            assert!(split_headers(1, &body[..cut]).is_err(), "cut at {cut}");
        }
    }

    #[test]
    fn header_bounds_are_those_of_the_length_fields() {
        let long = |n: usize| "x".repeat(n);
        assert_eq!(exceeded_header_bound(&[]), None);
        let at_bound = vec![(long(MAX_HEADER_NAME_BYTES), long(70_000))];
        assert_eq!(exceeded_header_bound(&at_bound), None);
        assert!(fits(&Message {
            producer: None,
            headers: at_bound,
            payload: Bytes::new()
        }));
        let name = vec![(long(MAX_HEADER_NAME_BYTES + 1), String::new())];
        assert_eq!(
            exceeded_header_bound(&name),
            Some(("max_header_name_bytes", 65_535))
        );
        let many = vec![(String::new(), String::new()); MAX_HEADERS + 1];
        assert_eq!(exceeded_header_bound(&many), Some(("max_headers", 32_767)));
        assert!(!fits(&Message {
            producer: None,
            headers: many,
            payload: Bytes::new()
        }));
    }
}
