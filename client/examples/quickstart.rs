//! Quickstart: create a topic, publish three messages and await their confirms, then subscribe,
//! print and ack them.
//!
//! Start a broker, then: `cargo run -p weir-client --example quickstart [HOST:PORT]`.

use futures::StreamExt;
use weir_client::{Client, TopicSpec};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:7070".to_owned());
    let client = Client::connect(&addr).await?;

    // Every topic is bounded; bounds left unset take the broker's defaults.
    let config = client
        .create_topic(TopicSpec {
            name: "quickstart".into(),
            max_messages: Some(10_000),
            ..Default::default()
        })
        .await?;
    println!(
        "topic {} holds at most {} messages",
        config.name, config.max_messages
    );

    // publish() waits for a slot in the publish window and returns a confirm to await.
    let publisher = client.publisher();
    let mut confirms = Vec::new();
    for text in ["one", "two", "three"] {
        confirms.push(publisher.publish("quickstart", text).await?);
    }
    for confirm in confirms {
        // Resolves once the message is durable, or with the reason it was refused.
        println!("stored as seq {}", confirm.await?);
    }

    // At most 10 messages are outstanding towards this subscription; acks return the credit.
    let mut subscription = client
        .subscribe("quickstart", "quickstart-readers", 10)
        .await?;
    for _ in 0..3 {
        let Some(delivery) = subscription.next().await else {
            break;
        };
        let delivery = delivery?;
        println!(
            "got seq {}: {}",
            delivery.seq(),
            String::from_utf8_lossy(delivery.payload())
        );
        delivery.ack();
    }
    subscription.close().await?;
    Ok(())
}
