//! Answers whose size grows with what the broker holds — topic listings, topic descriptions —
//! built to fit in one frame of `max_frame_bytes`, so a reply can never be too large to send.
//!
//! - `ListTopics` is answered in pages: as many topics (in name order, after `after`, at most
//!   `limit` when it is not 0) as fit, with `next` naming the last one when more follow.
//! - One topic whose description alone would not fit (thousands of groups under a small frame
//!   limit) is sent with its groups cut to what fits, `groups_omitted` saying how many were
//!   left out; a description's sample of recent drops is cut, oldest first, before its groups.

use weir_protocol::{encoded_len, DroppedMessage, TopicDescription, TopicInfo, TopicList};

/// Bytes of a frame kept for everything but the listed items: the length prefixes, the
/// variant, the request id, the list lengths and `next` (a topic name is at most 200 bytes).
const ENVELOPE: usize = 512;

/// The room a reply's items have in a frame of `max_frame_bytes`.
fn room(max_frame_bytes: usize) -> usize {
    max_frame_bytes.saturating_sub(ENVELOPE)
}

/// `info` with its groups cut (last first) until it takes at most `room` bytes, counting the
/// cut ones in `groups_omitted`.
fn fit_info(mut info: TopicInfo, room: usize) -> TopicInfo {
    while encoded_len(&info) > room && info.groups.pop().is_some() {
        info.groups_omitted += 1;
    }
    info
}

/// One page of `topics` (already in name order, starting after the requested name) answering
/// request `req`: at most `limit` of them (0: no limit) and at most what fits in a frame of
/// `max_frame_bytes`. Always holds at least one topic when there is one, cut to fit.
pub(crate) fn topic_page(
    req: u64,
    topics: impl Iterator<Item = TopicInfo>,
    limit: u32,
    max_frame_bytes: usize,
) -> TopicList {
    let room = room(max_frame_bytes);
    let limit = if limit == 0 {
        usize::MAX
    } else {
        limit as usize
    };
    let (mut page, mut used, mut more) = (Vec::new(), 0, false);
    for info in topics {
        let info = fit_info(info, room);
        let len = encoded_len(&info);
        if page.len() == limit || (!page.is_empty() && used + len > room) {
            // It goes first on the next page.
            more = true;
            break;
        }
        used += len;
        page.push(info);
    }
    let next = more
        .then(|| page.last().map(|t| t.config.name.clone()))
        .flatten();
    TopicList {
        req,
        topics: page,
        next,
    }
}

/// A topic's description answering request `req`, cut to fit in a frame of `max_frame_bytes`:
/// the oldest recent drops go first, then groups.
pub(crate) fn description(
    req: u64,
    info: TopicInfo,
    mut recent_drops: Vec<DroppedMessage>,
    max_frame_bytes: usize,
) -> TopicDescription {
    let room = room(max_frame_bytes);
    let info = fit_info(info, room);
    let left = room.saturating_sub(encoded_len(&info));
    let mut drops_len = encoded_len(&recent_drops);
    let mut cut = 0;
    while drops_len > left && cut < recent_drops.len() {
        drops_len -= encoded_len(&recent_drops[cut]);
        cut += 1;
    }
    recent_drops.drain(..cut);
    TopicDescription {
        req,
        info,
        recent_drops,
    }
}

#[cfg(test)]
mod tests {
    use weir_protocol::{Frame, GroupConfig, GroupInfo, OverflowPolicy, TopicConfig, WeirCodec};

    use super::*;

    fn info(name: &str, groups: usize) -> TopicInfo {
        let config = TopicConfig {
            max_age_ms: None,
            name: name.into(),
            max_messages: 10,
            max_bytes: 10,
            max_message_bytes: 10,
            overflow: OverflowPolicy::Reject,
            fsync: weir_protocol::FsyncPolicy::Batch,
            max_blocked_publishes: 1,
            max_block_ms: 1,
        };
        let group = |i: usize| GroupInfo {
            name: format!("{}-{i}", "g".repeat(190)),
            in_flight: 0,
            pending: 0,
            members: 0,
            credit: 0,
            config: GroupConfig {
                ordering: weir_protocol::GroupOrdering::Shared,
                ack_timeout_ms: 1,
                max_attempts: 1,
                dead_letter_topic: "d".repeat(200),
            },
            timed_out: 0,
            dead_lettered: 0,
            dead_letter_held: 0,
            oldest_unacked_ms: None,
            ephemeral: false,
        };
        TopicInfo {
            config,
            depth: 0,
            bytes: 0,
            next_seq: 1,
            groups: (0..groups).map(group).collect(),
            groups_omitted: 0,
            dropped: 0,
            parked: 0,
            rejected: 0,
            drain_per_s: 0,
            refusing: None,
            health: Default::default(),
        }
    }

    fn encodes_within(frame: Frame, max: usize) -> bool {
        let mut buf = bytes::BytesMut::new();
        WeirCodec::new(max).encode_frame(&frame, &mut buf).is_ok()
    }

    #[test]
    fn pages_fit_the_frame_and_chain_through_every_topic() {
        let max = 16 * 1024;
        let all: Vec<TopicInfo> = (0..40).map(|i| info(&format!("t{i:02}"), 10)).collect();
        let (mut seen, mut after) = (Vec::new(), None::<String>);
        let mut pages = 0;
        loop {
            let rest = all
                .iter()
                .filter(|t| after.as_ref().is_none_or(|a| t.config.name > *a))
                .cloned();
            let page = topic_page(7, rest, 0, max);
            pages += 1;
            assert!(!page.topics.is_empty());
            seen.extend(page.topics.iter().map(|t| t.config.name.clone()));
            let next = page.next.clone();
            assert!(encodes_within(Frame::TopicList(page), max));
            match next {
                Some(n) => after = Some(n),
                None => break,
            }
        }
        assert!(pages > 1, "40 topics of 10 groups fit one 16 KiB frame?");
        let names: Vec<String> = all.iter().map(|t| t.config.name.clone()).collect();
        assert_eq!(seen, names);
    }

    #[test]
    fn a_limit_cuts_the_page_and_names_the_next() {
        let all = (0..5).map(|i| info(&format!("t{i}"), 0));
        let page = topic_page(1, all, 2, 1 << 20);
        assert_eq!(page.topics.len(), 2);
        assert_eq!(page.next.as_deref(), Some("t1"));
        let page = topic_page(1, (0..2).map(|i| info(&format!("t{i}"), 0)), 2, 1 << 20);
        assert_eq!(page.next, None, "nothing follows");
    }

    #[test]
    fn a_topic_too_large_for_a_frame_loses_groups_and_says_how_many() {
        let max = 8 * 1024;
        let page = topic_page(1, std::iter::once(info("big", 200)), 0, max);
        let t = &page.topics[0];
        assert!(t.groups_omitted > 0);
        assert_eq!(t.groups.len() + t.groups_omitted as usize, 200);
        assert!(encodes_within(Frame::TopicList(page), max));
        let drops = (0..100)
            .map(|seq| DroppedMessage {
                seq,
                bytes: 64,
                head: Some(bytes::Bytes::from(vec![1u8; 64])),
                reason: "overflow".into(),
                dropped_at_ms: 1,
            })
            .collect();
        let d = description(2, info("big", 5), drops, 4 * 1024);
        assert!(d.recent_drops.len() < 100);
        assert_eq!(
            d.recent_drops.last().map(|d| d.seq),
            Some(99),
            "newest kept"
        );
        assert!(encodes_within(
            Frame::TopicDescription(Box::new(d)),
            4 * 1024
        ));
    }
}
