//! The dead-letter mover: one broker task that moves messages due for a dead-letter topic
//! (a group's `max_attempts` used up, or `Term`) from their source topic to it.
//!
//! For each message: read it from the source log, append it to the dead-letter topic (created on
//! first use as `<topic>.dlq` with the source's bounds and the `reject` policy) with its origin
//! as headers (`weir-origin-topic`, `weir-origin-seq`, `weir-origin-group`, `weir-attempts`,
//! `weir-reason`), wait until that append is durable, and only then take it out of its group —
//! and persist the group's state before the next batch. A crash in between leaves the message
//! due on its source, so it is never lost — and not moved twice: when the broker starts, the
//! mover first looks for the due messages' origin headers among the last
//! `groups.dead_letter_batch` messages of their dead-letter topics (at most one batch can have
//! been appended but not yet recorded) and records those as moved.
//!
//! At its bound: a dead-letter topic that refuses (full) leaves the message in flight on its
//! source — holding its group slot, counted in `dead_letter_refused` and shown as
//! `dead_letter_held` — and the mover retries every [`RETRY`]; nothing is dropped.

pub(crate) mod origin;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use weir_protocol::{Headers, OverflowPolicy, TopicConfig, TopicSpec, MSG_ID_HEADER};

use crate::broker::{Broker, CreateError};
use crate::topic::{Admitted, AppendError, Confirm, DeadLetterJob, Topic};
use origin::{origin_of, ORIGIN_HEADERS, ORIGIN_MSG_ID_HEADER};

/// How long the mover waits before retrying a dead-letter topic that refused.
const RETRY: Duration = Duration::from_secs(1);

/// Moves dead letters until the broker stops.
pub(crate) async fn run(broker: Broker) {
    let batch = broker.config().groups.dead_letter_batch as usize;
    let wake = broker.env().dead_letters.clone();
    let stop = broker.env().stop.clone();
    for topic in broker.topics() {
        reconcile(&broker, &topic, batch).await;
    }
    let mut retry_soon = true;
    loop {
        let retry = async {
            if retry_soon {
                tokio::time::sleep(RETRY).await;
            } else {
                std::future::pending::<()>().await;
            }
        };
        tokio::select! {
            () = wake.notified() => {}
            () = retry => {}
            () = stop.cancelled() => return,
        }
        retry_soon = false;
        for topic in broker.topics() {
            retry_soon |= move_batch(&broker, &topic, batch).await;
        }
    }
}

/// Records as moved the due messages of `topic` whose copy is already among the last `batch`
/// messages of their dead-letter topic (appended just before a crash).
async fn reconcile(broker: &Broker, topic: &Arc<Topic>, batch: usize) {
    let jobs = topic.dead_letter_jobs(usize::MAX);
    let mut dlqs: Vec<&str> = jobs.iter().map(|j| j.dead_letter_topic.as_str()).collect();
    dlqs.sort_unstable();
    dlqs.dedup();
    let mut found = HashSet::new();
    for name in dlqs {
        let Some(dlq) = broker.topic(name) else {
            continue;
        };
        match dlq.read_last(batch).await {
            Ok(records) => found.extend(records.iter().filter_map(|r| origin_of(&r.headers))),
            Err(e) => {
                tracing::warn!(dead_letter_topic = name, error = %e, "cannot read back a dead-letter topic")
            }
        }
    }
    let source = topic.name();
    let mut moved = 0;
    for job in &jobs {
        let origin = (source.to_string(), job.group.clone(), job.letter.seq);
        if found.contains(&origin) {
            topic.dead_lettered(&job.group, job.letter.seq);
            moved += 1;
        }
    }
    if moved > 0 {
        tracing::info!(topic = %source, moved, "dead letters appended before a crash recorded as moved");
        persist(broker, topic).await;
    }
}

/// Moves up to `batch` due messages of `topic`: appends them all to their dead-letter topics
/// (stopping at the first refusal), then waits for those appends — so one batch costs about
/// one group commit, not one per message — and records the durable ones as moved. Returns
/// whether some had to stay (refused or failed), so the mover should come back.
async fn move_batch(broker: &Broker, topic: &Arc<Topic>, batch: usize) -> bool {
    let jobs = topic.dead_letter_jobs(batch);
    if jobs.is_empty() {
        return false;
    }
    let mut held = false;
    let mut appended = Vec::with_capacity(jobs.len());
    for job in &jobs {
        match start_move(broker, topic, job).await {
            Ok(confirm) => appended.push((job, confirm)),
            Err(why) => {
                held = true;
                refused(broker, topic, job, &why);
                break;
            }
        }
    }
    let mut moved = 0;
    for (job, confirm) in appended {
        match confirmed(confirm).await {
            Ok(()) => {
                topic.dead_lettered(&job.group, job.letter.seq);
                moved += 1;
            }
            Err(why) => {
                held = true;
                refused(broker, topic, job, &why);
            }
        }
    }
    if moved > 0 {
        persist(broker, topic).await;
    }
    held || jobs.len() == batch
}

/// Counts and logs a due message its dead-letter topic did not take: it stays in flight.
fn refused(broker: &Broker, topic: &Topic, job: &DeadLetterJob, why: &str) {
    broker.metrics().dead_letter_refused.add(1);
    tracing::warn!(
        topic = %topic.name(), group = %job.group, seq = job.letter.seq,
        dead_letter_topic = %job.dead_letter_topic, why = %why,
        "message kept in flight: its dead-letter topic refused it (retrying)"
    );
}

/// Appends one due message to its dead-letter topic (not yet durable). `None` when there is
/// nothing to append: the message was evicted (`drop_oldest`) while it waited.
async fn start_move(
    broker: &Broker,
    topic: &Arc<Topic>,
    job: &DeadLetterJob,
) -> Result<Option<Confirm>, String> {
    let Some(record) = topic
        .read_stored(job.letter.seq)
        .await
        .map_err(|e| e.to_string())?
    else {
        return Ok(None);
    };
    let source = topic.config();
    let dlq = dead_letter_topic(broker, &source, &job.dead_letter_topic)
        .await
        .map_err(|e| e.to_string())?;
    let (headers, slack) = origin_headers(record.headers, &source, job);
    let message = crate::storage::log::Message {
        producer: None,
        headers,
        payload: record.payload,
    };
    // Draining work: counted in the memory budget, never refused by it.
    let permit = broker.admission().inbound().charge(message.memory_bytes());
    match dlq.publish(message, permit, slack).await {
        // A duplicate cannot happen: copies carry no id the window knows (see
        // `origin_headers`); were one to match, its original is in the dead-letter topic.
        Ok(
            Admitted::Queued(confirm) | Admitted::Parked(confirm) | Admitted::Duplicate(confirm),
        ) => Ok(Some(confirm)),
        Err(e) => Err(why(e)),
    }
}

/// Waits until an append started by [`start_move`] is durable (or the `block` policy decided).
async fn confirmed(confirm: Option<Confirm>) -> Result<(), String> {
    let Some(confirm) = confirm else {
        return Ok(());
    };
    match confirm.await {
        Ok(Ok(_seq)) => Ok(()),
        Ok(Err(e)) => Err(why(e)),
        Err(_) => Err("dead-letter topic stopped".into()),
    }
}

/// Why an append to a dead-letter topic failed, for the log.
fn why(e: AppendError) -> String {
    match e {
        AppendError::Refused(r) => format!("{:?} ({})", r.reason, r.limit.name),
        AppendError::Storage(e) => e,
        e @ AppendError::StorageFailed(_) => e.to_string(),
    }
}

/// The message's own headers (less any origin headers of an earlier death) followed by where it
/// came from and why it died, and the bytes those origin headers add (not counted against the
/// dead-letter topic's `max_message_bytes`).
fn origin_headers(
    mut headers: Headers,
    source: &TopicConfig,
    job: &DeadLetterJob,
) -> (Headers, u64) {
    headers.retain(|(name, _)| !ORIGIN_HEADERS.contains(&name.as_str()));
    // The message's id belongs to its own topic's dedup window: the first (the one that
    // counts) is renamed and any later ones dropped, so the dead-letter topic's window never
    // takes two topics' messages for one.
    let mut renamed = 0;
    headers.retain_mut(|(name, _)| {
        if name != MSG_ID_HEADER {
            return true;
        }
        let first = renamed == 0;
        if first {
            *name = ORIGIN_MSG_ID_HEADER.to_owned();
            renamed = ORIGIN_MSG_ID_HEADER.len() - MSG_ID_HEADER.len();
        }
        first
    });
    let origin = [
        source.name.clone(),
        job.letter.seq.to_string(),
        job.group.clone(),
        job.letter.attempt.to_string(),
        job.letter.reason.clone(),
    ];
    let added: usize = ORIGIN_HEADERS
        .iter()
        .zip(&origin)
        .map(|(n, v)| n.len() + v.len())
        .sum::<usize>()
        + renamed;
    headers.extend(
        ORIGIN_HEADERS
            .iter()
            .zip(origin)
            .map(|(n, v)| ((*n).to_string(), v)),
    );
    (headers, added as u64)
}

/// The dead-letter topic `name`, created on first use with the source's bounds and `reject`
/// (an existing topic of that name is used as it is).
async fn dead_letter_topic(
    broker: &Broker,
    source: &TopicConfig,
    name: &str,
) -> Result<Arc<Topic>, CreateError> {
    if let Some(topic) = broker.topic(name) {
        return Ok(topic);
    }
    let spec = TopicSpec {
        name: name.to_string(),
        max_messages: Some(source.max_messages),
        max_bytes: Some(source.max_bytes),
        max_message_bytes: Some(source.max_message_bytes),
        overflow: Some(OverflowPolicy::Reject),
        fsync: Some(source.fsync),
        ..TopicSpec::default()
    };
    match broker.create_topic(spec).await {
        Ok((topic, _)) => Ok(topic),
        Err(CreateError::Exists(_)) => broker
            .topic(name)
            .ok_or_else(|| CreateError::Unknown(name.to_string())),
        Err(e) => Err(e),
    }
}

/// Makes the source groups' state durable, so moved messages are not moved again after a
/// crash.
async fn persist(broker: &Broker, topic: &Arc<Topic>) {
    let topic = topic.clone();
    let store = broker.env().store.clone();
    let saved = tokio::task::spawn_blocking(move || -> Result<(), String> {
        topic.save_dirty_groups().map_err(|e| e.to_string())?;
        store.flush().map_err(|e| e.to_string())
    })
    .await;
    if let Err(e) = saved.map_err(|e| e.to_string()).and_then(|r| r) {
        tracing::error!(error = %e, "persisting group state after dead-lettering failed");
    }
}
