//! Acked means durable: confirmed publishes survive `SIGKILL` of a real broker process, and a
//! `SIGTERM` shuts down gracefully without losing anything confirmed.

use std::collections::HashMap;
use std::time::Duration;

use bytes::Bytes;
use futures::SinkExt;
use weir_protocol::{Frame, Publish, RejectReason};
use weir_tests::{BrokerProcess, RawClient};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_confirmed_publish_survives_sigkill() {
    let dir = tempfile::tempdir().unwrap();
    let broker = BrokerProcess::start(dir.path(), &[]);
    let mut client = RawClient::connect(broker.addr).await;
    let mut confirmed = Vec::new();
    for chunk in 0..20 {
        let payloads: Vec<Bytes> = (0..500)
            .map(|i| Bytes::from(format!("msg-{}", chunk * 500 + i)))
            .collect();
        let seqs = client.publish_all("durable", payloads.clone()).await;
        confirmed.extend(seqs.into_iter().zip(payloads));
    }
    assert_eq!(confirmed.len(), 10_000);
    broker.kill9();

    let broker = BrokerProcess::start(dir.path(), &[]);
    let mut consumer = RawClient::connect(broker.addr).await;
    let got: HashMap<u64, Bytes> = consumer
        .consume(1, "durable", "g", 10_000)
        .await
        .into_iter()
        .map(|d| (d.seq, d.payload))
        .collect();
    for (seq, payload) in &confirmed {
        assert_eq!(
            got.get(seq),
            Some(payload),
            "confirmed message {seq} lost or changed"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_while_publishing_keeps_every_confirmed_publish_and_exits_0() {
    let dir = tempfile::tempdir().unwrap();
    let broker = BrokerProcess::start(dir.path(), &[]);
    let mut client = RawClient::connect(broker.addr).await;

    // Publish in pipelined rounds until the broker goes away; record what it confirmed.
    let (signal_tx, signal_rx) = tokio::sync::oneshot::channel();
    let publisher = tokio::spawn(async move {
        let mut signal_tx = Some(signal_tx);
        let mut sent: HashMap<u64, Bytes> = HashMap::new();
        let mut confirmed: Vec<(u64, Bytes)> = Vec::new();
        let mut going_away = false;
        let mut id = 0u64;
        'rounds: loop {
            let mut outstanding = 0;
            for _ in 0..100 {
                id += 1;
                let payload = Bytes::from(format!("p-{id}"));
                sent.insert(id, payload.clone());
                let frame = Frame::Publish(Publish {
                    producer: None,
                    id,
                    topic: "graceful".into(),
                    payload,
                    headers: Vec::new(),
                });
                if client_feed(&mut client, frame).await.is_err() {
                    break 'rounds;
                }
                outstanding += 1;
            }
            while outstanding > 0 {
                match client.recv_or_closed().await {
                    Some(Frame::PublishOk(ok)) => {
                        assert!(!going_away, "PublishOk {} after GoingAway", ok.id);
                        confirmed.push((ok.seq, sent[&ok.id].clone()));
                        outstanding -= 1;
                    }
                    Some(Frame::GoingAway(_)) => going_away = true,
                    // A publish read as the stop began is refused, and told so.
                    Some(Frame::Rejected(r)) if r.reason == RejectReason::ShuttingDown => {
                        outstanding -= 1;
                    }
                    Some(other) => panic!("unexpected {other:?}"),
                    None => break 'rounds,
                }
            }
            if confirmed.len() >= 2000 {
                if let Some(tx) = signal_tx.take() {
                    let _ = tx.send(());
                }
            }
        }
        (confirmed, going_away)
    });
    signal_rx.await.expect("publisher reached 2000 confirms");
    broker.signal(libc::SIGTERM);
    let (confirmed, going_away) = tokio::time::timeout(Duration::from_secs(30), publisher)
        .await
        .unwrap()
        .unwrap();
    let (status, log) = tokio::task::spawn_blocking(move || broker.wait(Duration::from_secs(30)))
        .await
        .unwrap();
    assert!(
        status.success(),
        "broker exited with {status}; log:\n{}",
        log.join("\n")
    );
    assert!(going_away, "the client was not told GoingAway");
    assert!(confirmed.len() >= 2000);

    let broker = BrokerProcess::start(dir.path(), &[]);
    let mut consumer = RawClient::connect(broker.addr).await;
    let depth = consumer.list().await[0].depth as usize;
    // Every committed publish was confirmed before GoingAway: nothing stored went unanswered.
    assert_eq!(
        depth,
        confirmed.len(),
        "stored {depth}, confirmed {}",
        confirmed.len()
    );
    let got: HashMap<u64, Bytes> = consumer
        .consume(1, "graceful", "g", depth)
        .await
        .into_iter()
        .map(|d| (d.seq, d.payload))
        .collect();
    for (seq, payload) in &confirmed {
        assert_eq!(got.get(seq), Some(payload), "confirmed message {seq} lost");
    }
}

async fn client_feed(client: &mut RawClient, frame: Frame) -> Result<(), ()> {
    client.framed_mut().send(frame).await.map_err(|_| ())
}
