//! The patient index (ADR 0019) in the store: entries written with the message, built from
//! the bodies when a store has none or was indexed with another key, removed by retention.

use super::*;

use mfoundry::hl7::Charset;
use mfoundry::outbox::crypt::{Keys, StoreKey};
use mfoundry::outbox::patients::IndexField;

fn adt(control_id: &str, mrn: &str, family: &str) -> Bytes {
    Bytes::from(format!(
        "MSH|^~\\&|A|B|C|D|20261206||ADT^A08|{control_id}|P|2.5\rPID|1||{mrn}^^^H^MR||{family}^ANN\r"
    ))
}

/// Ids with the patient value, newest first, read through the index.
fn found(outbox: &Outbox, field: IndexField, value: &str) -> Vec<MessageId> {
    let tag = outbox.index_tag(field, value).expect("a tag");
    let mut ids = Vec::new();
    outbox
        .snapshot()
        .expect("snapshot")
        .scan_patient_messages_desc(&[tag], None, 100_000, |id, _| {
            ids.push(id);
            Ok(true)
        })
        .expect("scan");
    ids
}

/// Entries in the patient index now.
fn index_len(outbox: &Outbox) -> u64 {
    outbox
        .snapshot()
        .expect("snapshot")
        .patient_index_len()
        .expect("len")
}

fn open(memory: &MemoryDisk, keys: Keys, index: bool) -> (Outbox, mfoundry::outbox::WriterHandle) {
    let mut options = options_with(memory);
    options.keys = keys;
    if index {
        options.patient_fields = Some(mfoundry::ingest::patient_reader(Charset::UTF_8));
    }
    Outbox::open(options, &names(&["a"])).expect("opens")
}

#[tokio::test]
async fn the_index_is_built_from_the_bodies_when_missing_or_keyed_otherwise_and_retention_empties_it()
 {
    let memory = MemoryDisk::default();
    // A store whose messages were stored without index entries (as by format 5).
    let (outbox, writer) = open(&memory, Keys::plain(), false);
    let mut ids = Vec::new();
    for (control_id, mrn, family) in [("P1", "MRN-1", "Okafor"), ("P2", "MRN-2", "okafor ")] {
        let mut new = message(&outbox, control_id, &[], &["a"]);
        new.body = adt(control_id, mrn, family);
        ids.push(stored(outbox.append(new).await.expect("append")));
    }
    assert_eq!(index_len(&outbox), 0);
    drop(outbox);
    writer.join();

    // The gateway's open builds it from the bodies.
    let (outbox, writer) = open(&memory, Keys::plain(), true);
    assert_eq!(
        found(&outbox, IndexField::Identifier, "mrn-1"),
        vec![ids[0]]
    );
    assert_eq!(
        found(&outbox, IndexField::FamilyName, " OKAFOR"),
        vec![ids[1], ids[0]]
    );
    assert!(found(&outbox, IndexField::Identifier, "Okafor").is_empty());
    // New messages get their entries in their own commit.
    let mut new = message(&outbox, "P3", &[], &["a"]);
    new.body = adt("P3", "MRN-1", "Adeyemi");
    new.patient = vec![
        (IndexField::Identifier, "MRN-1".to_owned()),
        (IndexField::FamilyName, "Adeyemi".to_owned()),
    ];
    ids.push(stored(outbox.append(new).await.expect("append")));
    assert_eq!(
        found(&outbox, IndexField::Identifier, "MRN-1"),
        vec![ids[2], ids[0]]
    );
    let plain_tag = outbox.index_tag(IndexField::Identifier, "MRN-1");
    drop(outbox);
    writer.join();

    // A store key changes the index key: the index is made again with it.
    let keys = Keys::new(StoreKey::from_bytes(&[7; 32]), Vec::new());
    let (outbox, writer) = open(&memory, keys, true);
    assert_ne!(outbox.index_tag(IndexField::Identifier, "MRN-1"), plain_tag);
    assert_eq!(
        found(&outbox, IndexField::Identifier, "MRN-1"),
        vec![ids[2], ids[0]]
    );
    assert_eq!(
        found(&outbox, IndexField::FamilyName, "adeyemi"),
        vec![ids[2]]
    );
    // Unrouted messages are done: retention removes them and their entries.
    let retained = outbox.retain(i64::MAX, None, 100).await.expect("retain");
    assert_eq!(retained.removed, 3);
    assert_eq!(index_len(&outbox), 0);
    drop(outbox);
    writer.join();
}

/// A rebuild cut short (here: the reader panics half way, as a process killed would stop)
/// resumes after the last step it committed, and the index ends whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rebuild_cut_short_resumes_where_it_stopped() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    const COUNT: usize = 6_000;
    let memory = MemoryDisk::default();
    let (outbox, writer) = open(&memory, Keys::plain(), false);
    let batch: Vec<NewMessage> = (0..COUNT)
        .map(|n| {
            let control_id = format!("R{n}");
            let mut new = message(&outbox, &control_id, &[], &["a"]);
            new.body = adt(&control_id, &format!("MRN-{}", n % 7), "Resume");
            new
        })
        .collect();
    outbox.append_batch(batch, None).await.expect("stored");
    drop(outbox);
    writer.join();

    let reads = Arc::new(AtomicUsize::new(0));
    let reader = |stop_at: Option<usize>| {
        let plain = mfoundry::ingest::patient_reader(Charset::UTF_8);
        let reads = Arc::clone(&reads);
        mfoundry::outbox::patients::PatientReader {
            read: Arc::new(move |body: &[u8]| {
                let done = reads.fetch_add(1, Ordering::SeqCst);
                assert!(Some(done) != stop_at, "stopped half way");
                (plain.read)(body)
            }),
            version: plain.version.clone(),
        }
    };
    let open_with = |reader: mfoundry::outbox::patients::PatientReader| {
        let mut options = options_with(&memory);
        options.patient_fields = Some(reader);
        Outbox::open(options, &names(&["a"]))
    };
    let cut = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        open_with(reader(Some(COUNT - 500))).map(|(outbox, writer)| {
            drop(outbox);
            writer.join();
        })
    }));
    assert!(cut.is_err(), "the first rebuild stopped");
    let before = reads.swap(0, Ordering::SeqCst);
    assert_eq!(before, COUNT - 499);

    let (outbox, writer) = open_with(reader(None)).expect("opens");
    let again = reads.load(Ordering::SeqCst);
    assert!(
        again < COUNT - 4_000,
        "resumed after the committed step: {again} bodies read again"
    );
    let all: usize = (0..7)
        .map(|n| found(&outbox, IndexField::Identifier, &format!("MRN-{n}")).len())
        .sum();
    assert_eq!(all, COUNT);
    assert_eq!(
        found(&outbox, IndexField::FamilyName, "resume").len(),
        COUNT
    );
    drop(outbox);
    writer.join();
}

/// With the index off, messages get no entries and the index counts as not built: the
/// next open with it on builds it whole.
#[tokio::test]
async fn an_index_switched_off_is_built_whole_when_switched_on() {
    let memory = MemoryDisk::default();
    let (outbox, writer) = open(&memory, Keys::plain(), true);
    let mut first = message(&outbox, "ON-1", &[], &["a"]);
    first.body = adt("ON-1", "MRN-9", "Okafor");
    first.patient = vec![(IndexField::Identifier, "MRN-9".to_owned())];
    let first = stored(outbox.append(first).await.expect("append"));
    drop(outbox);
    writer.join();

    let mut options = options_with(&memory);
    options.patient_fields = Some(mfoundry::ingest::patient_reader(Charset::UTF_8));
    options.patient_index = false;
    let (outbox, writer) = Outbox::open(options, &names(&["a"])).expect("opens");
    assert!(!outbox.patient_index_on());
    let mut second = message(&outbox, "OFF-1", &[], &["a"]);
    second.body = adt("OFF-1", "MRN-9", "Okafor");
    second.patient = vec![(IndexField::Identifier, "MRN-9".to_owned())];
    let second = stored(outbox.append(second).await.expect("append"));
    assert_eq!(found(&outbox, IndexField::Identifier, "MRN-9"), vec![first]);
    drop(outbox);
    writer.join();

    let (outbox, writer) = open(&memory, Keys::plain(), true);
    assert_eq!(
        found(&outbox, IndexField::Identifier, "MRN-9"),
        vec![second, first]
    );
    drop(outbox);
    writer.join();
}

/// A message is found by patient at once (from its list of tags) and after the merge (from
/// the tag-ordered entries), and a page boundary between the two loses and repeats nothing.
#[tokio::test]
async fn messages_are_found_before_and_after_the_merge_across_pages() {
    let memory = MemoryDisk::default();
    let (outbox, writer) = open(&memory, Keys::plain(), true);
    let mut ids = Vec::new();
    for n in 0..10 {
        let control_id = format!("M{n}");
        let mut new = message(&outbox, &control_id, &[], &["a"]);
        new.body = adt(
            &control_id,
            "MRN-7",
            if n % 2 == 0 { "Even" } else { "Odd" },
        );
        new.patient = vec![
            (IndexField::Identifier, "MRN-7".to_owned()),
            (
                IndexField::FamilyName,
                if n % 2 == 0 { "Even" } else { "Odd" }.to_owned(),
            ),
        ];
        ids.push(stored(outbox.append(new).await.expect("append")));
        if n == 5 {
            // The first six merged, the last four only listed.
            assert_eq!(
                outbox.merge_patient_index(100).await.expect("merge"),
                (6, false)
            );
        }
    }
    let newest_first: Vec<MessageId> = ids.iter().rev().copied().collect();
    assert_eq!(
        found(&outbox, IndexField::Identifier, "mrn-7"),
        newest_first
    );
    let odd: Vec<MessageId> = newest_first
        .iter()
        .copied()
        .filter(|id| ids.iter().position(|x| x == id).expect("one of them") % 2 == 1)
        .collect();
    let both = |outbox: &Outbox| {
        let tags = [
            outbox
                .index_tag(IndexField::Identifier, "MRN-7")
                .expect("tag"),
            outbox
                .index_tag(IndexField::FamilyName, "odd")
                .expect("tag"),
        ];
        // Pages of three, each continuing below the last.
        let mut pages = Vec::new();
        let mut before = None;
        loop {
            let mut page = Vec::new();
            let next = outbox
                .snapshot()
                .expect("snapshot")
                .scan_patient_messages_desc(&tags, before, 3, |id, _| {
                    page.push(id);
                    Ok(true)
                })
                .expect("scan");
            pages.extend(page);
            match next {
                Some(next) => before = Some(next),
                None => break,
            }
        }
        pages
    };
    assert_eq!(both(&outbox), odd);
    // Merged in steps of three; the answers stay the same.
    assert_eq!(
        outbox.merge_patient_index(3).await.expect("merge"),
        (3, true)
    );
    assert_eq!(both(&outbox), odd);
    assert_eq!(
        found(&outbox, IndexField::Identifier, "MRN-7"),
        newest_first
    );
    // Retention removes merged and listed entries alike (one message is not merged yet).
    outbox.retain(i64::MAX, None, 100).await.expect("retain");
    assert_eq!(index_len(&outbox), 0);
    drop(outbox);
    writer.join();
}
