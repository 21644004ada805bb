//! Codec properties: every frame round-trips, and no byte string panics the decoder.

use bytes::{BufMut, Bytes, BytesMut};
use proptest::prelude::*;
use tokio_util::codec::{Decoder, Encoder};
use weir_protocol::*;

fn bytes_strategy() -> impl Strategy<Value = Bytes> {
    proptest::collection::vec(any::<u8>(), 0..256).prop_map(Bytes::from)
}

fn name() -> impl Strategy<Value = String> {
    "[a-z0-9._-]{0,24}"
}

fn headers() -> impl Strategy<Value = Headers> {
    proptest::collection::vec((name(), name()), 0..3)
}

fn group_spec() -> impl Strategy<Value = GroupSpec> {
    let start = prop_oneof![
        Just(StartPosition::Earliest),
        Just(StartPosition::Latest),
        any::<u64>().prop_map(StartPosition::Seq),
    ];
    (
        start,
        any::<Option<u64>>(),
        any::<Option<u32>>(),
        proptest::option::of(name()),
        any::<bool>(),
        proptest::option::of(ordering()),
    )
        .prop_map(
            |(start, ack_timeout_ms, max_attempts, dead_letter_topic, ephemeral, ordering)| {
                GroupSpec {
                    start,
                    ack_timeout_ms,
                    max_attempts,
                    dead_letter_topic,
                    ephemeral,
                    ordering,
                }
            },
        )
}

fn ordering() -> impl Strategy<Value = GroupOrdering> {
    prop_oneof![Just(GroupOrdering::Shared), Just(GroupOrdering::Key)]
}

fn stamp() -> impl Strategy<Value = Option<ProducerStamp>> {
    proptest::option::of(
        (any::<u128>(), any::<u64>()).prop_map(|(id, seq)| ProducerStamp { id, seq }),
    )
}

fn limits() -> impl Strategy<Value = ServerLimits> {
    (
        (any::<u32>(), any::<u32>(), any::<u32>(), any::<u32>()),
        (any::<u32>(), any::<u32>(), any::<u64>()),
    )
        .prop_map(|((a, b, c, d), (e, f, g))| ServerLimits {
            max_frame_bytes: a,
            max_unconfirmed: b,
            max_credit: c,
            max_subscriptions: d,
            max_headers: e,
            max_header_bytes: f,
            idle_timeout_ms: g,
        })
}

fn fsync() -> impl Strategy<Value = FsyncPolicy> {
    prop_oneof![
        Just(FsyncPolicy::Batch),
        Just(FsyncPolicy::Never),
        any::<u32>().prop_map(FsyncPolicy::IntervalMs)
    ]
}

fn policy() -> impl Strategy<Value = OverflowPolicy> {
    prop_oneof![
        Just(OverflowPolicy::Reject),
        Just(OverflowPolicy::Block),
        Just(OverflowPolicy::DropOldest)
    ]
}

fn config() -> impl Strategy<Value = TopicConfig> {
    (
        name(),
        (any::<u64>(), any::<u64>(), any::<u32>()),
        policy(),
        fsync(),
        (any::<u32>(), any::<u64>(), any::<Option<u64>>()),
    )
        .prop_map(
            |(name, (m, b, mb), overflow, fsync, (parked, block_ms, max_age_ms))| TopicConfig {
                name,
                max_messages: m,
                max_bytes: b,
                max_message_bytes: mb,
                overflow,
                fsync,
                max_blocked_publishes: parked,
                max_block_ms: block_ms,
                max_age_ms,
            },
        )
}

fn topic_info() -> impl Strategy<Value = TopicInfo> {
    let group = (
        name(),
        any::<u64>(),
        any::<u64>(),
        any::<u32>(),
        any::<u64>(),
    )
        .prop_map(|(name, in_flight, pending, members, credit)| GroupInfo {
            config: GroupConfig {
                ack_timeout_ms: pending,
                max_attempts: members,
                dead_letter_topic: format!("{name}.dlq"),
                ordering: if credit % 2 == 0 {
                    GroupOrdering::Key
                } else {
                    GroupOrdering::Shared
                },
            },
            name,
            in_flight,
            pending,
            members,
            credit,
            timed_out: credit / 2,
            dead_lettered: in_flight / 3,
            dead_letter_held: pending % 5,
            oldest_unacked_ms: (in_flight % 2 == 0).then_some(credit),
            ephemeral: members % 2 == 0,
        });
    (
        config(),
        any::<u64>(),
        any::<u64>(),
        any::<u64>(),
        proptest::collection::vec(group, 0..3),
    )
        .prop_map(|(config, depth, bytes, next_seq, groups)| TopicInfo {
            config,
            depth,
            bytes,
            next_seq,
            groups,
            groups_omitted: (depth % 3) as u32,
            dropped: depth / 2,
            parked: bytes % 7,
            rejected: next_seq / 3,
            drain_per_s: depth % 11,
            refusing: (depth % 2 == 0).then(|| ActiveRefusal {
                reason: RejectReason::TopicFull,
                limit: Limit::new("max_messages", depth),
                retry_after_ms: Some(bytes),
                age_ms: next_seq,
                last_second: depth / 3,
            }),
            health: match depth % 4 {
                0 => TopicHealth::Healthy,
                1 => TopicHealth::Full {
                    reason: "No space left on device".into(),
                },
                2 => TopicHealth::Failed {
                    reason: "fdatasync: EIO".into(),
                },
                _ => TopicHealth::Damaged {
                    at_seq: next_seq,
                    reason: "crc mismatch".into(),
                },
            },
        })
}

fn dropped() -> impl Strategy<Value = DroppedMessage> {
    (
        any::<u64>(),
        any::<u32>(),
        proptest::option::of(bytes_strategy()),
        name(),
        any::<u64>(),
    )
        .prop_map(|(seq, bytes, head, reason, dropped_at_ms)| DroppedMessage {
            seq,
            bytes,
            head,
            reason,
            dropped_at_ms,
        })
}

fn reason() -> impl Strategy<Value = RejectReason> {
    prop_oneof![
        Just(RejectReason::TopicFull),
        Just(RejectReason::MessageTooLarge),
        Just(RejectReason::TooManyConnections),
        Just(RejectReason::TooManyTopics),
        Just(RejectReason::ShuttingDown),
        Just(RejectReason::RateLimited),
        Just(RejectReason::Overloaded),
        Just(RejectReason::StorageFull),
    ]
}

fn code() -> impl Strategy<Value = ErrorCode> {
    prop_oneof![
        Just(ErrorCode::MalformedFrame),
        Just(ErrorCode::FrameTooLarge),
        Just(ErrorCode::UnsupportedVersion),
        Just(ErrorCode::Unauthorized),
        Just(ErrorCode::HelloRequired),
        Just(ErrorCode::UnknownTopic),
        Just(ErrorCode::TopicExists),
        Just(ErrorCode::InvalidArgument),
        Just(ErrorCode::LimitExceeded),
        Just(ErrorCode::UnknownSubscription),
        Just(ErrorCode::SubscriptionExists),
        Just(ErrorCode::Internal),
        Just(ErrorCode::InUse),
        Just(ErrorCode::UnknownGroup),
        Just(ErrorCode::FrameTimeout),
        Just(ErrorCode::StorageFailed),
        Just(ErrorCode::StorageDamaged),
        Just(ErrorCode::Forbidden),
    ]
}

fn action() -> impl Strategy<Value = Action> {
    prop_oneof![
        Just(Action::Publish),
        Just(Action::Subscribe),
        Just(Action::Manage),
        Just(Action::Monitor),
    ]
}

fn frame() -> impl Strategy<Value = Frame> {
    let spec = (
        name(),
        any::<Option<u64>>(),
        any::<Option<u64>>(),
        any::<Option<u32>>(),
        proptest::option::of(fsync()),
        (
            proptest::option::of(policy()),
            any::<Option<u32>>(),
            any::<Option<u64>>(),
        ),
    )
        .prop_map(
            |(
                name,
                max_messages,
                max_bytes,
                max_message_bytes,
                fsync,
                (overflow, parked, block),
            )| {
                TopicSpec {
                    name,
                    max_messages,
                    max_bytes,
                    max_message_bytes,
                    overflow,
                    fsync,
                    max_blocked_publishes: parked,
                    max_block_ms: block,
                    max_age_ms: max_bytes,
                }
            },
        );
    prop_oneof![
        (any::<u16>(), proptest::option::of(name()))
            .prop_map(|(version, token)| Frame::Hello(Hello { version, token })),
        (any::<u16>(), limits())
            .prop_map(|(version, limits)| Frame::HelloOk(HelloOk { version, limits })),
        (any::<u64>(), spec).prop_map(|(req, spec)| Frame::CreateTopic(CreateTopic { req, spec })),
        (any::<u64>(), any::<bool>(), config()).prop_map(|(req, created, config)| {
            Frame::TopicCreated(TopicCreated {
                req,
                created,
                config,
            })
        }),
        (any::<u64>(), proptest::option::of(name()), any::<u32>())
            .prop_map(|(req, after, limit)| Frame::ListTopics(ListTopics { req, after, limit })),
        (
            any::<u64>(),
            proptest::collection::vec(topic_info(), 0..3),
            proptest::option::of(name())
        )
            .prop_map(|(req, topics, next)| Frame::TopicList(TopicList {
                req,
                topics,
                next
            })),
        (any::<u64>(), name(), headers(), bytes_strategy(), stamp()).prop_map(
            |(id, topic, headers, payload, producer)| Frame::Publish(Publish {
                id,
                topic,
                headers,
                payload,
                producer,
            })
        ),
        (any::<u64>(), any::<u64>(), any::<bool>()).prop_map(|(id, seq, duplicate)| {
            Frame::PublishOk(PublishOk { id, seq, duplicate })
        }),
        (
            any::<u64>(),
            reason(),
            name(),
            any::<u64>(),
            any::<Option<u64>>(),
            proptest::option::of(name())
        )
            .prop_map(
                |(id, reason, n, v, retry_after_ms, held_by)| Frame::Rejected(Rejected {
                    id,
                    reason,
                    limit: Limit::new(n, v),
                    retry_after_ms,
                    held_by
                })
            ),
        (any::<u64>(), name(), name(), any::<u32>(), group_spec()).prop_map(
            |(sub, topic, group, credit, group_spec)| {
                Frame::Subscribe(Subscribe {
                    sub,
                    topic,
                    group,
                    credit,
                    group_spec,
                })
            }
        ),
        any::<u64>().prop_map(|sub| Frame::Subscribed(Subscribed { sub })),
        any::<u64>().prop_map(|sub| Frame::Unsubscribe(Unsubscribe { sub })),
        any::<u64>().prop_map(|sub| Frame::Unsubscribed(Unsubscribed { sub })),
        (any::<u64>(), any::<u32>()).prop_map(|(sub, n)| Frame::Credit(Credit { sub, n })),
        (
            any::<u64>(),
            any::<u64>(),
            any::<u32>(),
            headers(),
            bytes_strategy()
        )
            .prop_map(
                |(sub, seq, attempt, headers, payload)| Frame::Deliver(Deliver {
                    sub,
                    seq,
                    attempt,
                    headers,
                    payload
                })
            ),
        (
            any::<u64>(),
            proptest::collection::vec(any::<u64>(), 0..20),
            any::<u64>()
        )
            .prop_map(|(sub, seqs, delay_ms)| Frame::Nack(Nack {
                sub,
                seqs,
                delay_ms
            })),
        (
            any::<u64>(),
            proptest::collection::vec(any::<u64>(), 0..20),
            name()
        )
            .prop_map(|(sub, seqs, reason)| Frame::Term(Term { sub, seqs, reason })),
        (any::<u64>(), proptest::collection::vec(any::<u64>(), 0..20))
            .prop_map(|(sub, seqs)| Frame::Progress(Progress { sub, seqs })),
        (any::<u64>(), name(), any::<bool>())
            .prop_map(|(req, name, force)| Frame::DeleteTopic(DeleteTopic { req, name, force })),
        any::<u64>().prop_map(|req| Frame::TopicDeleted(TopicDeleted { req })),
        (any::<u64>(), name(), name(), any::<bool>()).prop_map(|(req, topic, group, force)| {
            Frame::DeleteGroup(DeleteGroup {
                req,
                topic,
                group,
                force,
            })
        }),
        any::<u64>().prop_map(|req| Frame::GroupDeleted(GroupDeleted { req })),
        (any::<u64>(), proptest::collection::vec(any::<u64>(), 0..50))
            .prop_map(|(sub, seqs)| Frame::Ack(Ack { sub, seqs })),
        (
            any::<u64>(),
            code(),
            name(),
            proptest::option::of((action(), name()))
        )
            .prop_map(|(req, code, message, denied)| Frame::Error(Error {
                req,
                code,
                message,
                denied: denied.map(|(action, topic)| Denied { action, topic }),
            })),
        any::<u64>().prop_map(Frame::Ping),
        any::<u64>().prop_map(Frame::Pong),
        (
            prop_oneof![
                Just(GoingAwayReason::ShuttingDown),
                Just(GoingAwayReason::Idle),
                Just(GoingAwayReason::SlowConsumer),
            ],
            name()
        )
            .prop_map(|(reason, message)| Frame::GoingAway(GoingAway { reason, message })),
        (any::<u64>(), any::<u64>(), any::<u64>()).prop_map(|(sub, from, to)| Frame::Gap(Gap {
            sub,
            from,
            to
        })),
        (any::<u64>(), name())
            .prop_map(|(req, name)| Frame::DescribeTopic(DescribeTopic { req, name })),
        (
            any::<u64>(),
            topic_info(),
            proptest::collection::vec(dropped(), 0..3)
        )
            .prop_map(
                |(req, info, recent_drops)| Frame::TopicDescription(Box::new(TopicDescription {
                    req,
                    info,
                    recent_drops
                }))
            ),
        (
            any::<u64>(),
            name(),
            (
                any::<Option<u64>>(),
                any::<Option<u64>>(),
                any::<Option<u32>>(),
                proptest::option::of(policy()),
                proptest::option::of(fsync()),
                any::<Option<u32>>(),
                any::<Option<u64>>(),
            )
        )
            .prop_map(|(req, name, u)| Frame::UpdateTopic(UpdateTopic {
                req,
                name,
                update: TopicUpdate {
                    max_messages: u.0,
                    max_bytes: u.1,
                    max_message_bytes: u.2,
                    overflow: u.3,
                    fsync: u.4,
                    max_blocked_publishes: u.5,
                    max_block_ms: u.6,
                    max_age_ms: u.0.map(|m| m / 2),
                },
            })),
        (any::<u64>(), config())
            .prop_map(|(req, config)| Frame::TopicUpdated(TopicUpdated { req, config })),
        (
            any::<u64>(),
            name(),
            name(),
            any::<Option<u64>>(),
            any::<Option<u32>>(),
            proptest::option::of(name())
        )
            .prop_map(|(req, topic, group, ack_timeout_ms, max_attempts, dlq)| {
                Frame::UpdateGroup(UpdateGroup {
                    req,
                    topic,
                    group,
                    update: GroupUpdate {
                        ack_timeout_ms,
                        max_attempts,
                        dead_letter_topic: dlq,
                    },
                })
            }),
        (any::<u64>(), any::<u64>(), any::<u32>(), name()).prop_map(
            |(req, ack_timeout_ms, max_attempts, dead_letter_topic)| {
                Frame::GroupUpdated(GroupUpdated {
                    req,
                    config: GroupConfig {
                        ordering: if max_attempts % 2 == 0 {
                            GroupOrdering::Key
                        } else {
                            GroupOrdering::Shared
                        },
                        ack_timeout_ms,
                        max_attempts,
                        dead_letter_topic,
                    },
                })
            }
        ),
        (
            any::<u64>(),
            name(),
            proptest::collection::vec((headers(), bytes_strategy()), 0..5),
            stamp()
        )
            .prop_map(|(first_id, topic, messages, producer)| Frame::PublishBatch(
                PublishBatch {
                    first_id,
                    topic,
                    messages: messages
                        .into_iter()
                        .map(|(h, p)| BatchMessage::new(h, p))
                        .collect(),
                    producer,
                }
            )),
        (any::<u64>(), any::<u32>(), any::<u64>()).prop_map(|(first_id, count, first_seq)| {
            Frame::Confirmed(Confirmed {
                first_id,
                count,
                first_seq,
            })
        }),
        (
            any::<u64>(),
            proptest::collection::vec(
                (any::<u64>(), any::<u32>(), headers(), bytes_strategy()),
                0..5
            )
        )
            .prop_map(|(sub, messages)| Frame::DeliverBatch(DeliverBatch {
                sub,
                messages: messages
                    .into_iter()
                    .map(|(seq, attempt, h, p)| BatchDelivery::new(seq, attempt, h, p))
                    .collect(),
            })),
        (
            any::<u64>(),
            proptest::collection::vec((any::<u64>(), any::<u64>()), 0..5),
            prop_oneof![
                Just(Settlement::Ack),
                any::<u64>().prop_map(|delay_ms| Settlement::Nack { delay_ms }),
                name().prop_map(|reason| Settlement::Term { reason }),
                Just(Settlement::Progress),
            ]
        )
            .prop_map(|(sub, ranges, how)| Frame::Settle(Settle { sub, ranges, how })),
    ]
}

fn encode(frame: &Frame) -> BytesMut {
    let mut buf = BytesMut::new();
    WeirCodec::default()
        .encode_frame(frame, &mut buf)
        .expect("encodes");
    buf
}

proptest! {
    #[test]
    fn every_frame_round_trips(frames in proptest::collection::vec(frame(), 1..8)) {
        let mut buf = BytesMut::new();
        let mut codec = WeirCodec::default();
        for f in &frames {
            codec.encode_frame(f, &mut buf).unwrap();
        }
        for f in &frames {
            let got = codec.decode(&mut buf).unwrap();
            prop_assert_eq!(got.as_ref(), Some(f));
        }
        prop_assert!(buf.is_empty());
        prop_assert!(codec.decode_eof(&mut buf).unwrap().is_none());
    }

    #[test]
    fn a_v4_or_v5_peer_reads_every_frame_without_the_v6_fields(frame in frame(), v5 in any::<bool>()) {
        let mut codec = WeirCodec::default();
        codec.set_version(if v5 { 5 } else { 4 });
        let mut buf = BytesMut::new();
        codec.encode_frame(&frame, &mut buf).unwrap();
        let old = codec.decode(&mut buf).unwrap();
        prop_assert_eq!(old, Some(without_v6_fields(&frame)));
        prop_assert!(buf.is_empty());
    }

    #[test]
    fn frames_split_at_any_point_decode_the_same(f in frame(), cut in any::<prop::sample::Index>()) {
        let whole = encode(&f);
        let at = cut.index(whole.len());
        let mut codec = WeirCodec::default();
        let mut buf = BytesMut::from(&whole[..at]);
        prop_assert_eq!(codec.decode(&mut buf).unwrap(), None);
        buf.extend_from_slice(&whole[at..]);
        prop_assert_eq!(codec.decode(&mut buf).unwrap(), Some(f));
    }

    #[test]
    fn every_truncation_is_incomplete_then_a_typed_error_at_eof(f in frame()) {
        let whole = encode(&f);
        for at in 1..whole.len() {
            let mut buf = BytesMut::from(&whole[..at]);
            let got = WeirCodec::default().decode_eof(&mut buf);
            let is_truncated = matches!(got, Err(CodecError::Truncated { .. }));
            prop_assert!(is_truncated, "prefix of {} bytes gave {:?}", at, got);
        }
    }

    #[test]
    fn arbitrary_bytes_never_panic_and_fail_typed(data in proptest::collection::vec(any::<u8>(), 0..512)) {
        let mut buf = BytesMut::from(&data[..]);
        let mut codec = WeirCodec::new(1024);
        loop {
            match codec.decode_eof(&mut buf) {
                Ok(Some(_)) => continue,
                Ok(None) => break,
                Err(CodecError::FrameTooLarge { .. } | CodecError::Malformed(_) | CodecError::Truncated { .. }) => break,
                Err(CodecError::Io(e)) => prop_assert!(false, "decoder invented an i/o error: {}", e),
            }
        }
    }

    #[test]
    fn corrupted_bodies_never_panic(f in frame(), flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..4)) {
        let mut bytes = encode(&f);
        for (i, v) in flips {
            let at = 4 + i.index(bytes.len() - 4); // keep the length prefix, garble the body
            bytes[at] ^= v | 1;
        }
        let _ = WeirCodec::default().decode_eof(&mut bytes);
    }
}

#[test]
fn oversized_length_is_refused_before_the_body_arrives() {
    let mut codec = WeirCodec::new(1024);
    let mut buf = BytesMut::new();
    buf.put_u32(1025);
    match codec.decode(&mut buf) {
        Err(CodecError::FrameTooLarge {
            len: 1025,
            max: 1024,
        }) => {}
        other => panic!("expected FrameTooLarge, got {other:?}"),
    }
}

#[test]
fn encoding_an_oversized_frame_fails_and_leaves_the_buffer_untouched() {
    let mut codec = WeirCodec::new(1024);
    let mut buf = BytesMut::from(&b"keep"[..]);
    let frame = Frame::Publish(Publish {
        producer: None,
        id: 1,
        topic: "t".into(),
        payload: Bytes::from(vec![0u8; 2000]),
        headers: Vec::new(),
    });
    assert!(matches!(
        codec.encode(frame, &mut buf),
        Err(CodecError::FrameTooLarge { .. })
    ));
    assert_eq!(&buf[..], b"keep");
}

#[test]
fn payload_on_a_frame_kind_without_one_is_malformed() {
    let mut buf = encode(&Frame::Ping(7));
    buf.put_u8(0xAA);
    let len = (buf.len() - 4) as u32;
    buf[..4].copy_from_slice(&len.to_be_bytes());
    assert!(matches!(
        WeirCodec::default().decode(&mut buf),
        Err(CodecError::Malformed(_))
    ));
}

/// Pins the wire layout: a change here breaks every deployed client (protocol version 2 added
/// the headers list; version 6 the producer stamp, absent on v4 and v5 connections).
#[test]
fn wire_compat_byte_layout_of_publish() {
    let frame = Frame::Publish(Publish {
        producer: None,
        id: 1,
        topic: "orders".into(),
        payload: Bytes::from_static(b"abc"),
        headers: Vec::new(),
    });
    let v5: &[u8] = &[
        0, 0, 0, 17, // len: everything after this field
        0, 0, 0, 10, // hdr_len
        6,  // Frame::Publish variant index (varint)
        1,  // id = 1 (varint)
        6, b'o', b'r', b'd', b'e', b'r', b's', // topic
        0,    // headers: none (varint length)
        b'a', b'b', b'c', // payload, raw
    ];
    for version in [4, 5] {
        let mut codec = WeirCodec::default();
        codec.set_version(version);
        let mut buf = BytesMut::new();
        codec.encode_frame(&frame, &mut buf).unwrap();
        assert_eq!(&buf[..], v5, "v{version}");
    }
    let v6: &[u8] = &[
        0, 0, 0, 18, // len
        0, 0, 0, 11, // hdr_len
        6, 1, 6, b'o', b'r', b'd', b'e', b'r', b's', 0, // as v5
        0, // producer: None
        b'a', b'b', b'c',
    ];
    assert_eq!(&encode(&frame)[..], v6);
}

/// `frame` as a v4 or v5 peer sees it: every field protocol v6 appended at its default.
fn without_v6_fields(frame: &Frame) -> Frame {
    fn config(c: &mut TopicConfig) {
        c.max_age_ms = None;
    }
    fn info(i: &mut TopicInfo) {
        config(&mut i.config);
        for g in &mut i.groups {
            g.config.ordering = GroupOrdering::Shared;
        }
    }
    let mut f = frame.clone();
    match &mut f {
        Frame::CreateTopic(c) => c.spec.max_age_ms = None,
        Frame::TopicCreated(c) => config(&mut c.config),
        Frame::TopicUpdated(c) => config(&mut c.config),
        Frame::UpdateTopic(u) => u.update.max_age_ms = None,
        Frame::TopicList(l) => l.topics.iter_mut().for_each(info),
        Frame::TopicDescription(d) => info(&mut d.info),
        Frame::Subscribe(s) => s.group_spec.ordering = None,
        Frame::GroupUpdated(g) => g.config.ordering = GroupOrdering::Shared,
        Frame::Publish(p) => p.producer = None,
        Frame::PublishBatch(b) => b.producer = None,
        Frame::PublishOk(ok) => ok.duplicate = false,
        _ => {}
    }
    f
}

#[test]
fn frame_ready_says_when_a_whole_frame_is_buffered() {
    let codec = WeirCodec::new(1024);
    assert!(!codec.frame_ready(&[]));
    assert!(!codec.frame_ready(&[0, 0]));
    assert!(!codec.frame_ready(&[0, 0, 0, 2, 9]));
    assert!(codec.frame_ready(&[0, 0, 0, 2, 9, 9]));
    assert!(
        codec.frame_ready(&[0, 1, 0, 0]),
        "over the maximum: decoding refuses it unbuffered"
    );
}

#[test]
fn peek_prefix_reads_a_publish_id_before_its_header_is_buffered() {
    let frame = Frame::Publish(Publish {
        producer: None,
        id: 300_000,
        topic: "t".repeat(1000),
        headers: Vec::new(),
        payload: Bytes::from_static(b"abc"),
    });
    let bytes = encode(&frame);
    let codec = WeirCodec::new(1 << 20);
    for cut in 0..9 {
        assert_eq!(codec.peek_prefix(&bytes[..cut]), None, "cut at {cut}");
    }
    let prefix = codec.peek_prefix(&bytes[..16]).unwrap();
    assert_eq!(prefix.publish_id, Some(300_000));
    assert_eq!(prefix.len, bytes.len() - 4);
    assert!(prefix.header_len > 1000);
    let ping = encode(&Frame::Ping(7));
    assert_eq!(codec.peek_prefix(&ping).unwrap().publish_id, None);
}

#[test]
fn decode_header_reads_a_publish_without_its_payload() {
    let mut codec = WeirCodec::new(1 << 20);
    let frame = Frame::Publish(Publish {
        producer: None,
        id: 7,
        topic: "orders".into(),
        payload: Bytes::from(vec![0xAB; 1000]),
        headers: Vec::new(),
    });
    let mut bytes = BytesMut::new();
    codec.encode_frame(&frame, &mut bytes).unwrap();
    let header_end = bytes.len() - 1000;
    for cut in 0..header_end {
        assert!(codec.decode_header(&bytes[..cut]).is_none(), "cut {cut}");
    }
    let head = codec.decode_header(&bytes[..header_end]).unwrap().unwrap();
    assert_eq!((head.header_bytes, head.payload_bytes), (header_end, 1000));
    let Frame::Publish(p) = head.frame else {
        panic!("{:?}", head.frame)
    };
    assert_eq!((p.id, p.topic.as_str(), p.payload.len()), (7, "orders", 0));
}

#[test]
fn decode_header_refuses_payload_bytes_on_a_frame_without_payload() {
    let mut codec = WeirCodec::new(1 << 20);
    let mut bytes = BytesMut::new();
    codec.encode_frame(&Frame::Ping(1), &mut bytes).unwrap();
    assert!(codec.decode_header(&bytes).unwrap().is_ok());
    // Announce three more bytes than the header: a Ping with a "payload".
    let len = u32::from_be_bytes(bytes[..4].try_into().unwrap()) + 3;
    bytes[..4].copy_from_slice(&len.to_be_bytes());
    bytes.put_slice(b"xyz");
    assert!(matches!(
        codec.decode_header(&bytes),
        Some(Err(CodecError::Malformed(_)))
    ));
    let mut too_big = BytesMut::new();
    too_big.put_u32(2 << 20);
    assert!(matches!(
        codec.decode_header(&too_big),
        Some(Err(CodecError::FrameTooLarge { .. }))
    ));
}

proptest! {
    #[test]
    fn a_delivery_never_encodes_larger_than_its_announced_bound(
        sub in any::<u64>(),
        seq in any::<u64>(),
        attempt in any::<u32>(),
        headers in proptest::collection::vec(("[a-z]{0,300}", "[a-z]{0,300}"), 0..4),
        payload in bytes_strategy(),
    ) {
        let bound = Deliver::max_body_bytes(&headers, payload.len());
        let frame = Frame::Deliver(Deliver { sub, seq, attempt, headers, payload });
        prop_assert!(encode(&frame).len() - 4 <= bound);
    }
}

#[test]
fn a_batch_whose_payload_lengths_do_not_add_up_is_malformed() {
    let batch = Frame::PublishBatch(PublishBatch {
        producer: None,
        first_id: 1,
        topic: "t".into(),
        messages: vec![
            BatchMessage::new(vec![], Bytes::from_static(b"abc")),
            BatchMessage::new(vec![], Bytes::from_static(b"de")),
        ],
    });
    let mut buf = encode(&batch);
    assert_eq!(
        WeirCodec::default().decode(&mut buf.clone()).unwrap(),
        Some(batch.clone())
    );
    // One payload byte short of what the entries announce: malformed, not misread.
    let len = u32::from_be_bytes(buf[..4].try_into().unwrap()) - 1;
    buf[..4].copy_from_slice(&len.to_be_bytes());
    buf.truncate(buf.len() - 1);
    assert!(matches!(
        WeirCodec::default().decode(&mut buf),
        Err(CodecError::Malformed(_))
    ));
    // An entry whose length differs from its payload is refused by the encoder.
    let mut lying = BatchMessage::new(vec![], Bytes::from_static(b"abc"));
    lying.len = 2;
    let frame = Frame::PublishBatch(PublishBatch {
        producer: None,
        first_id: 1,
        topic: "t".into(),
        messages: vec![lying],
    });
    let mut out = BytesMut::new();
    assert!(WeirCodec::default().encode_frame(&frame, &mut out).is_err());
    assert!(out.is_empty());
}

#[test]
fn a_batch_past_its_message_or_header_bounds_is_malformed() {
    let many = Frame::PublishBatch(PublishBatch {
        producer: None,
        first_id: 1,
        topic: "t".into(),
        messages: vec![BatchMessage::new(vec![], Bytes::new()); MAX_BATCH_MESSAGES + 1],
    });
    let mut buf = encode(&many);
    assert!(matches!(
        WeirCodec::default().decode(&mut buf),
        Err(CodecError::Malformed(m)) if m.contains("messages")
    ));
    // Each message within the per-message ceiling, all of them past the batch's header budget.
    let headers: Headers = vec![(String::new(), String::new()); MAX_HEADERS_CEILING];
    let per = MAX_BATCH_HEADERS / MAX_HEADERS_CEILING + 1;
    let heavy = Frame::DeliverBatch(DeliverBatch {
        sub: 1,
        messages: vec![BatchDelivery::new(1, 1, headers, Bytes::new()); per],
    });
    let mut buf = encode(&heavy);
    assert!(matches!(
        WeirCodec::default().decode(&mut buf),
        Err(CodecError::Malformed(m)) if m.contains("headers")
    ));
}
