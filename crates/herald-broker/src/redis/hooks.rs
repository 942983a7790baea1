//! Test hooks: hold one kind of work (one channel's gap fills, one channel's subscribe, the
//! relay loop) at a known point until the test releases it.
//!
//! They let tests prove that nothing else waits behind a slow Redis call by awaiting events
//! instead of measuring time: hold one channel's read, then show that other channels still
//! progress. Disarmed (always, outside tests) a hook point costs one atomic load.

use std::sync::{
    Arc,
    atomic::{AtomicBool, Ordering},
};

use herald_core::ChannelName;
use parking_lot::Mutex;
use tokio::sync::watch;

/// Where work can be held.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Hold {
    /// The relay's history reads (gap fills) of one channel, before they reach Redis.
    Fill(ChannelName),
    /// A subscribe to one channel, after its SUBSCRIBE and before it reads the channel's top.
    Subscribe(ChannelName),
    /// The relay loop, before it handles its next event (so its queue fills up).
    Relay,
}

/// One held point: work that reaches it waits until [`Gate::release`].
#[derive(Debug)]
pub struct Gate {
    open: watch::Sender<bool>,
    /// How many times work reached the gate.
    reached: watch::Sender<usize>,
}

impl Gate {
    /// Waits until some work is held at (or went through) this gate.
    pub async fn reached(&self) {
        let mut rx = self.reached.subscribe();
        let _ = rx.wait_for(|n| *n > 0).await;
    }

    /// Lets everything held here (and everything that comes later) through.
    pub fn release(&self) {
        self.open.send_replace(true);
    }

    async fn pass(&self) {
        self.reached.send_modify(|n| *n += 1);
        let mut rx = self.open.subscribe();
        let _ = rx.wait_for(|open| *open).await;
    }
}

#[derive(Default)]
pub(crate) struct Hooks {
    armed: AtomicBool,
    gates: Mutex<Vec<(Hold, Arc<Gate>)>>,
}

impl Hooks {
    pub(crate) fn arm(&self, hold: Hold) -> Arc<Gate> {
        let gate = Arc::new(Gate {
            open: watch::Sender::new(false),
            reached: watch::Sender::new(0),
        });
        self.gates.lock().push((hold, gate.clone()));
        self.armed.store(true, Ordering::Release);
        gate
    }

    /// Waits at `at` while a test holds it.
    pub(crate) async fn pass(&self, at: &Hold) {
        if !self.armed.load(Ordering::Acquire) {
            return;
        }
        let gate = self
            .gates
            .lock()
            .iter()
            .find(|(hold, _)| hold == at)
            .map(|(_, gate)| gate.clone());
        if let Some(gate) = gate {
            gate.pass().await;
        }
    }
}
