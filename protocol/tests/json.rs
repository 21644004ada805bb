//! The one JSON schema of topics and groups (`weir_protocol::json`): field names, snake_case
//! enums and the `fsync` spelling, as documented in the module and the README.

use serde_json::{json, Value};
use weir_protocol::json::TopicView;
use weir_protocol::*;

fn info() -> TopicInfo {
    TopicInfo {
        config: TopicConfig {
            max_age_ms: None,
            name: "orders".into(),
            max_messages: 2,
            max_bytes: 1024,
            max_message_bytes: 512,
            overflow: OverflowPolicy::DropOldest,
            fsync: FsyncPolicy::IntervalMs(5),
            max_blocked_publishes: 8,
            max_block_ms: 100,
        },
        depth: 2,
        bytes: 24,
        next_seq: 7,
        groups: vec![GroupInfo {
            name: "billing".into(),
            in_flight: 1,
            config: GroupConfig {
                ordering: weir_protocol::GroupOrdering::Shared,
                ack_timeout_ms: 30_000,
                max_attempts: 5,
                dead_letter_topic: "orders.dlq".into(),
            },
            ..GroupInfo::default()
        }],
        groups_omitted: 0,
        dropped: 3,
        parked: 0,
        rejected: 1,
        drain_per_s: 0,
        refusing: Some(ActiveRefusal {
            reason: RejectReason::TopicFull,
            limit: Limit::new("max_messages", 2),
            retry_after_ms: Some(250),
            age_ms: 3,
            last_second: 1,
        }),
        health: TopicHealth::Damaged {
            at_seq: 4,
            reason: "crc".into(),
        },
    }
}

#[test]
fn a_topic_view_has_the_documented_shape_with_snake_case_enums() {
    let view: Value = serde_json::to_value(TopicView::from(info())).unwrap();
    assert_eq!(view["name"], "orders");
    assert_eq!(
        view["bounds"],
        json!({"max_messages": 2, "max_bytes": 1024, "max_message_bytes": 512,
               "max_blocked_publishes": 8, "max_block_ms": 100, "max_age_ms": null})
    );
    assert_eq!(view["overflow"], "drop_oldest");
    assert_eq!(view["fsync"], "interval:5");
    assert_eq!(view["refusing"]["reason"], "topic_full");
    assert_eq!(
        view["refusing"]["limit"],
        json!({"name": "max_messages", "value": 2})
    );
    assert_eq!(
        view["storage"],
        json!({"state": "damaged", "reason": "crc", "damaged_at": 4})
    );
    assert_eq!(
        view["groups"][0]["settings"]["dead_letter_topic"],
        "orders.dlq"
    );
    assert_eq!(view["groups"][0]["oldest_unacked_ms"], Value::Null);
    assert_eq!(view["groups"][0]["ephemeral"], false);
    assert!(view.get("recent_drops").is_none(), "only in a description");
    // It reads back: a script (or the CLI) can parse what the admin endpoint serves.
    let back: TopicView = serde_json::from_value(view).unwrap();
    assert_eq!(back, TopicView::from(info()));
}

#[test]
fn a_max_age_is_shown_in_milliseconds_and_read_back() {
    let mut aged = info();
    aged.config.max_age_ms = Some(600_000);
    let view: Value = serde_json::to_value(TopicView::from(aged.clone())).unwrap();
    assert_eq!(view["bounds"]["max_age_ms"], 600_000);
    let back: TopicView = serde_json::from_value(view).unwrap();
    assert_eq!(back, TopicView::from(aged));
    // A view from a broker that did not know max_age reads as no age bound.
    let mut older: Value = serde_json::to_value(TopicView::from(info())).unwrap();
    older["bounds"]
        .as_object_mut()
        .unwrap()
        .remove("max_age_ms");
    let back: TopicView = serde_json::from_value(older).unwrap();
    assert_eq!(back.bounds.max_age_ms, None);
}

#[test]
fn a_description_carries_its_drops_as_text_and_hex() {
    let description = TopicDescription {
        req: 1,
        info: info(),
        recent_drops: vec![DroppedMessage {
            seq: 1,
            bytes: 5,
            head: Some(bytes::Bytes::from_static(b"he\xffo")),
            reason: "overflow".into(),
            dropped_at_ms: 9,
        }],
    };
    let view: Value = serde_json::to_value(TopicView::from(description)).unwrap();
    let drop = &view["recent_drops"][0];
    assert_eq!(drop["head"], "he\u{fffd}o");
    assert_eq!(drop["head_hex"], "6865ff6f");
    assert_eq!(drop["reason"], "overflow");
}

#[test]
fn every_enum_is_snake_case_in_json() {
    let cases = [
        (
            serde_json::to_value(RejectReason::StorageFull).unwrap(),
            "storage_full",
        ),
        (
            serde_json::to_value(OverflowPolicy::Reject).unwrap(),
            "reject",
        ),
        (
            serde_json::to_value(ErrorCode::TopicExists).unwrap(),
            "topic_exists",
        ),
        (
            serde_json::to_value(StartPosition::Latest).unwrap(),
            "latest",
        ),
        (serde_json::to_value(FsyncPolicy::Batch).unwrap(), "batch"),
    ];
    for (got, want) in cases {
        assert_eq!(got, want);
    }
}
