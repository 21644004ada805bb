//! [`WeirCodec`]: turns a byte stream into [`Frame`]s and back, with a hard maximum frame size.
//!
//! ```text
//! INPUT (one Publish of the 3-byte payload "abc", no headers):
//! +---- len ----+-- hdr_len --+---------- header ----------+-- payload --+
//! | 00 00 00 11 | 00 00 00 0a | 06 01 06 "orders" 00        |    "abc"    |  ...
//! +-------------+-------------+----------------------------+-------------+
//!   len: bytes after it (17)   header (bincode, varints): variant 6 = Publish, id 1,
//!   hdr_len: header bytes (10) topic (length 6, bytes), headers (count 0)
//! DECODED: Frame::Publish(Publish { id: 1, topic: "orders", headers: [], payload: "abc" })
//! ```
//!
//! Decoding follows tokio-util's contract: `Ok(Some(frame))` consumes one frame, `Ok(None)`
//! means more bytes are needed, and `Err` means the stream is corrupt and must be closed.

use bytes::{Buf, BufMut, BytesMut};
use tokio_util::codec::{Decoder, Encoder};

use crate::error::CodecError;
use crate::frame::Frame;

/// Bytes of the outer length prefix.
const LEN_BYTES: usize = 4;
/// Bytes of the header-length field that opens every body.
const HDR_LEN_BYTES: usize = 4;

/// The default maximum frame size: 4 MiB, room for the default 1 MiB message bound with margin.
pub const DEFAULT_MAX_FRAME_BYTES: usize = 4 * 1024 * 1024;

/// The largest maximum frame size any codec may be configured with (64 MiB). Also the bincode
/// decode limit, so a header can never make the decoder allocate more than this.
pub const MAX_FRAME_BYTES_CEILING: usize = 64 * 1024 * 1024;

/// The bincode configuration of every frame header: standard varint encoding, with a decode
/// limit of [`MAX_FRAME_BYTES_CEILING`]. The one place encoder and decoder agree on it.
pub fn wire_options() -> impl bincode::config::Config {
    bincode::config::standard().with_limit::<MAX_FRAME_BYTES_CEILING>()
}

/// Bytes `value` takes in a frame header ([`wire_options`]), without encoding it anywhere: for
/// a sender that must keep an answer within the frame limit (pages of a listing).
pub fn encoded_len<T: serde::Serialize>(value: &T) -> usize {
    let mut size = bincode::enc::write::SizeWriter::default();
    match bincode::serde::encode_into_writer(value, &mut size, wire_options()) {
        Ok(()) => size.bytes_written,
        Err(_) => usize::MAX,
    }
}

/// The Weir frame codec. Applies its maximum frame size to both directions: an announced length
/// over it fails decoding before the body is buffered; a frame that would encode larger fails
/// encoding and leaves the output buffer as it was.
#[derive(Debug, Clone, Copy)]
pub struct WeirCodec {
    max_frame_bytes: usize,
    /// The protocol version frames are laid out in (see [`crate::since`]).
    version: u16,
}

impl Default for WeirCodec {
    fn default() -> Self {
        WeirCodec::new(DEFAULT_MAX_FRAME_BYTES)
    }
}

impl WeirCodec {
    /// A codec refusing frames larger than `max_frame_bytes` (clamped to
    /// [`MAX_FRAME_BYTES_CEILING`] and to at least 64 bytes).
    pub fn new(max_frame_bytes: usize) -> Self {
        WeirCodec {
            max_frame_bytes: max_frame_bytes.clamp(64, MAX_FRAME_BYTES_CEILING),
            version: crate::PROTOCOL_VERSION,
        }
    }

    /// Lays frames out as protocol `version` from now on, both ways: the version a connection
    /// negotiated in `Hello`. Fields a later version appended are neither sent nor read (they
    /// decode as their defaults). A new codec speaks [`crate::PROTOCOL_VERSION`]; `Hello` and
    /// `HelloOk` read the same in every version.
    pub fn set_version(&mut self, version: u16) {
        self.version = version;
    }

    /// The protocol version frames are laid out in.
    pub fn version(&self) -> u16 {
        self.version
    }

    /// The largest frame this codec accepts or produces, in bytes (body, without the prefix).
    pub fn max_frame_bytes(&self) -> usize {
        self.max_frame_bytes
    }

    /// Reads the length prefix, the header length and — for a `Publish` — the publish id at the
    /// front of `src`, or `None` until those bytes are buffered. Lets a reader answer a publish
    /// whose header is larger than it will ever accept without buffering that header. The
    /// announced lengths are not checked here ([`Decoder::decode`] checks them).
    pub fn peek_prefix(&self, src: &[u8]) -> Option<FramePrefix> {
        let len = u32::from_be_bytes(*src.first_chunk::<LEN_BYTES>()?) as usize;
        let rest = &src[LEN_BYTES..];
        let header_len = u32::from_be_bytes(*rest.first_chunk::<HDR_LEN_BYTES>()?) as usize;
        let header = &rest[HDR_LEN_BYTES..];
        let publish_id = match header.first() {
            None => return None,
            Some(&PUBLISH_VARIANT) => {
                let (id, _) =
                    bincode::decode_from_slice::<u64, _>(&header[1..], wire_options()).ok()?;
                Some(id)
            }
            Some(_) => None,
        };
        Some(FramePrefix {
            len,
            header_len,
            publish_id,
        })
    }

    /// Whether `src` holds a whole frame at its front (or a length prefix over the maximum,
    /// which decoding refuses at once): [`Decoder::decode`] then never needs to reserve room.
    pub fn frame_ready(&self, src: &[u8]) -> bool {
        match src.first_chunk::<LEN_BYTES>() {
            Some(prefix) => match u32::from_be_bytes(*prefix) as usize {
                len if len > self.max_frame_bytes => true,
                len => src.len() >= LEN_BYTES + len,
            },
            None => false,
        }
    }

    /// Sets the largest frame this codec accepts or produces (clamped like [`WeirCodec::new`]).
    pub fn set_max_frame_bytes(&mut self, max_frame_bytes: usize) {
        self.max_frame_bytes = WeirCodec::new(max_frame_bytes).max_frame_bytes;
    }

    /// Decodes one frame body (everything after the length prefix).
    fn decode_body(&self, mut body: BytesMut) -> Result<Frame, CodecError> {
        let (mut frame, hdr_len) =
            parse_header(&body, body.len(), self.version)?.expect("a whole body holds its header");
        body.advance(HDR_LEN_BYTES + hdr_len);
        let name = frame.name();
        if !frame.attach_payload(body.freeze()) {
            return Err(CodecError::Malformed(format!(
                "{name} frame's payload bytes do not match what its header announces"
            )));
        }
        Ok(frame)
    }

    /// Decodes the frame at the front of `src` without its payload, once its prefix and
    /// header are buffered (`None` before that). For a reader that must shed a large frame
    /// unread: it answers from the header and discards the payload as it arrives, so the
    /// payload is never held in memory.
    pub fn decode_header(&self, src: &[u8]) -> Option<Result<HeaderOnly, CodecError>> {
        let len = u32::from_be_bytes(*src.first_chunk::<LEN_BYTES>()?) as usize;
        if len > self.max_frame_bytes {
            return Some(Err(CodecError::FrameTooLarge {
                len,
                max: self.max_frame_bytes,
            }));
        }
        let (frame, hdr_len) = match parse_header(&src[LEN_BYTES..], len, self.version) {
            Ok(parsed) => parsed?,
            Err(e) => return Some(Err(e)),
        };
        let payload_bytes = len - HDR_LEN_BYTES - hdr_len;
        if payload_bytes > 0 && !frame.carries_payload() {
            return Some(Err(CodecError::Malformed(format!(
                "{} frame carries unexpected payload bytes",
                frame.name()
            ))));
        }
        Some(Ok(HeaderOnly {
            frame,
            header_bytes: LEN_BYTES + HDR_LEN_BYTES + hdr_len,
            payload_bytes,
        }))
    }
}

/// What the first bytes of a frame say before its header is buffered (see
/// [`WeirCodec::peek_prefix`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FramePrefix {
    /// The frame's length (after the length prefix), as announced.
    pub len: usize,
    /// The length of its header, as announced.
    pub header_len: usize,
    /// For a `Publish`, its id (the first field of its header); `None` for other frames.
    pub publish_id: Option<u64>,
}

/// The variant index bincode gives [`Frame::Publish`] (its position in the enum), the first
/// byte of a publish's header.
const PUBLISH_VARIANT: u8 = 6;

/// A frame decoded from its header alone (see [`WeirCodec::decode_header`]).
#[derive(Debug)]
pub struct HeaderOnly {
    /// The frame, with an empty payload.
    pub frame: Frame,
    /// Bytes of the stream the length prefix, header length and header take.
    pub header_bytes: usize,
    /// Payload bytes that follow the header in the stream.
    pub payload_bytes: usize,
}

/// Parses the header-length field and the header at the front of a frame body of `body_len`
/// bytes, of which `body` holds the first ones: the frame without payload and its header's
/// length, `None` if the header is not all in `body` yet, or why the body is malformed. The
/// header is laid out as protocol `version`.
fn parse_header(
    body: &[u8],
    body_len: usize,
    version: u16,
) -> Result<Option<(Frame, usize)>, CodecError> {
    if body_len < HDR_LEN_BYTES {
        return Err(CodecError::Malformed(format!(
            "body of {body_len} bytes has no header length"
        )));
    }
    let Some(hdr_len) = body.first_chunk::<HDR_LEN_BYTES>() else {
        return Ok(None);
    };
    let hdr_len = u32::from_be_bytes(*hdr_len) as usize;
    let left = body_len - HDR_LEN_BYTES;
    if hdr_len > left {
        return Err(CodecError::Malformed(format!(
            "header length {hdr_len} exceeds the {left} bytes left in the frame"
        )));
    }
    let Some(header) = body.get(HDR_LEN_BYTES..HDR_LEN_BYTES + hdr_len) else {
        return Ok(None);
    };
    let (frame, used): (Frame, usize) = crate::since::with_version(version, || {
        bincode::serde::decode_from_slice(header, wire_options())
    })
    .map_err(|e| CodecError::Malformed(format!("bad header: {e}")))?;
    if used != hdr_len {
        return Err(CodecError::Malformed(format!(
            "header decoded from {used} of its {hdr_len} bytes"
        )));
    }
    Ok(Some((frame, hdr_len)))
}

impl Decoder for WeirCodec {
    type Item = Frame;
    type Error = CodecError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Frame>, CodecError> {
        if src.len() < LEN_BYTES {
            src.reserve(LEN_BYTES);
            return Ok(None);
        }
        let len = u32::from_be_bytes([src[0], src[1], src[2], src[3]]) as usize;
        if len > self.max_frame_bytes {
            return Err(CodecError::FrameTooLarge {
                len,
                max: self.max_frame_bytes,
            });
        }
        let total = LEN_BYTES + len;
        if src.len() < total {
            // Room for the rest of this frame plus the next length prefix.
            src.reserve(total - src.len() + LEN_BYTES);
            return Ok(None);
        }
        src.advance(LEN_BYTES);
        let body = src.split_to(len);
        self.decode_body(body).map(Some)
    }

    fn decode_eof(&mut self, src: &mut BytesMut) -> Result<Option<Frame>, CodecError> {
        match self.decode(src)? {
            Some(frame) => Ok(Some(frame)),
            None if src.is_empty() => Ok(None),
            None => Err(CodecError::Truncated {
                buffered: src.len(),
            }),
        }
    }
}

impl WeirCodec {
    /// Encodes `frame` by reference onto `dst` (what the [`Encoder`] impl does with an owned
    /// frame). On error `dst` is left as it was.
    pub fn encode_frame(&mut self, frame: &Frame, dst: &mut BytesMut) -> Result<(), CodecError> {
        let start = dst.len();
        dst.put_u32(0);
        dst.put_u32(0);
        let header_start = dst.len();
        let encoded = crate::since::with_version(self.version, || {
            bincode::serde::encode_into_std_write(frame, &mut dst.writer(), wire_options())
        });
        if let Err(e) = encoded {
            dst.truncate(start);
            return Err(CodecError::Malformed(format!(
                "cannot encode {}: {e}",
                frame.name()
            )));
        }
        let hdr_len = dst.len() - header_start;
        if !frame.lengths_match() {
            dst.truncate(start);
            return Err(CodecError::Malformed(format!(
                "cannot encode {}: a payload differs from its announced length",
                frame.name()
            )));
        }
        for payload in frame.payloads() {
            dst.extend_from_slice(payload);
        }
        let len = dst.len() - start - LEN_BYTES;
        if len > self.max_frame_bytes {
            dst.truncate(start);
            return Err(CodecError::FrameTooLarge {
                len,
                max: self.max_frame_bytes,
            });
        }
        // Both lengths fit in u32: len <= max_frame_bytes <= MAX_FRAME_BYTES_CEILING.
        dst[start..start + LEN_BYTES].copy_from_slice(&(len as u32).to_be_bytes());
        dst[header_start - HDR_LEN_BYTES..header_start]
            .copy_from_slice(&(hdr_len as u32).to_be_bytes());
        Ok(())
    }
}

impl Encoder<Frame> for WeirCodec {
    type Error = CodecError;

    fn encode(&mut self, frame: Frame, dst: &mut BytesMut) -> Result<(), CodecError> {
        self.encode_frame(&frame, dst)
    }
}
