//! The outbox's bounds, batches and direct writes.

use super::*;
use bytes::Bytes;

#[tokio::test]
async fn overflow_closes_as_slow_consumer_and_frees_the_queue() {
    let o = Outbox::new(
        Bounds {
            max_items: 2,
            max_bytes: 1000,
        },
        CancellationToken::default(),
    );
    assert!(o.push(Item::raw(Bytes::from_static(b"a"))).accepted());
    assert!(o.push(Item::raw(Bytes::from_static(b"b"))).accepted());
    assert!(!o.push(Item::raw(Bytes::from_static(b"c"))).accepted());
    assert_eq!(o.queued(), (0, 0));
    assert!(
        o.signal().is_some_and(|s| s.is_cancelled()),
        "a blocked writer learns of it"
    );
    let batch = o.take().await;
    assert_eq!(batch.closed, Some(CloseReason::SlowConsumer));
    assert!(
        !o.push(Item::raw(Bytes::from_static(b"d"))).accepted(),
        "stays closed"
    );
}

#[tokio::test]
async fn byte_bound_applies_too() {
    let o = Outbox::new(
        Bounds {
            max_items: 100,
            max_bytes: 10,
        },
        CancellationToken::default(),
    );
    assert!(
        o.push(Item::raw(Bytes::from_static(b"0123456789")))
            .accepted()
    );
    assert!(!o.push(Item::raw(Bytes::from_static(b"x"))).accepted());
}

#[tokio::test]
async fn take_returns_everything_in_order_and_wakes_on_push() {
    let o = Outbox::new(
        Bounds {
            max_items: 100,
            max_bytes: 1000,
        },
        CancellationToken::default(),
    );
    let o2 = o.clone();
    let reader = tokio::spawn(async move { o2.take().await.items.len() });
    tokio::task::yield_now().await;
    o.push(Item::raw(Bytes::from_static(b"a")));
    assert_eq!(reader.await.expect("task"), 1);
    o.push(Item::raw(Bytes::from_static(b"b")));
    o.push(Item::raw(Bytes::from_static(b"c")));
    o.close(CloseReason::Shutdown);
    let batch = o.take().await;
    assert_eq!(batch.items.len(), 2);
    assert_eq!(batch.closed, Some(CloseReason::Shutdown));
}

/// A socket that takes at most `room` bytes, then nothing, recording what it took.
#[derive(Default)]
struct FakeWire {
    room: parking_lot::Mutex<usize>,
    taken: parking_lot::Mutex<Vec<u8>>,
}

impl FakeWire {
    fn with_room(room: usize) -> Arc<Self> {
        Arc::new(Self {
            room: parking_lot::Mutex::new(room),
            taken: Default::default(),
        })
    }

    fn bytes(item: &Item) -> Bytes {
        match item {
            Item::Raw(b) => (**b).clone(),
            _ => Bytes::from_static(b"?"),
        }
    }
}

impl Wire for FakeWire {
    fn try_write(&self, item: Item) -> Sent {
        let bytes = Self::bytes(&item);
        let mut room = self.room.lock();
        let n = bytes.len().min(*room);
        *room -= n;
        self.taken.lock().extend_from_slice(&bytes[..n]);
        match n {
            _ if n == bytes.len() => Sent::Whole,
            0 => Sent::Nothing(item),
            _ => Sent::Rest(Item::raw(bytes.slice(n..))),
        }
    }

    fn transport(&self) -> &'static str {
        "fake"
    }
}

fn raw(s: &'static str) -> Item {
    Item::raw(Bytes::from_static(s.as_bytes()))
}

fn outbox(max_items: usize, max_bytes: usize) -> Arc<Outbox> {
    Outbox::new(
        Bounds {
            max_items,
            max_bytes,
        },
        CancellationToken::default(),
    )
}

/// The bytes of a taken batch, in order.
fn concat(items: &VecDeque<Item>) -> Vec<u8> {
    items
        .iter()
        .flat_map(|i| FakeWire::bytes(i).to_vec())
        .collect()
}

#[tokio::test]
async fn an_idle_connection_is_written_directly_and_only_the_rest_is_queued() {
    let o = outbox(100, 1000);
    let wire = FakeWire::with_room(8);
    o.attach(wire.clone());
    assert_eq!(o.push(raw("hello")), Pushed::Written("fake"));
    assert_eq!(o.queued(), (0, 0), "nothing queued, nobody woken");
    // The kernel takes 3 of the next 6 bytes: the rest goes first, then everything else queues
    // behind it (the queue is not empty any more) until the writer has written it all.
    assert_eq!(o.push(raw("world!")), Pushed::Written("fake"));
    assert_eq!(o.push(raw("next")), Pushed::Queued);
    *wire.room.lock() = 100;
    assert_eq!(
        o.push(raw("after")),
        Pushed::Queued,
        "still behind the queue"
    );
    assert_eq!(wire.taken.lock().as_slice(), b"hellowor");
    let batch = o.take().await;
    assert_eq!(concat(&batch.items), b"ld!nextafter");
    // While the writer holds its batch, pushes queue (one writer at a time).
    assert_eq!(o.push(raw("busy")), Pushed::Queued);
    let batch = o.take().await;
    assert_eq!(concat(&batch.items), b"busy");
    // Once it comes back and finds nothing, the connection is idle again.
    let mut into = VecDeque::new();
    let mut cx = Context::from_waker(std::task::Waker::noop());
    assert!(o.poll_take(&mut cx, &mut into).is_pending());
    assert_eq!(o.push(raw("!")), Pushed::Written("fake"));
    assert_eq!(wire.taken.lock().as_slice(), b"hellowor!");
}

#[tokio::test]
async fn a_full_socket_buffer_queues_the_item_whole_and_wakes_the_writer() {
    let o = outbox(100, 1000);
    o.attach(FakeWire::with_room(0));
    let o2 = o.clone();
    let writer = tokio::spawn(async move { o2.take().await });
    tokio::task::yield_now().await;
    assert_eq!(o.push(raw("frame")), Pushed::Queued);
    let batch = writer.await.expect("writer woken");
    assert_eq!(concat(&batch.items), b"frame");
}

#[tokio::test]
async fn a_slow_consumer_cut_keeps_the_rest_of_a_torn_frame() {
    let o = outbox(2, 1000);
    let wire = FakeWire::with_room(2);
    o.attach(wire.clone());
    assert_eq!(o.push(raw("abcd")), Pushed::Written("fake"));
    assert_eq!(o.push(raw("e")), Pushed::Queued);
    assert_eq!(o.push(raw("f")), Pushed::Refused, "over the item bound");
    let batch = o.take().await;
    assert_eq!(batch.closed, Some(CloseReason::SlowConsumer));
    // The client got "ab": it gets the rest of that frame before the close, nothing else.
    assert_eq!(concat(&batch.items), b"cd");
}

#[tokio::test]
async fn concurrent_pushes_never_interleave_and_keep_each_pushers_order() {
    let o = outbox(1_000_000, 100_000_000);
    let wire = FakeWire::with_room(usize::MAX);
    o.attach(wire.clone());
    // A writer that keeps taking whatever got queued, as the transports do.
    let o2 = o.clone();
    let wire2 = wire.clone();
    let writer = tokio::spawn(async move {
        loop {
            let batch = o2.take().await;
            wire2
                .taken
                .lock()
                .extend(batch.items.iter().flat_map(|i| FakeWire::bytes(i).to_vec()));
            if batch.closed.is_some() {
                return;
            }
        }
    });
    let pushers: Vec<_> = (0..4u8)
        .map(|p| {
            let (o, wire) = (o.clone(), wire.clone());
            std::thread::spawn(move || {
                for i in 0..2000u32 {
                    // Now and then the socket buffer is full, so some frames queue.
                    if i % 97 == 0 {
                        *wire.room.lock() = 3;
                    } else if i % 97 == 5 {
                        *wire.room.lock() = usize::MAX;
                    }
                    let frame = format!("<{p}:{i}>");
                    assert!(o.push(Item::raw(Bytes::from(frame))).accepted());
                }
            })
        })
        .collect();
    for p in pushers {
        p.join().expect("pusher");
    }
    o.close(CloseReason::Shutdown);
    writer.await.expect("writer");
    let taken = String::from_utf8(wire.taken.lock().clone()).expect("utf8");
    let mut next = [0u32; 4];
    let frames: Vec<&str> = taken.split_inclusive('>').collect();
    assert_eq!(frames.len(), 8000, "every frame once");
    for f in frames {
        let (p, i) = f
            .strip_prefix('<')
            .and_then(|f| f.strip_suffix('>'))
            .and_then(|f| f.split_once(':'))
            .unwrap_or_else(|| panic!("torn frame {f:?}"));
        let (p, i): (usize, u32) = (p.parse().expect("p"), i.parse().expect("i"));
        assert_eq!(i, next[p], "pusher {p} in order");
        next[p] += 1;
    }
}

#[tokio::test]
async fn only_what_the_kernel_did_not_take_counts_against_the_bounds() {
    let o = outbox(100, 10);
    let wire = FakeWire::with_room(12);
    o.attach(wire.clone());
    // Written whole: the node holds nothing for it, however big.
    assert_eq!(o.push(raw("0123456789")), Pushed::Written("fake"));
    assert_eq!(o.queued(), (0, 0));
    // Two bytes taken: the rest (9 bytes) is queued, and only it counts.
    assert_eq!(o.push(raw("abcdefghijk")), Pushed::Written("fake"));
    assert_eq!(o.queued(), (1, 9));
    // Behind a queue every push is bounded as before: 9 + 2 > 10 closes the outbox.
    assert_eq!(o.push(raw("xy")), Pushed::Refused);
    let batch = o.take().await;
    assert_eq!(batch.closed, Some(CloseReason::SlowConsumer));
    assert_eq!(
        concat(&batch.items),
        b"cdefghijk",
        "the torn frame's rest, then the close"
    );
}

#[tokio::test]
async fn the_writers_batch_counts_until_it_comes_back_and_blocks_direct_writes() {
    let o = outbox(100, 10);
    o.attach(FakeWire::with_room(0));
    assert_eq!(o.push(raw("123456")), Pushed::Queued, "full socket");
    let mut into = VecDeque::new();
    let mut cx = Context::from_waker(std::task::Waker::noop());
    assert!(o.poll_take(&mut cx, &mut into).is_ready());
    // The writer is writing those 6 bytes: they still count, and a push queues behind them.
    assert_eq!(o.queued(), (0, 6));
    assert_eq!(o.push(raw("abcd")), Pushed::Queued);
    assert_eq!(o.push(raw("e")), Pushed::Refused, "6 + 4 + 1 > 10");
}

#[tokio::test]
async fn a_replay_writes_directly_too_and_keeps_its_order_behind_a_queue() {
    let o = outbox(100, 1000);
    let wire = FakeWire::with_room(5);
    o.attach(wire.clone());
    assert!(o.push_replay(raw("one"), 0).is_ok());
    assert!(o.push_replay(raw("two"), 0).is_ok());
    assert!(o.push_replay(raw("three"), 0).is_ok());
    assert_eq!(wire.taken.lock().as_slice(), b"onetw");
    let batch = o.take().await;
    assert_eq!(concat(&batch.items), b"othree");
}

#[tokio::test]
async fn totals_follow_every_outbox_without_looking_at_them() {
    let totals = Arc::new(Totals::default());
    let bounds = Bounds {
        max_items: 100,
        max_bytes: 1000,
    };
    let a = Outbox::counted(bounds, CancellationToken::default(), totals.clone());
    let b = Outbox::counted(bounds, CancellationToken::default(), totals.clone());
    b.attach(FakeWire::with_room(0));
    a.push(raw("12345"));
    b.push(raw("678"));
    assert!(b.try_hold(10));
    assert_eq!(totals.get(), (2, 18));
    // Taken by a's writer: no longer queued, still held until it comes back for more.
    let mut into = VecDeque::new();
    let mut cx = Context::from_waker(std::task::Waker::noop());
    assert!(a.poll_take(&mut cx, &mut into).is_ready());
    assert_eq!(totals.get(), (1, 18));
    into.clear();
    assert!(a.poll_take(&mut cx, &mut into).is_pending());
    assert_eq!(totals.get(), (1, 13));
    b.release(10);
    assert_eq!(totals.get(), (1, 3));
    // A slow-consumer cut frees what was queued; dropping an outbox frees the rest.
    let c = Outbox::counted(
        Bounds {
            max_items: 1,
            max_bytes: 1000,
        },
        CancellationToken::default(),
        totals.clone(),
    );
    c.push(raw("x"));
    assert_eq!(totals.get(), (2, 4));
    assert_eq!(c.push(raw("y")), Pushed::Refused);
    assert_eq!(totals.get(), (1, 3));
    drop(b);
    assert_eq!(totals.get(), (0, 0));
}
