use std::sync::LazyLock;

use super::*;

/// The time every read and reply of a test happens at, unless it says otherwise.
fn now() -> Instant {
    static START: LazyLock<Instant> = LazyLock::new(Instant::now);
    *START
}

const LEN: u32 = 64 * 1024;

#[derive(Default)]
struct Counter(u32);

impl NextId for Counter {
    fn next_id(&mut self) -> u32 {
        self.0 += 1;
        1000 + self.0
    }
}

/// A full `DATA` reply to a read of `LEN`.
fn data() -> Bytes {
    let mut body = vec![103, 0, 0, 0, 0];
    body.extend_from_slice(&LEN.to_be_bytes());
    body.resize(body.len() + LEN as usize, 7);
    Bytes::from(body)
}

/// Answers every read ahead in `plan` with a full `DATA` reply.
fn arrive(reads: &mut ReadAheads, plan: &ReadPlan) {
    for fetch in &plan.fetch {
        assert_eq!(
            reads.reply(fetch.id, data(), now()),
            Some(None),
            "kept ahead"
        );
    }
}

#[test]
fn a_file_read_from_its_start_is_read_ahead_further_with_each_read() {
    let (mut reads, mut ids) = (ReadAheads::default(), Counter::default());
    let first = reads.read("h", (0, LEN), 1, &mut ids, now());
    assert_eq!(first.served, Served::Forward);
    let offsets: Vec<u64> = first.fetch.iter().map(|fetch| fetch.offset).collect();
    assert_eq!(
        offsets,
        [1, 2].map(|n| n * u64::from(LEN)),
        "two reads ahead"
    );
    arrive(&mut reads, &first);
    let second = reads.read("h", (u64::from(LEN), LEN), 2, &mut ids, now());
    assert!(matches!(second.served, Served::Now(_)), "served ahead");
    assert_eq!(second.fetch.len(), 3, "a window of four reads from here");
    let mut offset = 2 * u64::from(LEN);
    let mut plan = second;
    while offset < 64 << 20 {
        arrive(&mut reads, &plan);
        plan = reads.read("h", (offset, LEN), 3, &mut ids, now());
        assert!(matches!(plan.served, Served::Now(_)), "at {offset}");
        assert!(reads.held <= FILE_WINDOW);
        offset += u64::from(LEN);
    }
    assert_eq!(reads.held, FILE_WINDOW, "the window stops growing");
}

#[test]
fn a_read_whose_answer_is_on_its_way_takes_it_and_reads_out_of_order_keep_the_window() {
    let (mut reads, mut ids) = (ReadAheads::default(), Counter::default());
    let first = reads.read("h", (0, LEN), 1, &mut ids, now());
    let [ahead_1, ahead_2] = [first.fetch[0], first.fetch[1]];
    // The second read ahead is asked for first, before either came back.
    let later = reads.read("h", (ahead_2.offset, LEN), 3, &mut ids, now());
    assert_eq!(later.served, Served::Awaited(ahead_2.id));
    let earlier = reads.read("h", (ahead_1.offset, LEN), 2, &mut ids, now());
    assert_eq!(earlier.served, Served::Awaited(ahead_1.id));
    assert_eq!(
        reads.reply(ahead_2.id, data(), now()),
        Some(Some(3)),
        "to the client's read"
    );
    assert_eq!(reads.reply(ahead_1.id, data(), now()), Some(Some(2)));
    assert!(
        !later.fetch.is_empty() || !earlier.fetch.is_empty(),
        "still reading ahead"
    );
    assert_eq!(reads.reply(99, data(), now()), None, "not a read ahead");
}

#[test]
fn a_read_elsewhere_drops_what_was_read_ahead_and_its_replies_are_swallowed() {
    let (mut reads, mut ids) = (ReadAheads::default(), Counter::default());
    let first = reads.read("h", (0, LEN), 1, &mut ids, now());
    let jump = reads.read("h", (100 * u64::from(LEN), LEN), 2, &mut ids, now());
    assert_eq!(jump.served, Served::Forward);
    assert!(
        jump.fetch.is_empty(),
        "one read elsewhere is not a sequence"
    );
    for fetch in &first.fetch {
        assert_eq!(reads.reply(fetch.id, data(), now()), Some(None));
    }
    assert_eq!(reads.held, 0, "nothing held for the dropped reads");
    let back = reads.read("h", (u64::from(LEN), LEN), 3, &mut ids, now());
    assert_eq!(
        back.served,
        Served::Forward,
        "not served from dropped reads"
    );
}

#[test]
fn nothing_read_ahead_is_served_after_a_change() {
    let (mut reads, mut ids) = (ReadAheads::default(), Counter::default());
    let first = reads.read("h", (0, LEN), 1, &mut ids, now());
    arrive(&mut reads, &first);
    reads.forget_all();
    assert_eq!(reads.held, 0);
    let next = reads.read("h", (u64::from(LEN), LEN), 2, &mut ids, now());
    assert_eq!(next.served, Served::Forward);
}

#[test]
fn a_short_answer_ends_reading_ahead_and_is_asked_again_by_the_client() {
    let (mut reads, mut ids) = (ReadAheads::default(), Counter::default());
    let first = reads.read("h", (0, LEN), 1, &mut ids, now());
    let eof = Bytes::from_static(&[101, 0, 0, 0, 0, 0, 0, 0, 1]);
    assert_eq!(
        reads.reply(first.fetch[0].id, eof.clone(), now()),
        Some(None)
    );
    assert_eq!(reads.reply(first.fetch[1].id, eof, now()), Some(None));
    let at_end = reads.read("h", (u64::from(LEN), LEN), 2, &mut ids, now());
    assert_eq!(
        at_end.served,
        Served::Forward,
        "a file that grew is seen to"
    );
    assert!(at_end.fetch.is_empty(), "nothing past the end");
    assert_eq!(reads.held, 0);
}

#[test]
fn an_answer_longer_than_asked_is_not_kept() {
    let (mut reads, mut ids) = (ReadAheads::default(), Counter::default());
    let first = reads.read("h", (0, LEN), 1, &mut ids, now());
    let mut padded = data().to_vec();
    padded.resize(2 << 20, 0);
    assert_eq!(
        reads.reply(first.fetch[0].id, Bytes::from(padded), now()),
        Some(None)
    );
    let next = reads.read("h", (u64::from(LEN), LEN), 2, &mut ids, now());
    assert_eq!(next.served, Served::Forward);
    assert!(next.fetch.is_empty(), "no more reads ahead of that file");
}

#[test]
fn an_answer_is_served_only_while_fresh() {
    let (mut reads, mut ids) = (ReadAheads::default(), Counter::default());
    let first = reads.read("h", (0, LEN), 1, &mut ids, now());
    arrive(&mut reads, &first);
    let later = now() + FRESH_FOR;
    let next = reads.read("h", (u64::from(LEN), LEN), 2, &mut ids, later);
    assert_eq!(
        next.served,
        Served::Forward,
        "the pod may have changed it since"
    );
}

#[test]
fn short_reads_and_offsets_at_the_end_of_the_range_are_only_forwarded() {
    let (mut reads, mut ids) = (ReadAheads::default(), Counter::default());
    for offset in 0..100 {
        let plan = reads.read("h", (offset, 1), 1, &mut ids, now());
        assert_eq!((plan.served, plan.fetch.len()), (Served::Forward, 0));
    }
    for offset in [u64::MAX - u64::from(LEN), u64::MAX - 1] {
        let plan = reads.read("h", (offset, LEN), 2, &mut ids, now());
        arrive(&mut reads, &plan);
    }
}

#[test]
fn files_read_at_once_share_one_bound_and_closing_frees_it() {
    let (mut reads, mut ids) = (ReadAheads::default(), Counter::default());
    let handles: Vec<String> = (0..8).map(|n| format!("h{n}")).collect();
    let mut offset = 0;
    while offset < 32 * u64::from(LEN) {
        for handle in &handles {
            let plan = reads.read(handle, (offset, LEN), 1, &mut ids, now());
            arrive(&mut reads, &plan);
            assert!(reads.held <= MOUNT_WINDOW);
        }
        offset += u64::from(LEN);
    }
    assert!(
        reads.held > FILE_WINDOW,
        "more than one file's window in all"
    );
    for handle in &handles {
        reads.close(handle);
    }
    assert_eq!(reads.held, 0);
}
