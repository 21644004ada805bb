//! What a connection's writer task receives: frames, each with the memory it holds charged to
//! the broker's memory budget until the frame is encoded onto the socket.

use tokio::sync::mpsc;
use weir_protocol::Frame;

use crate::admission::MemoryPermit;

/// A frame on its way to a client. A `Deliver` carries a permit for its payload, charged by the
/// dispatcher and given back when the writer has encoded it, so every delivery waiting in a
/// connection's queue counts against the memory budget.
#[derive(Debug)]
pub struct Outbound {
    pub frame: Frame,
    /// The memory the frame holds (empty for control frames).
    pub memory: Option<MemoryPermit>,
}

impl From<Frame> for Outbound {
    fn from(frame: Frame) -> Outbound {
        Outbound {
            frame,
            memory: None,
        }
    }
}

/// The sending side of one of a connection's bounded outbound queues (deliveries are sized by
/// credit; control frames by a fixed bound the reader waits on).
pub type Outbox = mpsc::Sender<Outbound>;
