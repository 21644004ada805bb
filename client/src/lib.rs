//! The Weir client: publish with a bounded window of unconfirmed messages, subscribe with
//! credit that flows back as you ack.
//!
//! Every queue in this crate is bounded, and each bound says what happens at it:
//!
//! | bound | default | at the bound |
//! |---|---|---|
//! | publish window ([`Publisher`]) | `min(1024, max_unconfirmed)` | [`Publisher::publish`] waits; [`Publisher::try_publish`] fails with [`ClientError::WindowFull`] |
//! | command queue to the connection task ([`ClientOptions::command_queue`]) | 1 024 | senders wait (`try_publish` fails with `WindowFull`); also where they wait while the client reconnects |
//! | messages kept for resending | the publish windows: each unanswered publish keeps its message (the payload is shared, not copied) | kept until the broker answers; resent on the new connection after a loss or an idle close (see [`Client`]) |
//! | reconnecting ([`ReconnectPolicy`]) | backoff 100 ms doubling to 5 s, full jitter; 60 s | the client closes with [`ClientError::ReconnectFailed`]; waiting operations fail |
//! | connection write buffer | 256 KiB + one frame | the task stops taking commands until the socket drains |
//! | subscription window ([`Subscription::window`]) | chosen per subscribe, ≤ `max_credit` | the broker stops delivering until the app acks (or nacks, terms, drops) |
//! | acks, nacks, terms and progress waiting to be sent | the window (each ends a distinct delivery; progress is kept once per delivery) | sent at once when `max(1, window/4)` deliveries are finished, otherwise within 5 ms; one frame per kind, 16 384 seqs at most per frame |
//! | a [`Delivery::term`] reason | 1 024 bytes | cut at a character boundary |
//! | gap notices waiting in a subscription's buffer | 2 | further ones merge into one range, yielded next ([`ClientError::MessagesDropped`]) |
//! | retries per budget window ([`RetryPolicy::budget_ratio`], with retry on) | `max(10, 10 % of publishes)` per 10 s | the refusal surfaces in the confirm |
//! | retries waiting or in flight ([`RetryPolicy::max_concurrent_retries`]) | 32 | the refusal surfaces in the confirm |
//! | retry tasks (with retry on) | one per publish awaiting its answer or its retry: about window + concurrent retries | follows the publish window and `max_concurrent_retries` |
//!
//! ```no_run
//! use futures::StreamExt;
//! use weir_client::{Client, TopicSpec};
//!
//! # async fn demo() -> Result<(), weir_client::ClientError> {
//! let client = Client::connect("127.0.0.1:7070").await?;
//! client.create_topic(TopicSpec { name: "orders".into(), ..Default::default() }).await?;
//!
//! let publisher = client.publisher();
//! let confirm = publisher.publish("orders", "hello").await?; // waits for a window slot
//! let seq = confirm.await?; // durable once this resolves
//!
//! let mut sub = client.subscribe("orders", "billing", 100).await?;
//! while let Some(delivery) = sub.next().await {
//!     let delivery = delivery?;
//!     println!("{} {:?}", delivery.seq(), delivery.payload());
//!     delivery.ack(); // returns credit: the broker may send one more
//! #   break;
//! }
//! # let _ = seq; Ok(()) }
//! ```
//!
//! # Layout
//!
//! Each module takes only from those below it in this list (no import cycles):
//!
//! - [`client`]: [`Client`] (connect, limits, connection state, admin requests).
//! - [`publisher`]: [`Publisher`] (publishing, with or without retries).
//! - [`subscription`]: [`Subscription`] (a `Stream` of [`Delivery`]) and how deliveries end:
//!   ack, nack (redeliver after a delay), term (dead-letter now), progress (still working).
//! - [`retry`]: [`RetryPolicy`] for [`Publisher::with_retry`] — full-jitter backoff on top of
//!   the broker's retry-after, a retry budget, a circuit breaker (off by default).
//! - `window` (private): a publisher's bounded window of unconfirmed publishes, which its
//!   retries send through too.
//! - [`confirm`]: [`PublishConfirm`], the future of one publish's outcome.
//! - `connection` (private): one task per client owns the socket — handshake, batched writes,
//!   routing of answers by id, subscription state, and reconnecting (one file each).
//! - [`options`]: the [`ClientOptions`].
//! - [`reconnect`]: [`ReconnectPolicy`] and [`ConnectionState`].
//! - [`addr`]: [`ToBrokerAddr`] — addresses, and the default port [`DEFAULT_PORT`].
//! - `message` (private): one publish's topic, headers and body, as the connection keeps it.
//! - `pacing` (private): the ack/nack/term/progress and credit batching rules of a
//!   subscription, as a pure struct, and the frames a batch becomes.
//! - [`error`]: [`ClientError`] and [`PublishError`].
//!
//! The `weir` command-line tool (crate `weir-cli`, in `cli/`) is built on this crate.

pub mod addr;
pub mod client;
pub mod confirm;
mod connection;
pub mod error;
mod message;
pub mod options;
mod pacing;
pub mod publisher;
pub mod reconnect;
pub mod retry;
pub mod subscription;
pub mod tls;
mod window;

pub use addr::{ToBrokerAddr, DEFAULT_PORT};
pub use client::Client;
pub use confirm::PublishConfirm;
pub use error::{ClientError, PublishError};
pub use options::ClientOptions;
pub use publisher::Publisher;
pub use reconnect::{ConnectionState, ReconnectPolicy};
pub use retry::{BreakerPolicy, BreakerState, RetryNotice, RetryPolicy};
pub use subscription::{Delivery, Subscription};
pub use tls::{ClientCert, TlsOptions};
pub use weir_protocol::{
    DroppedMessage, ErrorCode, FsyncPolicy, GoingAwayReason, GroupConfig, GroupInfo, GroupOrdering,
    GroupSpec, GroupUpdate, Headers, Limit, OverflowPolicy, RejectReason, ServerLimits,
    StartPosition, TopicConfig, TopicDescription, TopicHealth, TopicInfo, TopicRepaired, TopicSpec,
    TopicUpdate, KEY_HEADER, MAX_BATCH_MESSAGES, MIN_PROTOCOL_VERSION, PROTOCOL_VERSION,
};
