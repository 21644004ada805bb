//! Fields a protocol version appended to a struct that older versions also send.
//!
//! bincode lays a struct out as its fields in order, so a field appended to, say,
//! [`crate::TopicConfig`] moves everything after it in a [`crate::TopicList`]: a v5 peer would
//! misread the frame. Rather than keep a copy of every changed struct per version, each appended
//! field is marked `#[serde(default, with = "crate::since::v6")]`: encoded and decoded only when
//! the frame is encoded or decoded for a connection that speaks v6 or later, and left at its
//! default (absent from the bytes) for an older one.
//!
//! The version is the codec's ([`crate::WeirCodec::set_version`]); it is set for the duration
//! of one frame's encode or decode ([`with_version`]) on the calling thread, and every other
//! serializer (JSON, the size estimate of [`crate::encoded_len`]) sees the newest layout.

use std::cell::Cell;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

thread_local! {
    /// The protocol version the frame being encoded or decoded on this thread is laid out in.
    static WIRE_VERSION: Cell<u16> = const { Cell::new(crate::PROTOCOL_VERSION) };
}

/// Runs `f` with frames laid out as protocol `version` on this thread, then restores the
/// previous layout (also when `f` panics).
pub(crate) fn with_version<T>(version: u16, f: impl FnOnce() -> T) -> T {
    struct Restore(u16);
    impl Drop for Restore {
        fn drop(&mut self) {
            WIRE_VERSION.with(|v| v.set(self.0));
        }
    }
    let _restore = Restore(WIRE_VERSION.with(|v| v.replace(version)));
    f()
}

/// Whether the frame being encoded or decoded on this thread carries fields of `version`.
fn speaks(version: u16) -> bool {
    WIRE_VERSION.with(Cell::get) >= version
}

/// A field appended by protocol v6: absent, and its default, on v4 and v5 connections.
pub(crate) mod v6 {
    use super::*;

    /// Encodes the field on a v6 connection; nothing (a unit, no bytes in bincode) before.
    pub(crate) fn serialize<T: Serialize, S: Serializer>(
        value: &T,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        if speaks(6) {
            value.serialize(serializer)
        } else {
            serializer.serialize_unit()
        }
    }

    /// Decodes the field on a v6 connection; its default, reading nothing, before.
    pub(crate) fn deserialize<'de, T: Deserialize<'de> + Default, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<T, D::Error> {
        if speaks(6) {
            T::deserialize(deserializer)
        } else {
            Ok(T::default())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Sample {
        old: u32,
        #[serde(default, with = "v6")]
        new: Option<u64>,
        after: u8,
    }

    fn encode(version: u16, value: &Sample) -> Vec<u8> {
        with_version(version, || {
            bincode::serde::encode_to_vec(value, crate::wire_options()).unwrap()
        })
    }

    fn decode(version: u16, bytes: &[u8]) -> Sample {
        with_version(version, || {
            bincode::serde::decode_from_slice(bytes, crate::wire_options())
                .unwrap()
                .0
        })
    }

    #[test]
    fn a_v6_field_is_absent_before_v6_and_round_trips_from_v6() {
        let value = Sample {
            old: 7,
            new: Some(300),
            after: 9,
        };
        assert_eq!(encode(5, &value), vec![7, 9]);
        let old = decode(5, &[7, 9]);
        assert_eq!(
            old,
            Sample {
                old: 7,
                new: None,
                after: 9
            }
        );
        let bytes = encode(6, &value);
        assert!(bytes.len() > 2, "{bytes:?}");
        assert_eq!(decode(6, &bytes), value);
        assert!(speaks(crate::PROTOCOL_VERSION), "the layout is restored");
    }

    #[test]
    fn json_sees_the_newest_layout() {
        let value = Sample {
            old: 1,
            new: Some(2),
            after: 3,
        };
        let json = serde_json::to_string(&value).unwrap();
        assert_eq!(json, r#"{"old":1,"new":2,"after":3}"#);
        let back: Sample = serde_json::from_str(r#"{"old":1,"after":3}"#).unwrap();
        assert_eq!(back.new, None);
    }
}
