use super::*;
use crate::redis::scripts::ReadReply;
use lost::lost;

struct Nothing;
impl Sink for Nothing {
    fn deliver(&self, _: Arc<Message>) {}
}

fn epoch(n: u64) -> Epoch {
    Epoch::from_random(n)
}

fn msg(e: u64, offset: u64) -> Arc<Message> {
    Arc::new(Message {
        channel: ChannelName::parse("c").expect("name"),
        offset,
        epoch: epoch(e),
        event: None,
        data: Bytes::new(),
        published_at_us: 0,
        sender: None,
    })
}

fn slot(cursor: Option<(u64, u64)>, pending: &[(u64, u64)]) -> Slot {
    let mut s = Slot::new(Arc::new(Nothing), 1);
    s.cursor = cursor.map(|(e, offset)| StreamPosition {
        epoch: epoch(e),
        offset,
    });
    s.pending = pending.iter().map(|&(e, o)| msg(e, o)).collect();
    s
}

fn offsets(out: &[Arc<Message>]) -> Vec<u64> {
    out.iter().map(|m| m.offset).collect()
}

#[test]
fn contiguous_messages_go_and_duplicates_are_dropped() {
    let mut s = slot(Some((1, 3)), &[(1, 2), (1, 3), (1, 4), (1, 5)]);
    let mut out = Vec::new();
    assert!(advance(&mut s, None, 100, &mut out).is_none());
    assert_eq!(offsets(&out), [4, 5]);
    assert_eq!(s.cursor.as_ref().map(|c| c.offset), Some(5));
    assert!(s.pending.is_empty());
}

#[test]
fn nothing_goes_before_the_baseline() {
    let mut s = slot(None, &[(1, 1)]);
    let mut out = Vec::new();
    assert!(advance(&mut s, None, 100, &mut out).is_none());
    assert!(out.is_empty() && s.pending.len() == 1);
}

#[test]
fn a_skip_asks_for_exactly_the_gap() {
    let mut s = slot(Some((1, 3)), &[(1, 4), (1, 8), (1, 9)]);
    let mut out = Vec::new();
    let gap = advance(&mut s, None, 100, &mut out).expect("gap");
    assert_eq!(offsets(&out), [4]);
    assert_eq!((gap.cursor.offset, gap.limit), (4, 3));
    assert_eq!(s.pending.len(), 2, "parked until the gap is read");
    let capped = advance(&mut s, None, 2, &mut Vec::new()).expect("gap");
    assert_eq!(capped.limit, 2, "never more than history holds");
}

#[test]
fn an_owed_fill_reads_before_anything_goes() {
    let mut s = slot(Some((1, 3)), &[(1, 4)]);
    s.needs_fill = true;
    let mut out = Vec::new();
    let gap = advance(&mut s, None, 50, &mut out).expect("gap");
    assert!(out.is_empty());
    assert_eq!((gap.cursor.offset, gap.limit), (3, 50));
}

#[test]
fn a_new_epoch_is_read_from_its_start() {
    let mut s = slot(Some((1, 7)), &[(2, 3)]);
    let gap = advance(&mut s, None, 100, &mut Vec::new()).expect("gap");
    assert_eq!(gap.limit, 2, "offsets 1 and 2 of the new epoch");
}

#[test]
fn after_a_read_unfillable_gaps_are_skipped_and_unknown_epochs_dropped() {
    let mut s = slot(Some((1, 3)), &[(1, 9), (3, 1), (1, 10)]);
    let mut out = Vec::new();
    assert!(advance(&mut s, Some(&epoch(1)), 100, &mut out).is_none());
    assert_eq!(offsets(&out), [9, 10]);
    assert!(s.pending.is_empty());

    let mut s = slot(Some((1, 3)), &[(2, 5)]);
    let mut out = Vec::new();
    assert!(advance(&mut s, Some(&epoch(2)), 100, &mut out).is_none());
    assert_eq!(offsets(&out), [5], "the current epoch is delivered as-is");
    assert_eq!(s.cursor.as_ref().map(|c| c.epoch.clone()), Some(epoch(2)));
}

fn reply(e: u64, top: u64, messages: Vec<Arc<Message>>) -> ReadReply {
    ReadReply {
        top: StreamPosition {
            epoch: epoch(e),
            offset: top,
        },
        messages,
    }
}

#[test]
fn history_behind_or_rewritten_at_the_cursor_is_lost() {
    let cursor = StreamPosition {
        epoch: epoch(1),
        offset: 10,
    };
    let delivered = msg(1, 10);
    assert!(
        lost(&cursor, None, &reply(1, 9, vec![])),
        "top behind the cursor"
    );
    assert!(!lost(&cursor, None, &reply(1, 10, vec![])), "caught up");
    assert!(
        !lost(&cursor, None, &reply(2, 3, vec![])),
        "a new epoch is its own reset"
    );
    assert!(
        !lost(
            &cursor,
            Some(&delivered),
            &reply(1, 11, vec![msg(1, 10), msg(1, 11)])
        ),
        "the delivered message is still there"
    );
    let mut other = (*msg(1, 10)).clone();
    other.data = Bytes::from_static(b"\"other\"");
    assert!(
        lost(
            &cursor,
            Some(&delivered),
            &reply(1, 11, vec![Arc::new(other), msg(1, 11)])
        ),
        "another message at the delivered offset"
    );
    assert!(
        !lost(&cursor, Some(&delivered), &reply(1, 11, vec![msg(1, 11)])),
        "trimmed: nothing to compare"
    );
}
