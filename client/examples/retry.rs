//! Publishing with retries: refusals that waiting can fix (a full topic, a rate limit, an
//! overloaded broker) are published again after the broker's retry-after plus a full-jitter
//! backoff, within a retry budget, behind a circuit breaker. Everything else surfaces at once.
//!
//! Start a broker, then: `cargo run -p weir-client --example retry [HOST:PORT]`.

use std::time::Duration;

use weir_client::{Client, ClientError, RetryPolicy};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:7070".to_owned());
    let client = Client::connect(&addr).await?;

    // Off by default; on for this publisher: up to 8 retries each, jitter ceilings up to 2 s.
    let publisher = client.publisher().with_retry(RetryPolicy {
        max_retries: 8,
        cap: Duration::from_secs(2),
        ..RetryPolicy::default()
    });
    for i in 0..10 {
        match publisher.publish("retry-demo", format!("event {i}")).await {
            Ok(confirm) => match confirm.await {
                Ok(seq) => println!("stored as seq {seq}"),
                // Not retryable, or past the attempts or the retry budget: the refusal surfaces.
                Err(refused) => println!("gave up: {refused}"),
            },
            // The broker kept refusing: nothing is sent until the breaker's cool-down ends.
            Err(ClientError::CircuitOpen { retry_after }) => {
                println!("circuit open; backing off for {retry_after:?}");
                tokio::time::sleep(retry_after).await;
            }
            Err(e) => return Err(e.into()),
        }
    }
    println!(
        "retries sent: {}, breaker: {:?}",
        publisher.retries(),
        publisher.breaker_state()
    );
    Ok(())
}
