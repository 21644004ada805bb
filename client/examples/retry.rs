//! Publishing with retries: refusals that waiting can fix (a full topic, a rate limit, an
//! overloaded broker) are retried with full-jitter backoff, never before the broker's hint,
//! within a retry budget, behind a circuit breaker.
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
    let policy = RetryPolicy {
        max_retries: 8,
        cap: Duration::from_secs(2),
        ..RetryPolicy::default()
    };
    let publisher = client.publisher().with_retry(policy);
    for i in 0..10 {
        match publisher.publish("retry-demo", format!("event {i}")).await {
            Ok(confirm) => match confirm.await {
                Ok(seq) => println!("stored as seq {seq}"),
                // Past the retry budget or the attempts, the broker's refusal surfaces.
                Err(refused) => println!("gave up: {refused}"),
            },
            // The breaker is open: the broker kept refusing; back off before publishing again.
            Err(ClientError::CircuitOpen { retry_after }) => {
                println!("circuit open, retry in {retry_after:?}")
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
