//! What a client asks for that admission may refuse ([`Work`]): the label refusals and
//! metrics are counted under. Its own module so the counters can name it without depending on
//! admission.

/// Work a client asks for that admission may refuse, for counting and logging refusals under
/// the work refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Work {
    /// A publish.
    Publish,
    /// A subscribe (an expensive operation: `ops_per_s`).
    Subscribe,
    /// A topic create, explicit or by a publish or subscribe to a new topic (`ops_per_s`).
    CreateTopic,
    /// A topic delete (`ops_per_s`).
    DeleteTopic,
    /// A group delete (`ops_per_s`).
    DeleteGroup,
    /// A new connection (`max_connections`, `max_auth_failures_per_s`).
    Connect,
}

impl Work {
    /// Every expensive operation, in the order of the metrics' `op` label.
    pub const OPS: [Work; 4] = [
        Work::Subscribe,
        Work::CreateTopic,
        Work::DeleteTopic,
        Work::DeleteGroup,
    ];

    /// The snake_case label (the `op` label of `weir_operations_rejected_total`).
    pub fn label(self) -> &'static str {
        match self {
            Work::Publish => "publish",
            Work::Subscribe => "subscribe",
            Work::CreateTopic => "create_topic",
            Work::DeleteTopic => "delete_topic",
            Work::DeleteGroup => "delete_group",
            Work::Connect => "connect",
        }
    }

    /// The plural noun for log lines (`publishes`, `subscribes`, ...).
    pub fn plural(self) -> &'static str {
        match self {
            Work::Publish => "publishes",
            Work::Subscribe => "subscribes",
            Work::CreateTopic => "topic creates",
            Work::DeleteTopic => "topic deletes",
            Work::DeleteGroup => "group deletes",
            Work::Connect => "connections",
        }
    }
}
