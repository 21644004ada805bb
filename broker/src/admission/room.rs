//! [`RoomSignal`]: tells dispatchers that outbound memory was freed. A dispatcher that passed a
//! member over for lack of memory (its connection at its share, or the outbound half full)
//! waits on it, so delivery resumes as soon as a connection's writer has written frames, with
//! no timer and no lost wake-up.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use tokio::sync::Notify;

/// A broadcast "memory was freed" signal with an epoch, so a waiter that checks the epoch
/// before sleeping never misses a signal sent in between.
#[derive(Debug, Default)]
pub struct RoomSignal {
    epoch: AtomicU64,
    waiting: AtomicUsize,
    notify: Notify,
}

/// Decrements the waiter count when a wait ends or is cancelled.
struct Waiting<'a>(&'a AtomicUsize);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl RoomSignal {
    /// Records that memory was freed and wakes every waiter (a no-op beyond one atomic add
    /// while nobody waits).
    pub fn freed(&self) {
        self.epoch.fetch_add(1, Ordering::SeqCst);
        if self.waiting.load(Ordering::SeqCst) > 0 {
            self.notify.notify_waiters();
        }
    }

    /// The current epoch: read it before the work whose outcome may call for a wait.
    pub fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::SeqCst)
    }

    /// Resolves once memory has been freed since `epoch` was read (at once if it already was).
    /// Cancel-safe.
    pub async fn freed_since(&self, epoch: u64) {
        self.waiting.fetch_add(1, Ordering::SeqCst);
        let _waiting = Waiting(&self.waiting);
        let notified = self.notify.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        if self.epoch() != epoch {
            return;
        }
        notified.await;
    }
}

#[cfg(all(test, not(weir_loom)))]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn a_signal_before_the_wait_is_not_missed_and_one_during_it_wakes_it() {
        let room = Arc::new(RoomSignal::default());
        let seen = room.epoch();
        room.freed();
        tokio::time::timeout(Duration::from_secs(5), room.freed_since(seen))
            .await
            .expect("a signal sent before the wait resolves it at once");
        let seen = room.epoch();
        let waiter = tokio::spawn({
            let room = room.clone();
            async move { room.freed_since(seen).await }
        });
        // Signal until the waiter has resolved: it must, whenever it started waiting.
        while !waiter.is_finished() {
            room.freed();
            tokio::task::yield_now().await;
        }
        waiter.await.unwrap();
        assert_eq!(room.waiting.load(Ordering::SeqCst), 0);
    }
}
