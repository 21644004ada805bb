//! Reconnecting: a client keeps publishing and receiving across a restart of a real broker
//! process on the same port and data directory — after `SIGTERM` (graceful: `GoingAway`) and
//! after `SIGKILL` (the socket just ends) — gives up after its bound with an error naming the
//! address, and with reconnecting off fails at once. And the admin port given by mistake is
//! named as such.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use tokio::sync::{mpsc, watch};
use weir_client::{
    Client, ClientError, ClientOptions, GoingAwayReason, GroupSpec, PublishError, ReconnectPolicy,
    StartPosition, Subscription, TopicSpec,
};
use weir_tests::{BrokerProcess, TestBroker};

/// The publish window of the publishing tests.
const WINDOW: usize = 16;

/// How long a step of these tests (a restart, the last deliveries) may take.
const STEP: Duration = Duration::from_secs(60);

/// Reconnecting with short backoffs (the broker restarts within a second or two here).
fn reconnecting() -> ClientOptions {
    ClientOptions {
        reconnect: ReconnectPolicy {
            initial_backoff: Duration::from_millis(20),
            max_backoff: Duration::from_millis(500),
            ..ReconnectPolicy::default()
        },
        ..ClientOptions::default()
    }
}

/// Stops `broker` with `signal` (`SIGTERM`: waits for its clean exit; `SIGKILL`) and starts a
/// new one on the same port and data directory.
fn restart(broker: BrokerProcess, dir: &Path, signal: i32) -> BrokerProcess {
    let addr = broker.addr;
    if signal == libc::SIGKILL {
        broker.kill9();
    } else {
        broker.signal(signal);
        let (status, _) = broker.wait(STEP);
        assert!(status.success(), "the broker exits cleanly on SIGTERM");
    }
    BrokerProcess::start_at(addr, dir, &[])
}

async fn create(client: &Client, topic: &str) {
    let spec = TopicSpec {
        name: topic.into(),
        ..Default::default()
    };
    client.create_topic(spec).await.unwrap();
}

/// The next item of `sub`, within [`STEP`]; the stream must not end.
async fn next_item(sub: &mut Subscription) -> Result<weir_client::Delivery, ClientError> {
    tokio::time::timeout(STEP, sub.next())
        .await
        .expect("an item within the step timeout")
        .expect("the stream does not end")
}

/// A publisher publishes without pause while the broker restarts: every publish is confirmed,
/// and every message is stored exactly once (read back by a group from the start): a resent
/// publish whose confirm the restart lost carries its producer stamp again, and the topic's
/// dedup window, rebuilt from the log at start, answers it with the first sequence.
async fn a_publisher_keeps_publishing_across_a_restart(signal: i32) {
    let dir = tempfile::tempdir().unwrap();
    let broker = BrokerProcess::start(dir.path(), &[]);
    let client = Client::connect_with(broker.addr, reconnecting())
        .await
        .unwrap();
    create(&client, "orders").await;

    let publisher = client.publisher_with_window(WINDOW);
    let stop = Arc::new(AtomicBool::new(false));
    let (confirms_tx, mut confirms_rx) = mpsc::channel(WINDOW);
    let publishing = tokio::spawn({
        let stop = stop.clone();
        async move {
            let mut n = 0usize;
            while !stop.load(Ordering::Relaxed) {
                let confirm = publisher.publish("orders", format!("m{n}")).await.unwrap();
                confirms_tx.send((n, confirm)).await.unwrap();
                n += 1;
            }
            n
        }
    });
    let (confirmed_tx, mut confirmed) = watch::channel(0usize);
    let collecting = tokio::spawn(async move {
        let mut outcomes: Vec<Result<u64, PublishError>> = Vec::new();
        while let Some((n, confirm)) = confirms_rx.recv().await {
            assert_eq!(n, outcomes.len(), "confirms come in publish order");
            outcomes.push(confirm.await);
            confirmed_tx.send_replace(outcomes.len());
        }
        outcomes
    });

    let before = 200;
    tokio::time::timeout(STEP, confirmed.wait_for(|n| *n >= before))
        .await
        .expect("confirms before the restart")
        .unwrap();
    let broker = restart(broker, dir.path(), signal);
    let at_restart = *confirmed.borrow();
    tokio::time::timeout(STEP, confirmed.wait_for(|n| *n >= at_restart + 200))
        .await
        .expect("confirms after the restart")
        .unwrap();
    stop.store(true, Ordering::Relaxed);
    let published = publishing.await.unwrap();
    let outcomes = collecting.await.unwrap();
    assert_eq!(outcomes.len(), published);
    let failed: Vec<_> = outcomes.iter().filter(|o| o.is_err()).collect();
    assert!(failed.is_empty(), "every publish is confirmed: {failed:?}");
    assert!(client.reconnects() >= 1, "the client reconnected");

    // Stored now: no group has acked anything yet. (Not `next_seq - 1`: a broker recovering
    // from SIGKILL may skip sequence numbers.)
    let stored = client.describe_topic("orders").await.unwrap().info.depth;
    assert_eq!(stored as usize, published, "stored once each");
    let spec = GroupSpec {
        start: StartPosition::Earliest,
        ..GroupSpec::default()
    };
    let mut sub = client
        .subscribe_with("orders", "check", 256, spec)
        .await
        .unwrap();
    let mut seen: HashMap<String, usize> = HashMap::new();
    for _ in 0..stored {
        let d = next_item(&mut sub).await.unwrap();
        let payload = String::from_utf8(d.payload().to_vec()).unwrap();
        *seen.entry(payload).or_default() += 1;
        d.ack();
    }
    let expected: HashSet<String> = (0..published).map(|n| format!("m{n}")).collect();
    let got: HashSet<String> = seen.keys().cloned().collect();
    assert_eq!(got, expected, "every confirmed message is stored");
    let twice: Vec<_> = seen.iter().filter(|(_, c)| **c > 1).collect();
    assert!(twice.is_empty(), "stored more than once: {twice:?}");
    drop(broker);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publisher_keeps_publishing_across_a_sigterm_restart() {
    a_publisher_keeps_publishing_across_a_restart(libc::SIGTERM).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publisher_keeps_publishing_across_a_sigkill_restart() {
    a_publisher_keeps_publishing_across_a_restart(libc::SIGKILL).await;
}

/// A subscription receives what is published before and after the broker restarts, and its
/// stream does not end in between.
async fn a_subscription_keeps_receiving_across_a_restart(signal: i32) {
    let dir = tempfile::tempdir().unwrap();
    let broker = BrokerProcess::start(dir.path(), &[]);
    let publishing = Client::connect_with(broker.addr, reconnecting())
        .await
        .unwrap();
    create(&publishing, "orders").await;
    let consuming = Client::connect_with(broker.addr, reconnecting())
        .await
        .unwrap();
    let mut sub = consuming.subscribe("orders", "billing", 8).await.unwrap();
    let publisher = publishing.publisher();
    for n in 0..20 {
        publisher
            .publish_and_wait("orders", format!("before{n}"))
            .await
            .unwrap();
    }
    let mut before = HashSet::new();
    while before.len() < 20 {
        let d = next_item(&mut sub).await.unwrap();
        before.insert(d.payload().clone());
        d.ack();
    }

    let broker = restart(broker, dir.path(), signal);
    for n in 0..20 {
        publisher
            .publish_and_wait("orders", format!("after{n}"))
            .await
            .unwrap();
    }
    let mut after = HashSet::new();
    while after.len() < 20 {
        let d = next_item(&mut sub).await.expect("no error item");
        let payload = String::from_utf8(d.payload().to_vec()).unwrap();
        // A message of before the restart whose ack the restart lost comes again.
        if payload.starts_with("after") {
            after.insert(payload);
        }
        d.ack();
    }
    assert!(consuming.reconnects() >= 1, "the subscriber reconnected");
    assert!(consuming.closed_reason().is_none());
    drop(broker);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscription_keeps_receiving_across_a_sigterm_restart() {
    a_subscription_keeps_receiving_across_a_restart(libc::SIGTERM).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscription_keeps_receiving_across_a_sigkill_restart() {
    a_subscription_keeps_receiving_across_a_restart(libc::SIGKILL).await;
}

/// A broker that does not come back: reconnecting gives up after its bound, the stream ends
/// with an error naming the address and how long it tried, and the client is closed with it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconnecting_gives_up_after_its_bound_with_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let broker = BrokerProcess::start(dir.path(), &[]);
    let addr = broker.addr;
    let options = ClientOptions {
        reconnect: ReconnectPolicy {
            max_elapsed: Duration::from_secs(1),
            ..reconnecting().reconnect
        },
        ..ClientOptions::default()
    };
    let client = Client::connect_with(addr, options).await.unwrap();
    create(&client, "orders").await;
    let mut sub = client.subscribe("orders", "billing", 8).await.unwrap();
    broker.kill9();

    let end = tokio::time::timeout(STEP, sub.next())
        .await
        .expect("the stream ends within the step timeout")
        .expect("an error before the end");
    match end {
        Err(ClientError::ReconnectFailed {
            addr: a, elapsed, ..
        }) => {
            assert_eq!(a, addr.to_string());
            assert!(elapsed >= Duration::from_secs(1), "{elapsed:?}");
        }
        other => panic!("expected ReconnectFailed, got {other:?}"),
    }
    assert!(sub.next().await.is_none());
    assert!(client.is_closed());
    let err = client.list_topics().await.unwrap_err();
    assert!(
        err.to_string()
            .starts_with(&format!("gave up reconnecting to {addr} after")),
        "{err}"
    );
}

/// With reconnecting off, a `SIGTERM` ends the subscription and the client at once with the
/// broker's `GoingAway`, and a broker back on the same port is not reconnected to.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_reconnecting_off_a_restart_fails_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let broker = BrokerProcess::start(dir.path(), &[]);
    let options = ClientOptions {
        reconnect: ReconnectPolicy::disabled(),
        ..ClientOptions::default()
    };
    let client = Client::connect_with(broker.addr, options).await.unwrap();
    create(&client, "orders").await;
    let mut sub = client.subscribe("orders", "billing", 8).await.unwrap();
    let broker = restart(broker, dir.path(), libc::SIGTERM);
    let shutting_down = |e: &ClientError| {
        matches!(
            e,
            ClientError::GoingAway {
                reason: GoingAwayReason::ShuttingDown,
                ..
            }
        )
    };
    match tokio::time::timeout(STEP, sub.next()).await.unwrap() {
        Some(Err(e)) => assert!(shutting_down(&e), "{e}"),
        other => panic!("expected GoingAway, got {other:?}"),
    }
    assert!(sub.next().await.is_none());
    let err = client.list_topics().await.unwrap_err();
    assert!(shutting_down(&err), "{err}");
    assert_eq!(client.reconnects(), 0);
    drop(broker);
}

/// The broker's admin port given instead of its wire port: the connect fails saying so.
#[tokio::test]
async fn the_admin_port_is_named_as_such() {
    let broker = TestBroker::start().await;
    let err = Client::connect(broker.admin_addr).await.unwrap_err();
    assert!(matches!(err, ClientError::HttpPeer { .. }), "{err:?}");
    assert_eq!(
        err.to_string(),
        format!(
            "{} answered with HTTP — is that the admin port? The wire port is 7070 by default",
            broker.admin_addr
        )
    );
}
