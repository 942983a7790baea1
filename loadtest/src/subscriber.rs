//! One simulated subscriber: connect, subscribe, account every delivery, and reconnect with
//! resume like a well-behaved client when the server drops it or a scenario says so.

use std::{
    collections::BTreeMap,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore, watch};
use tokio_util::sync::CancellationToken;

use crate::{
    client::{Conn, End, Event, Resume, Transport},
    net::{Dialer, Target},
    payload,
    stats::{Arrival, LatencyBatch, LatencySink, OffsetTracker, RateBuckets, RateCounter},
};

/// Consecutive failed reconnects after which a subscriber gives up.
const MAX_RECONNECT_FAILURES: u32 = 50;

/// Everything subscribers of one run share.
#[derive(Debug)]
pub struct Fleet {
    pub dialer: Dialer,
    /// Shared HTTP/2 connections (`--transport sse-h2`).
    pub h2: Option<crate::client::h2sse::H2Pool>,
    pub targets: Vec<Target>,
    pub token: Option<String>,
    pub transport: Transport,
    pub latency: LatencySink,
    pub rates: RateBuckets,
    pub cancel: CancellationToken,
    /// Caps handshakes in flight so a big run does not overflow the server's accept backlog.
    pub connect_gate: Arc<Semaphore>,
    /// Subscribers that either got `subscribed` or gave up on the first attempt.
    pub settled: AtomicUsize,
    pub subscribed: AtomicUsize,
    pub settled_notify: Notify,
    /// Bumped by the resume-storm scenario: every subscriber drops its connection and resumes
    /// on the next node URL. Holds the unix micros of the drop.
    pub storm: watch::Receiver<u64>,
    /// Read only when the scenario reconnects on purpose.
    pub progress: Vec<Progress>,
}

/// What the coordinator polls while a run drains. Aligned so neighbours' hot stores do not
/// share a cache line.
#[derive(Debug, Default)]
#[repr(align(64))]
pub struct Progress {
    pub max_offset: AtomicU64,
    /// Subscribed and not given up: the drain waits for this subscriber.
    pub active: AtomicBool,
    /// Unix micros when the subscriber was live again after a storm (0 = not yet).
    pub caught_up_at: AtomicU64,
}

/// How one subscriber ended.
#[derive(Debug, Default)]
pub struct SubResult {
    pub channel: usize,
    pub established: bool,
    pub subscribed: bool,
    /// TCP connect + upgrade + subscription confirmed, first attempt.
    pub connect_us: Option<u64>,
    pub fail: Option<String>,
    /// Channel offset when the first subscription went live.
    pub base: u64,
    pub tracker: OffsetTracker,
    pub reconnects: u32,
    pub disconnects: BTreeMap<String, u64>,
    pub errors: BTreeMap<String, u64>,
    /// Resumes the server answered with `recovered: false`.
    pub unrecovered: u32,
    /// Messages without our payload (another publisher on the channel).
    pub foreign: u64,
    pub unattributed: u64,
    /// Still connected when the run stopped.
    pub open_at_end: bool,
}

struct State<'f> {
    fleet: &'f Fleet,
    idx: usize,
    res: SubResult,
    resume: Resume,
    permit: Option<OwnedSemaphorePermit>,
    started: Instant,
    latency: LatencyBatch,
    rate: RateCounter,
    /// Unix micros of the last storm, to time the catch-up.
    storm_at: u64,
    reconnect_now: bool,
    channel_name: Arc<str>,
}

impl State<'_> {
    fn on_event(&mut self, ev: Event<'_>) {
        match ev {
            Event::Subscribed {
                channel,
                offset,
                epoch,
                recovered,
                sse_id,
            } => {
                if channel != &*self.channel_name {
                    return;
                }
                if !self.res.subscribed {
                    self.res.subscribed = true;
                    self.res.base = offset;
                    self.res.connect_us = Some(self.started.elapsed().as_micros() as u64);
                    self.resume.position = Some((offset, epoch.to_owned()));
                    self.permit = None;
                    self.fleet.progress[self.idx]
                        .active
                        .store(true, Ordering::Relaxed);
                    self.fleet.subscribed.fetch_add(1, Ordering::Relaxed);
                    self.fleet.settled.fetch_add(1, Ordering::Release);
                    self.fleet.settled_notify.notify_one();
                } else if !recovered {
                    // A resume the server could not serve: the gap is reported, not hidden.
                    self.res.unrecovered += 1;
                }
                if let Some(id) = sse_id {
                    set_string(&mut self.resume.last_event_id, id);
                }
            }
            Event::Message {
                channel,
                offset,
                epoch,
                data,
                sse_id,
            } => {
                if channel != &*self.channel_name {
                    self.res.unattributed += 1;
                    return;
                }
                let arrival = self.res.tracker.record(offset);
                if arrival == Arrival::Duplicate {
                    return;
                }
                let progress = &self.fleet.progress[self.idx];
                progress
                    .max_offset
                    .store(self.res.tracker.max(), Ordering::Relaxed);
                let now = payload::now_micros();
                match payload::parse(data) {
                    Some((_seq, ts)) => {
                        self.latency
                            .record(&self.fleet.latency, now.saturating_sub(ts));
                        if self.storm_at != 0
                            && ts >= self.storm_at
                            && progress.caught_up_at.load(Ordering::Relaxed) == 0
                        {
                            progress.caught_up_at.store(now, Ordering::Relaxed);
                        }
                    }
                    None => self.res.foreign += 1,
                }
                self.rate.tick(&self.fleet.rates, now);
                if arrival == Arrival::InOrder {
                    match &mut self.resume.position {
                        Some((o, e)) => {
                            *o = offset;
                            if e != epoch {
                                epoch.clone_into(e);
                            }
                        }
                        None => self.resume.position = Some((offset, epoch.to_owned())),
                    }
                    if let Some(id) = sse_id {
                        set_string(&mut self.resume.last_event_id, id);
                    }
                }
            }
            Event::Error { code } => {
                *self.res.errors.entry(code.to_owned()).or_default() += 1;
            }
            Event::Reconnect => self.reconnect_now = true,
            Event::Unattributed => self.res.unattributed += 1,
            Event::Other => {}
        }
    }

    fn give_up(&mut self, e: &End) {
        if !self.res.subscribed && self.res.fail.is_none() {
            self.res.fail = Some(e.kind());
            self.permit = None;
            self.fleet.settled.fetch_add(1, Ordering::Release);
            self.fleet.settled_notify.notify_one();
        }
    }
}

fn set_string(slot: &mut Option<String>, v: &str) {
    match slot {
        Some(s) => {
            s.clear();
            s.push_str(v);
        }
        None => *slot = Some(v.to_owned()),
    }
}

/// Runs subscriber `idx` on `channel`, first on node `first_target`, until the fleet is
/// cancelled.
pub async fn run(
    fleet: Arc<Fleet>,
    idx: usize,
    first_target: usize,
    channel_idx: usize,
    channel: Arc<str>,
) -> SubResult {
    let Ok(permit) = fleet.connect_gate.clone().acquire_owned().await else {
        return SubResult::default();
    };
    let mut storm = fleet.storm.clone();
    let mut st = State {
        fleet: &fleet,
        idx,
        res: SubResult {
            channel: channel_idx,
            ..SubResult::default()
        },
        resume: Resume::default(),
        permit: Some(permit),
        started: Instant::now(),
        latency: LatencyBatch::new(idx),
        rate: RateCounter::default(),
        storm_at: 0,
        reconnect_now: false,
        channel_name: channel.clone(),
    };
    let mut target = first_target % fleet.targets.len();
    let mut failures = 0u32;
    'outer: while !fleet.cancel.is_cancelled() {
        let resume = if st.res.subscribed {
            st.resume.clone()
        } else {
            Resume::default()
        };
        let open = Conn::open(
            fleet.transport,
            &fleet.dialer,
            (&fleet.targets[target], target),
            &channel,
            &resume,
            fleet.token.as_deref(),
            fleet.h2.as_ref().map(|pool| (pool, idx)),
        );
        let opened = tokio::select! {
            () = fleet.cancel.cancelled() => break,
            r = open => r,
        };
        let mut conn = match opened {
            Ok(c) => c,
            Err(e) => {
                if !st.res.subscribed {
                    st.give_up(&e);
                    break;
                }
                *st.res
                    .disconnects
                    .entry(format!("reconnect failed: {}", e.kind()))
                    .or_default() += 1;
                failures += 1;
                if failures >= MAX_RECONNECT_FAILURES {
                    break;
                }
                target = (target + 1) % fleet.targets.len();
                backoff(&fleet).await;
                continue;
            }
        };
        st.res.established = true;
        loop {
            let mut on_event = |ev: Event<'_>| st.on_event(ev);
            let r = tokio::select! {
                () = fleet.cancel.cancelled() => {
                    st.res.open_at_end = true;
                    break 'outer;
                }
                changed = storm.changed() => {
                    if changed.is_ok() {
                        st.storm_at = *storm.borrow_and_update();
                        fleet.progress[idx].caught_up_at.store(0, Ordering::Relaxed);
                        st.reconnect_now = true;
                    }
                    Ok(())
                }
                r = conn.next_batch(&mut on_event) => r,
            };
            if let Err(e) = r {
                if !st.res.subscribed {
                    st.give_up(&e);
                    break 'outer;
                }
                *st.res.disconnects.entry(e.kind()).or_default() += 1;
                backoff(&fleet).await;
                break;
            }
            if st.reconnect_now {
                st.reconnect_now = false;
                break;
            }
            if st.res.subscribed {
                failures = 0;
            }
        }
        drop(conn);
        st.res.reconnects += 1;
        // Resume elsewhere: the contract is that any node continues any stream.
        target = (target + 1) % fleet.targets.len();
    }
    if !fleet.cancel.is_cancelled() {
        fleet.progress[idx].active.store(false, Ordering::Relaxed);
    }
    st.latency.flush(&fleet.latency);
    st.rate.flush(&fleet.rates);
    if !st.res.subscribed && st.res.fail.is_none() {
        // Cancelled before the subscription went live.
        st.give_up(&End::Protocol("cancelled before subscribed".into()));
    }
    st.res
}

async fn backoff(fleet: &Fleet) {
    let ms = 50 + rand::random::<u64>() % 100;
    tokio::select! {
        () = fleet.cancel.cancelled() => {}
        () = tokio::time::sleep(Duration::from_millis(ms)) => {}
    }
}
