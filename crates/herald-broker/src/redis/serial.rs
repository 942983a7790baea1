//! Per-channel serialisation of subscribe and unsubscribe.
//!
//! SUBSCRIBE and UNSUBSCRIBE of one channel must not overtake each other (the node would end up
//! unsubscribed from a channel it delivers, or the reverse), so each channel's calls take that
//! channel's lock across their Redis round trips. Only that channel's: subscribes to unrelated
//! channels never queue behind each other's Redis calls, however many arrive at once. A lock
//! exists only while someone holds or waits for it, so idle channels cost nothing.

use std::{collections::HashMap, sync::Arc};

use herald_core::ChannelName;
use parking_lot::Mutex;
use tokio::sync::{Mutex as AsyncMutex, OwnedMutexGuard};

#[derive(Default)]
pub(crate) struct ChannelLocks {
    locks: Mutex<HashMap<ChannelName, Arc<AsyncMutex<()>>>>,
}

/// Holds one channel's lock; dropping it releases the lock and forgets it when unused.
pub(crate) struct ChannelGuard<'a> {
    owner: &'a ChannelLocks,
    channel: ChannelName,
    guard: Option<OwnedMutexGuard<()>>,
}

impl ChannelLocks {
    pub(crate) async fn lock(&self, channel: &ChannelName) -> ChannelGuard<'_> {
        let lock = self
            .locks
            .lock()
            .entry(channel.clone())
            .or_default()
            .clone();
        ChannelGuard {
            owner: self,
            channel: channel.clone(),
            guard: Some(lock.lock_owned().await),
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.locks.lock().len()
    }
}

impl Drop for ChannelGuard<'_> {
    fn drop(&mut self) {
        drop(self.guard.take());
        let mut locks = self.owner.locks.lock();
        // Clones are only made under `locks`: one reference left (the map's) means nobody
        // else holds or waits for this channel's lock.
        if locks
            .get(&self.channel)
            .is_some_and(|l| Arc::strong_count(l) == 1)
        {
            locks.remove(&self.channel);
        }
    }
}

#[cfg(test)]
mod tests {
    use futures_util::FutureExt;

    use super::*;

    fn ch(name: &str) -> ChannelName {
        ChannelName::parse(name).expect("name")
    }

    #[tokio::test]
    async fn one_channel_waits_other_channels_do_not_and_unused_locks_go() {
        let locks = ChannelLocks::default();
        let a = locks.lock(&ch("a")).await;
        let _b = locks.lock(&ch("b")).await; // another channel: not held up by `a`
        let name = ch("a");
        let waiting = locks.lock(&name);
        tokio::pin!(waiting);
        assert!(
            waiting.as_mut().now_or_never().is_none(),
            "same channel waits"
        );
        drop(a);
        let again = waiting.await;
        assert_eq!(locks.len(), 2);
        drop(again);
        assert_eq!(locks.len(), 1, "a's lock is forgotten once unused");
    }
}
