//! Batches in the store: `append_batch` stores every message of a batch in one commit (all or
//! none: a failed commit stores none of them), a file's mark stops a second store of the same
//! file across a reopen, and retention removes old marks.

use super::*;

use std::sync::atomic::Ordering;

use mfoundry::outbox::{BatchAppended, FileMark};

fn mark(byte: u8) -> FileMark {
    FileMark {
        sha256: [byte; 32],
        size: 42,
        listener: "lab-drop".to_owned(),
    }
}

fn batch(outbox: &Outbox, prefix: &str, count: usize) -> Vec<NewMessage> {
    (0..count)
        .map(|index| message(outbox, &format!("{prefix}-{index}"), &["a"], &[]))
        .collect()
}

#[tokio::test]
async fn a_batch_is_stored_whole_and_a_marked_file_only_once_across_a_reopen() {
    let memory = MemoryDisk::default();
    let (outbox, writer) = Outbox::open(options_with(&memory), &names(&["a"])).expect("opens");
    let appended = outbox
        .append_batch(batch(&outbox, "F", 3), Some(mark(7)))
        .await
        .expect("stored");
    let BatchAppended::Stored(appended) = appended else {
        panic!("expected the batch stored, got {appended:?}");
    };
    let ids: Vec<MessageId> = appended.into_iter().map(stored).collect();
    assert_eq!(ids.len(), 3);
    assert!(ids.windows(2).all(|pair| pair[0] < pair[1]), "in order");
    assert_eq!(common::stored_control_ids(&outbox), ["F-0", "F-1", "F-2"]);
    drop(outbox);
    writer.join();

    let (outbox, writer) = Outbox::open(options_with(&memory), &names(&["a"])).expect("reopens");
    let again = outbox
        .append_batch(batch(&outbox, "G", 2), Some(mark(7)))
        .await
        .expect("answered");
    match again {
        BatchAppended::FileSeen(record) => {
            assert_eq!(record.messages, 3);
            assert_eq!(record.first_message, Some(ids[0].0));
            assert_eq!(record.listener, "lab-drop");
            assert_eq!(record.size, 42);
        }
        other => panic!("expected the file recognised, got {other:?}"),
    }
    assert_eq!(
        common::stored_control_ids(&outbox),
        ["F-0", "F-1", "F-2"],
        "nothing written for a file stored before"
    );
    // Another file (another mark) is stored.
    let other = outbox
        .append_batch(batch(&outbox, "H", 1), Some(mark(8)))
        .await
        .expect("stored");
    assert!(matches!(other, BatchAppended::Stored(ref stored) if stored.len() == 1));

    // Retention removes marks older than its cutoff once a whole pass is done; the file can
    // then be stored again.
    let retained = outbox
        .retain(i64::MAX, None, 1000)
        .await
        .expect("retention");
    assert_eq!(retained.file_marks, 2, "{retained:?}");
    let after = outbox
        .append_batch(batch(&outbox, "I", 1), Some(mark(7)))
        .await
        .expect("stored");
    assert!(matches!(after, BatchAppended::Stored(_)), "{after:?}");
    drop(outbox);
    writer.join();
}

/// A commit whose sync failed is not reported as a success; what reached the disk is then
/// the whole batch or none of it (the same file's mark says which), never a part.
#[tokio::test]
async fn a_batch_whose_commit_fails_is_stored_whole_or_not_at_all() {
    let memory = MemoryDisk::default();
    let (outbox, writer) = Outbox::open(options_with(&memory), &names(&["a"])).expect("opens");
    memory.fail_sync.store(true, Ordering::SeqCst);
    let failed = outbox
        .append_batch(batch(&outbox, "LOST", 4), Some(mark(1)))
        .await;
    assert!(failed.is_err(), "a failed commit never reports success");
    memory.fail_sync.store(false, Ordering::SeqCst);
    let mut again = None;
    for _ in 0..20 {
        match outbox
            .append_batch(batch(&outbox, "LOST", 4), Some(mark(1)))
            .await
        {
            Ok(appended) => {
                again = Some(appended);
                break;
            }
            Err(_) => tokio::time::sleep(std::time::Duration::from_millis(50)).await,
        }
    }
    let again = again.expect("the writer reopens and carries on");
    drop(outbox);
    writer.join();
    let (outbox, writer) = Outbox::open(options_with(&memory), &names(&["a"])).expect("reopens");
    let stored = common::stored_control_ids(&outbox);
    assert_eq!(
        stored,
        ["LOST-0", "LOST-1", "LOST-2", "LOST-3"],
        "the batch once, whole: {again:?}"
    );
    drop(outbox);
    writer.join();
}
