//! Storage's own on-disk formats: the state store's topic and group records and the topic
//! manifest (DESIGN.md §4, "Storage owns its on-disk types").
//!
//! The wire types (`weir_protocol::TopicConfig`, `GroupConfig`) are converted at this boundary
//! into private `Stored*` types that only this module serialises, so a field added to a wire
//! type changes no byte on disk. Every record starts with a format version; every version ever
//! written stays readable (the tests hold their bytes literally). Encoding failure is an error,
//! never a bare version byte.
//!
//! Record layouts (bodies are bincode 2, `standard()` configuration: varint integers,
//! length-prefixed strings and sequences, enum variants as varint indices):
//!
//! ```text
//! topic record   v1: [1][StoredTopicConfig]                       (written before manifests)
//!                v2: [2][StoredTopicConfig][incarnation][created_ms]
//!                v3: [3][StoredTopicConfig][incarnation][created_ms][Option<max_age_ms>]
//! group record   v1: [1][cursor][unacked]
//!                v2: [2][cursor][unacked][Option<StoredGroupConfig>][delayed][dead]
//!                v3: [3][cursor][unacked][Option<StoredGroupConfig>][delayed][dead]
//!                    [StoredOrdering]
//! manifest       v1: "WEIRTMAN" [version u16 LE = 1][body_len u32 LE]
//!                    [body: StoredTopicConfig incarnation created_ms][crc32c u32 LE]
//!                v2: as v1, version 2, body: StoredTopicConfig incarnation created_ms
//!                    Option<max_age_ms>
//! ```
//!
//! The manifest's CRC covers everything before it (magic, version, length, body), so a torn
//! or overwritten manifest is reported as [`FormatError`], never misread.

use serde::{de::DeserializeOwned, Deserialize, Serialize};
use weir_protocol::{FsyncPolicy, GroupConfig, GroupOrdering, OverflowPolicy, TopicConfig};

/// Format version of topic records written now.
const TOPIC_RECORD_VERSION: u8 = 3;
/// Format version of group records written now.
const GROUP_RECORD_VERSION: u8 = 3;
/// The first bytes of every manifest.
pub const MANIFEST_MAGIC: &[u8; 8] = b"WEIRTMAN";
/// Format version of manifests written now.
const MANIFEST_VERSION: u16 = 2;
/// Magic, version and body length.
const MANIFEST_HEADER: usize = 8 + 2 + 4;
/// Largest manifest body accepted (a topic config is a few hundred bytes at most); a length
/// past it is junk, reported without allocating.
pub const MAX_MANIFEST_BODY: u32 = 64 * 1024;

/// A record or manifest that cannot be encoded or decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FormatError {
    /// The record is empty.
    #[error("empty record")]
    Empty,
    /// The version is not one this broker knows (written by a newer one, or junk).
    #[error("unknown format version {0}")]
    UnknownVersion(u16),
    /// The bytes do not decode as the version they claim.
    #[error("undecodable: {0}")]
    Undecodable(String),
    /// Encoding failed (nothing is written).
    #[error("cannot encode: {0}")]
    Encode(String),
    /// A manifest does not start with [`MANIFEST_MAGIC`].
    #[error("not a Weir topic manifest (bad magic)")]
    BadMagic,
    /// A manifest is shorter than its header and length say (torn).
    #[error("manifest truncated: {len} bytes")]
    Truncated {
        /// How many bytes there are.
        len: usize,
    },
    /// A manifest's body length is over [`MAX_MANIFEST_BODY`].
    #[error("manifest body length {0} is implausible")]
    TooLong(u32),
    /// A manifest's CRC does not match its bytes (torn or overwritten).
    #[error("manifest checksum mismatch (stored {stored:#010x}, computed {computed:#010x})")]
    BadCrc {
        /// The CRC in the file.
        stored: u32,
        /// The CRC of the bytes.
        computed: u32,
    },
}

/// Which incarnation of a topic name a directory and a state record belong to: a topic deleted
/// and re-created under the same name gets a new one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TopicIdentity {
    /// Random id chosen when the topic was created (or first given a manifest).
    pub incarnation: u64,
    /// When it was created, ms since the Unix epoch.
    pub created_ms: u64,
}

impl TopicIdentity {
    /// A fresh identity: a new random incarnation, created now.
    pub fn new() -> TopicIdentity {
        use std::hash::{BuildHasher, Hasher};
        let created_ms = now_ms();
        // RandomState is seeded from the OS per process and advanced per instance.
        let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
        hasher.write_u64(created_ms);
        hasher.write_u32(std::process::id());
        TopicIdentity {
            incarnation: hasher.finish(),
            created_ms,
        }
    }
}

/// A fresh identity, as [`TopicIdentity::new`]: not a constant, every call differs.
impl Default for TopicIdentity {
    fn default() -> Self {
        TopicIdentity::new()
    }
}

/// Milliseconds since the Unix epoch (0 if the clock is before it).
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// A group's durable state: its settings, where its cursor is, which messages below it are not
/// yet acked (with the number of deliveries each has had), which were nacked and when they may
/// be redelivered, and which are due for the dead-letter topic. Bounded by the group's
/// `max_in_flight`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct GroupRecord {
    /// The next sequence never yet delivered to the group.
    pub cursor: u64,
    /// Delivered-but-unacked messages below `cursor`: `(seq, deliveries so far)`.
    pub unacked: Vec<(u64, u32)>,
    /// The group's settings (`None` in records written before groups had settings).
    pub config: Option<GroupConfig>,
    /// Nacked messages: `(seq, deliveries so far, redeliver at, ms since the Unix epoch)`.
    pub delayed: Vec<(u64, u32, u64)>,
    /// Messages due for the dead-letter topic: `(seq, deliveries, reason)`.
    pub dead: Vec<(u64, u32, String)>,
}

/// A topic as the state store holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicRecord {
    /// The topic's configuration.
    pub config: TopicConfig,
    /// Its identity; `None` in version 1 records (written before manifests).
    pub identity: Option<TopicIdentity>,
}

/// A topic directory's manifest: enough to rebuild the topic's state record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Manifest {
    /// The topic's configuration.
    pub config: TopicConfig,
    pub identity: TopicIdentity,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
enum StoredOverflow {
    Reject,
    Block,
    DropOldest,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
enum StoredFsync {
    Batch,
    IntervalMs(u32),
    Never,
}

/// A topic configuration as stored: the layout of `TopicConfig` when topic records were
/// version 1, frozen.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct StoredTopicConfig {
    name: String,
    max_messages: u64,
    max_bytes: u64,
    max_message_bytes: u32,
    overflow: StoredOverflow,
    fsync: StoredFsync,
    max_blocked_publishes: u32,
    max_block_ms: u64,
}

#[derive(Serialize, Deserialize)]
struct StoredTopicV2 {
    config: StoredTopicConfig,
    incarnation: u64,
    created_ms: u64,
}

/// Version 3 of a topic record (version 2 of a manifest's body): version 2 and the age bound.
#[derive(Serialize, Deserialize)]
struct StoredTopicV3 {
    v2: StoredTopicV2,
    max_age_ms: Option<u64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
enum StoredOrdering {
    Shared,
    Key,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct StoredGroupConfig {
    ack_timeout_ms: u64,
    max_attempts: u32,
    dead_letter_topic: String,
}

#[derive(Deserialize)]
struct StoredGroupV1 {
    cursor: u64,
    unacked: Vec<(u64, u32)>,
}

#[derive(Serialize, Deserialize)]
struct StoredGroupV2 {
    cursor: u64,
    unacked: Vec<(u64, u32)>,
    config: Option<StoredGroupConfig>,
    delayed: Vec<(u64, u32, u64)>,
    dead: Vec<(u64, u32, String)>,
}

/// Version 3 of a group record: version 2 and the group's ordering.
#[derive(Serialize, Deserialize)]
struct StoredGroupV3 {
    v2: StoredGroupV2,
    ordering: StoredOrdering,
}

impl From<&TopicConfig> for StoredTopicConfig {
    fn from(c: &TopicConfig) -> Self {
        StoredTopicConfig {
            name: c.name.clone(),
            max_messages: c.max_messages,
            max_bytes: c.max_bytes,
            max_message_bytes: c.max_message_bytes,
            overflow: match c.overflow {
                OverflowPolicy::Reject => StoredOverflow::Reject,
                OverflowPolicy::Block => StoredOverflow::Block,
                OverflowPolicy::DropOldest => StoredOverflow::DropOldest,
            },
            fsync: match c.fsync {
                FsyncPolicy::Batch => StoredFsync::Batch,
                FsyncPolicy::IntervalMs(ms) => StoredFsync::IntervalMs(ms),
                FsyncPolicy::Never => StoredFsync::Never,
            },
            max_blocked_publishes: c.max_blocked_publishes,
            max_block_ms: c.max_block_ms,
        }
    }
}

impl From<StoredTopicConfig> for TopicConfig {
    fn from(c: StoredTopicConfig) -> Self {
        TopicConfig {
            max_age_ms: None,
            name: c.name,
            max_messages: c.max_messages,
            max_bytes: c.max_bytes,
            max_message_bytes: c.max_message_bytes,
            overflow: match c.overflow {
                StoredOverflow::Reject => OverflowPolicy::Reject,
                StoredOverflow::Block => OverflowPolicy::Block,
                StoredOverflow::DropOldest => OverflowPolicy::DropOldest,
            },
            fsync: match c.fsync {
                StoredFsync::Batch => FsyncPolicy::Batch,
                StoredFsync::IntervalMs(ms) => FsyncPolicy::IntervalMs(ms),
                StoredFsync::Never => FsyncPolicy::Never,
            },
            max_blocked_publishes: c.max_blocked_publishes,
            max_block_ms: c.max_block_ms,
        }
    }
}

impl From<&GroupConfig> for StoredGroupConfig {
    fn from(c: &GroupConfig) -> Self {
        StoredGroupConfig {
            ack_timeout_ms: c.ack_timeout_ms,
            max_attempts: c.max_attempts,
            dead_letter_topic: c.dead_letter_topic.clone(),
        }
    }
}

impl From<StoredGroupConfig> for GroupConfig {
    fn from(c: StoredGroupConfig) -> Self {
        GroupConfig {
            ordering: GroupOrdering::Shared,
            ack_timeout_ms: c.ack_timeout_ms,
            max_attempts: c.max_attempts,
            dead_letter_topic: c.dead_letter_topic,
        }
    }
}

/// Encodes a topic record (current version) for the state store.
pub fn encode_topic_record(
    config: &TopicConfig,
    identity: &TopicIdentity,
) -> Result<Vec<u8>, FormatError> {
    let body = encode_body(&stored_topic(config, identity))?;
    Ok(with_version(TOPIC_RECORD_VERSION, body))
}

/// Encodes a version 1 topic record, as brokers before manifests wrote them (for tests of
/// what they left behind).
#[cfg(test)]
pub(crate) fn encode_topic_record_v1(config: &TopicConfig) -> Vec<u8> {
    let body = encode_body(&StoredTopicConfig::from(config)).expect("a config encodes");
    with_version(1, body)
}

/// Decodes a topic record of any version this broker has written.
pub fn decode_topic_record(bytes: &[u8]) -> Result<TopicRecord, FormatError> {
    match bytes.split_first() {
        Some((1, body)) => Ok(TopicRecord {
            config: decode_body::<StoredTopicConfig>(body)?.into(),
            identity: None,
        }),
        Some((2, body)) => {
            let (config, identity) = from_stored_topic(StoredTopicV3 {
                v2: decode_body(body)?,
                max_age_ms: None,
            });
            Ok(TopicRecord {
                config,
                identity: Some(identity),
            })
        }
        Some((3, body)) => {
            let (config, identity) = from_stored_topic(decode_body(body)?);
            Ok(TopicRecord {
                config,
                identity: Some(identity),
            })
        }
        Some((v, _)) => Err(FormatError::UnknownVersion(u16::from(*v))),
        None => Err(FormatError::Empty),
    }
}

/// Encodes a group record (current version) for the state store.
pub fn encode_group_record(record: &GroupRecord) -> Result<Vec<u8>, FormatError> {
    let ordering = match record.config.as_ref().map(|c| c.ordering) {
        Some(GroupOrdering::Key) => StoredOrdering::Key,
        None | Some(GroupOrdering::Shared) => StoredOrdering::Shared,
    };
    let stored = StoredGroupV3 {
        v2: StoredGroupV2 {
            cursor: record.cursor,
            unacked: record.unacked.clone(),
            config: record.config.as_ref().map(StoredGroupConfig::from),
            delayed: record.delayed.clone(),
            dead: record.dead.clone(),
        },
        ordering,
    };
    Ok(with_version(GROUP_RECORD_VERSION, encode_body(&stored)?))
}

/// Decodes a group record of any version this broker has written (version 1, from before
/// groups had settings, nack delays and dead letters, comes back with none of them).
pub fn decode_group_record(bytes: &[u8]) -> Result<GroupRecord, FormatError> {
    match bytes.split_first() {
        Some((1, body)) => {
            let old: StoredGroupV1 = decode_body(body)?;
            Ok(GroupRecord {
                cursor: old.cursor,
                unacked: old.unacked,
                ..GroupRecord::default()
            })
        }
        Some((2, body)) => Ok(from_stored_group(StoredGroupV3 {
            v2: decode_body(body)?,
            ordering: StoredOrdering::Shared,
        })),
        Some((3, body)) => Ok(from_stored_group(decode_body(body)?)),
        Some((v, _)) => Err(FormatError::UnknownVersion(u16::from(*v))),
        None => Err(FormatError::Empty),
    }
}

/// Encodes a topic manifest: magic, version, length, body, CRC32C (see the module docs).
pub fn encode_manifest(manifest: &Manifest) -> Result<Vec<u8>, FormatError> {
    let body = encode_body(&stored_topic(&manifest.config, &manifest.identity))?;
    let len = u32::try_from(body.len())
        .ok()
        .filter(|&l| l <= MAX_MANIFEST_BODY)
        .ok_or_else(|| FormatError::Encode(format!("body of {} bytes", body.len())))?;
    let mut out = Vec::with_capacity(MANIFEST_HEADER + body.len() + 4);
    out.extend_from_slice(MANIFEST_MAGIC);
    out.extend_from_slice(&MANIFEST_VERSION.to_le_bytes());
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&body);
    let crc = crc32c::crc32c(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    Ok(out)
}

/// Decodes a topic manifest, checking its magic, length, CRC and version.
pub fn decode_manifest(bytes: &[u8]) -> Result<Manifest, FormatError> {
    let truncated = || FormatError::Truncated { len: bytes.len() };
    if bytes.len() < MANIFEST_MAGIC.len() || &bytes[..MANIFEST_MAGIC.len()] != MANIFEST_MAGIC {
        return Err(if MANIFEST_MAGIC.starts_with(bytes) {
            truncated()
        } else {
            FormatError::BadMagic
        });
    }
    let header = bytes.get(..MANIFEST_HEADER).ok_or_else(truncated)?;
    let version = u16::from_le_bytes([header[8], header[9]]);
    let len = u32::from_le_bytes([header[10], header[11], header[12], header[13]]);
    if len > MAX_MANIFEST_BODY {
        return Err(FormatError::TooLong(len));
    }
    let end = MANIFEST_HEADER + len as usize;
    let crc_bytes = bytes.get(end..end + 4).ok_or_else(truncated)?;
    let stored = u32::from_le_bytes([crc_bytes[0], crc_bytes[1], crc_bytes[2], crc_bytes[3]]);
    let computed = crc32c::crc32c(&bytes[..end]);
    if stored != computed {
        return Err(FormatError::BadCrc { stored, computed });
    }
    if bytes.len() != end + 4 {
        return Err(FormatError::Undecodable(format!(
            "{} bytes after the checksum",
            bytes.len() - end - 4
        )));
    }
    let body = &bytes[MANIFEST_HEADER..end];
    match version {
        1 => {
            let (config, identity) = from_stored_topic(StoredTopicV3 {
                v2: decode_body(body)?,
                max_age_ms: None,
            });
            Ok(Manifest { config, identity })
        }
        2 => {
            let (config, identity) = from_stored_topic(decode_body(body)?);
            Ok(Manifest { config, identity })
        }
        v => Err(FormatError::UnknownVersion(v)),
    }
}

fn stored_topic(config: &TopicConfig, identity: &TopicIdentity) -> StoredTopicV3 {
    StoredTopicV3 {
        v2: StoredTopicV2 {
            config: config.into(),
            incarnation: identity.incarnation,
            created_ms: identity.created_ms,
        },
        max_age_ms: config.max_age_ms,
    }
}

fn from_stored_topic(s: StoredTopicV3) -> (TopicConfig, TopicIdentity) {
    let config = TopicConfig {
        max_age_ms: s.max_age_ms,
        ..s.v2.config.into()
    };
    let identity = TopicIdentity {
        incarnation: s.v2.incarnation,
        created_ms: s.v2.created_ms,
    };
    (config, identity)
}

fn from_stored_group(s: StoredGroupV3) -> GroupRecord {
    let ordering = match s.ordering {
        StoredOrdering::Shared => GroupOrdering::Shared,
        StoredOrdering::Key => GroupOrdering::Key,
    };
    GroupRecord {
        cursor: s.v2.cursor,
        unacked: s.v2.unacked,
        config: s.v2.config.map(|c| GroupConfig {
            ordering,
            ..GroupConfig::from(c)
        }),
        delayed: s.v2.delayed,
        dead: s.v2.dead,
    }
}

fn with_version(version: u8, body: Vec<u8>) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len() + 1);
    out.push(version);
    out.extend(body);
    out
}

fn encode_body<T: Serialize>(value: &T) -> Result<Vec<u8>, FormatError> {
    bincode::serde::encode_to_vec(value, bincode::config::standard())
        .map_err(|e| FormatError::Encode(e.to_string()))
}

/// Decodes `body` whole: trailing bytes are junk, not ignored.
fn decode_body<T: DeserializeOwned>(body: &[u8]) -> Result<T, FormatError> {
    let (value, used) = bincode::serde::decode_from_slice(body, bincode::config::standard())
        .map_err(|e| FormatError::Undecodable(e.to_string()))?;
    if used != body.len() {
        return Err(FormatError::Undecodable(format!(
            "{} bytes after the record",
            body.len() - used
        )));
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> TopicConfig {
        TopicConfig {
            max_age_ms: None,
            name: "t".into(),
            max_messages: 300,
            max_bytes: 5,
            max_message_bytes: 7,
            overflow: OverflowPolicy::DropOldest,
            fsync: FsyncPolicy::IntervalMs(2),
            max_blocked_publishes: 8,
            max_block_ms: 1000,
        }
    }

    const IDENTITY: TopicIdentity = TopicIdentity {
        incarnation: 0x0102,
        created_ms: 9,
    };

    /// The body every topic format shares: `StoredTopicConfig` of [`config`].
    const CONFIG_BYTES: [u8; 14] = [
        1, b't', // name
        251, 44, 1, // max_messages 300 (varint: 251 then u16 LE)
        5, // max_bytes
        7, // max_message_bytes
        2, // overflow DropOldest
        1, 2, // fsync IntervalMs(2)
        8, // max_blocked_publishes
        251, 232, 3, // max_block_ms 1000
    ];

    fn config_bytes() -> &'static [u8] {
        &CONFIG_BYTES
    }

    #[test]
    fn topic_record_v2_is_still_read() {
        let mut v2 = vec![2];
        v2.extend_from_slice(config_bytes());
        v2.extend_from_slice(&[251, 2, 1, 9]); // incarnation 0x0102, created_ms 9
        assert_eq!(
            decode_topic_record(&v2).unwrap(),
            TopicRecord {
                config: config(),
                identity: Some(IDENTITY)
            }
        );
    }

    #[test]
    fn topic_record_v3_golden_bytes() {
        let mut expected = vec![3];
        expected.extend_from_slice(config_bytes());
        expected.extend_from_slice(&[251, 2, 1, 9]); // incarnation 0x0102, created_ms 9
        expected.extend_from_slice(&[1, 251, 96, 234]); // max_age_ms Some(60_000)
        let aged = TopicConfig {
            max_age_ms: Some(60_000),
            ..config()
        };
        assert_eq!(encode_topic_record(&aged, &IDENTITY).unwrap(), expected);
        assert_eq!(
            decode_topic_record(&expected).unwrap(),
            TopicRecord {
                config: aged,
                identity: Some(IDENTITY)
            }
        );
    }

    #[test]
    fn topic_record_v1_is_bincode_of_the_old_wire_config_and_still_read() {
        let mut v1 = vec![1];
        v1.extend_from_slice(config_bytes());
        assert_eq!(
            decode_topic_record(&v1).unwrap(),
            TopicRecord {
                config: config(),
                identity: None
            }
        );
    }

    fn group() -> GroupRecord {
        GroupRecord {
            cursor: 7,
            unacked: vec![(3, 1)],
            config: Some(GroupConfig {
                ordering: GroupOrdering::Shared,
                ack_timeout_ms: 100,
                max_attempts: 3,
                dead_letter_topic: "d".into(),
            }),
            delayed: vec![(4, 1, 99)],
            dead: vec![(6, 3, "x".into())],
        }
    }

    /// The body version 2 and 3 group records share: [`group`]'s.
    const GROUP_V2_BODY: [u8; 18] = [
        7, // cursor
        1, 3, 1, // unacked [(3, 1)]
        1, 100, 3, 1, b'd', // Some(config)
        1, 4, 1, 99, // delayed [(4, 1, 99)]
        1, 6, 3, 1, b'x', // dead [(6, 3, "x")]
    ];

    #[test]
    fn group_record_v3_golden_bytes() {
        let mut expected = vec![3];
        expected.extend_from_slice(&GROUP_V2_BODY);
        expected.push(1); // ordering Key
        let mut keyed = group();
        if let Some(c) = keyed.config.as_mut() {
            c.ordering = GroupOrdering::Key;
        }
        assert_eq!(encode_group_record(&keyed).unwrap(), expected);
        assert_eq!(decode_group_record(&expected).unwrap(), keyed);
    }

    #[test]
    fn group_record_v2_is_still_read() {
        let mut v2 = vec![2];
        v2.extend_from_slice(&GROUP_V2_BODY);
        assert_eq!(decode_group_record(&v2).unwrap(), group());
        let bare: &[u8] = &[2, 0, 0, 0, 0, 0];
        assert_eq!(
            decode_group_record(bare).unwrap(),
            GroupRecord::default(),
            "a v2 record without settings"
        );
    }

    #[test]
    fn group_record_v1_is_still_read() {
        let v1: &[u8] = &[1, 7, 1, 3, 1];
        let rec = decode_group_record(v1).unwrap();
        assert_eq!(
            (rec.cursor, rec.unacked, rec.config, rec.delayed.len()),
            (7, vec![(3, 1)], None, 0)
        );
    }

    #[test]
    fn manifest_v1_is_still_read() {
        let mut v1 = b"WEIRTMAN".to_vec();
        v1.extend_from_slice(&[1, 0]); // version 1
        v1.extend_from_slice(&[18, 0, 0, 0]); // body length
        v1.extend_from_slice(config_bytes());
        v1.extend_from_slice(&[251, 2, 1, 9]);
        v1.extend_from_slice(&[0x17, 0xf9, 0x4a, 0x90]); // crc32c 0x904af917, LE
        let manifest = Manifest {
            config: config(),
            identity: IDENTITY,
        };
        assert_eq!(decode_manifest(&v1).unwrap(), manifest);
    }

    #[test]
    fn manifest_v2_golden_bytes() {
        let mut expected = b"WEIRTMAN".to_vec();
        expected.extend_from_slice(&[2, 0]); // version 2
        expected.extend_from_slice(&[19, 0, 0, 0]); // body length
        expected.extend_from_slice(config_bytes());
        expected.extend_from_slice(&[251, 2, 1, 9]);
        expected.push(0); // max_age_ms None
        let crc = crc32c::crc32c(&expected);
        expected.extend_from_slice(&crc.to_le_bytes());
        let manifest = Manifest {
            config: config(),
            identity: IDENTITY,
        };
        assert_eq!(encode_manifest(&manifest).unwrap(), expected);
        assert_eq!(decode_manifest(&expected).unwrap(), manifest);
    }

    #[test]
    fn junk_torn_and_unknown_are_typed_errors() {
        let good = encode_manifest(&Manifest {
            config: config(),
            identity: IDENTITY,
        })
        .unwrap();
        assert_eq!(
            decode_manifest(b"junk junk junk"),
            Err(FormatError::BadMagic)
        );
        assert_eq!(decode_manifest(b""), Err(FormatError::Truncated { len: 0 }));
        for cut in [4, 12, good.len() - 1] {
            assert_eq!(
                decode_manifest(&good[..cut]),
                Err(FormatError::Truncated { len: cut })
            );
        }
        let mut flipped = good.clone();
        flipped[16] ^= 1;
        assert!(matches!(
            decode_manifest(&flipped),
            Err(FormatError::BadCrc { .. })
        ));
        let mut long = good.clone();
        long[10..14].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(decode_manifest(&long), Err(FormatError::TooLong(u32::MAX)));
        let mut newer = good.clone();
        newer[8] = 9;
        let end = newer.len() - 4;
        let crc = crc32c::crc32c(&newer[..end]);
        newer[end..].copy_from_slice(&crc.to_le_bytes());
        assert_eq!(decode_manifest(&newer), Err(FormatError::UnknownVersion(9)));

        assert_eq!(decode_topic_record(&[]), Err(FormatError::Empty));
        assert_eq!(
            decode_topic_record(&[9, 1]),
            Err(FormatError::UnknownVersion(9))
        );
        assert!(matches!(
            decode_topic_record(&[2, 1]),
            Err(FormatError::Undecodable(_))
        ));
        assert_eq!(decode_group_record(&[]), Err(FormatError::Empty));
        assert_eq!(
            decode_group_record(&[4]),
            Err(FormatError::UnknownVersion(4))
        );
        assert!(matches!(
            decode_group_record(&[2, 7, 1, 3, 1, 0, 0, 0, 99]),
            Err(FormatError::Undecodable(_))
        ));
    }
}
