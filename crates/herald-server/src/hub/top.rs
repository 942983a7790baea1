//! Coalesced reads of a channel's top position for subscribers that start from "now".
//!
//! A subscriber without a resume position needs only the channel's current epoch and offset,
//! read after its slot started buffering live messages. When thousands of clients connect at
//! once (a deploy, a node restart, a load balancer shifting traffic) that was one broker round
//! trip each, and under the burst some of them outlived the broker deadline. Reads of one channel
//! are therefore single-flight: a subscriber joins the next read that *starts* after it
//! registered. That read is as good as its own would be: anything published after the read's
//! snapshot reaches the subscriber's buffer through the live backbone subscription, which was
//! active before the subscriber registered. A subscriber never reuses a read already in flight
//! when it arrived, since that snapshot may predate messages its buffer never saw.

use std::sync::Arc;

use herald_broker::{Broker, BrokerError, HistoryQuery};
use herald_core::{ChannelName, StreamPosition};
use parking_lot::Mutex;
use tokio::sync::oneshot;

type Waiter = oneshot::Sender<Result<StreamPosition, BrokerError>>;

/// One channel's top reads: who waits for the next one, and whether a reader task runs.
#[derive(Default)]
pub(super) struct TopReads {
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// Subscribers registered since the read in flight (if any) started.
    waiting: Vec<Waiter>,
    /// A reader task exists; it keeps reading while anyone waits.
    running: bool,
}

impl TopReads {
    /// The channel's top position, from a broker read started after this call.
    pub(super) async fn read(
        self: &Arc<Self>,
        broker: &Arc<dyn Broker>,
        channel: &ChannelName,
    ) -> Result<StreamPosition, BrokerError> {
        let (tx, rx) = oneshot::channel();
        let start = {
            let mut state = self.state.lock();
            state.waiting.push(tx);
            !std::mem::replace(&mut state.running, true)
        };
        if start {
            // A task of its own, not this subscriber's future: the subscriber may be dropped
            // (its client left) while others wait on the same read.
            tokio::spawn(self.clone().run(broker.clone(), channel.clone()));
        }
        rx.await
            .unwrap_or_else(|_| Err(BrokerError::Internal("top read abandoned".into())))
    }

    async fn run(self: Arc<Self>, broker: Arc<dyn Broker>, channel: ChannelName) {
        let mut guard = Running {
            reads: &self,
            armed: true,
        };
        loop {
            let batch = {
                let mut state = self.state.lock();
                if state.waiting.is_empty() {
                    state.running = false;
                    guard.armed = false;
                    return;
                }
                std::mem::take(&mut state.waiting)
            };
            let result = broker
                .history(&channel, HistoryQuery::top())
                .await
                .map(|h| h.top);
            for waiter in batch {
                // A waiter that went away needs nothing.
                let _ = waiter.send(result.clone());
            }
        }
    }

    #[cfg(test)]
    pub(super) fn waiting(&self) -> usize {
        self.state.lock().waiting.len()
    }
}

/// Resets the state if the reader task ends abnormally (a panic in the broker, or the runtime
/// dropping the task at shutdown): later subscribers start a new reader instead of waiting on
/// one that is gone, and current waiters get an error instead of hanging.
struct Running<'a> {
    reads: &'a TopReads,
    armed: bool,
}

impl Drop for Running<'_> {
    fn drop(&mut self) {
        if self.armed {
            let mut state = self.reads.state.lock();
            state.running = false;
            state.waiting.clear();
        }
    }
}
