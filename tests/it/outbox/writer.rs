//! The writer and its commits: a failed commit stores nothing and the writer recovers; `stop`
//! commits what came before and refuses what comes after; one request that fails on its own
//! does not fail the others in its commit; a delivery update right after intake waits for the
//! next message's commit, and only until the hold's deadline.

use super::*;

use std::sync::Arc;
use std::sync::atomic::Ordering;

use mfoundry::outbox::{ConnectorId, Seq};

#[tokio::test]
async fn a_failed_commit_stores_nothing_and_the_writer_recovers() {
    let memory = MemoryDisk::default();
    let (outbox, writer) = Outbox::open(options_with(&memory), &names(&["a"])).expect("opens");
    outbox
        .append(message(&outbox, "BEFORE", &["a"], &[]))
        .await
        .expect("stored");
    memory.fail_sync.store(true, Ordering::SeqCst);
    let failed = outbox.append(message(&outbox, "DURING", &["a"], &[])).await;
    assert!(
        failed.is_err(),
        "a commit whose fsync failed must not report success"
    );
    memory.fail_sync.store(false, Ordering::SeqCst);
    let mut recovered = None;
    for _ in 0..20 {
        match outbox.append(message(&outbox, "AFTER", &["a"], &[])).await {
            Ok(appended) => {
                recovered = Some(appended);
                break;
            }
            Err(_) => tokio::time::sleep(std::time::Duration::from_millis(50)).await,
        }
    }
    assert!(recovered.is_some(), "the writer reopens and carries on");
    assert!(outbox.stats().reopens.load(Ordering::Relaxed) >= 1);
    let stored = common::stored_control_ids(&outbox);
    assert!(stored.contains(&"BEFORE".to_owned()));
    assert!(stored.contains(&"AFTER".to_owned()));
    // The queue size /stats shows was counted again at the reopen: it is what the store holds.
    let id = outbox.connector_id("a").expect("id");
    let held = outbox
        .snapshot()
        .expect("snapshot")
        .queue_len(id)
        .expect("len");
    assert_eq!(outbox.depth(id).queued, held);
    drop(outbox);
    writer.join();
}

/// `stop` commits what was sent before it, answers what comes after with an error (never a
/// success), and closes the store so the writer can be joined while handles remain.
#[tokio::test]
async fn stop_commits_what_came_before_and_refuses_what_comes_after() {
    let memory = MemoryDisk::default();
    let (outbox, writer) = Outbox::open(options_with(&memory), &names(&["a"])).expect("opens");
    let before = outbox.clone();
    let pending = tokio::spawn({
        let message = message(&outbox, "BEFORE", &["a"], &[]);
        async move { before.append(message).await }
    });
    // The append is in the channel before the stop (one sender keeps its order; wait until
    // the spawned task has sent it).
    while outbox.stats().records.load(Ordering::Relaxed) == 0 && !pending.is_finished() {
        tokio::task::yield_now().await;
    }
    outbox.stop().await.expect("stops");
    assert!(matches!(
        pending.await.expect("task"),
        Ok(Appended::Stored { .. })
    ));
    let after = outbox.append(message(&outbox, "AFTER", &["a"], &[])).await;
    assert!(
        after.is_err(),
        "nothing is stored after the stop: {after:?}"
    );
    // The handle still exists, yet the writer has stopped.
    writer.join();
    drop(outbox);
    let (reopened, writer) = Outbox::open(options_with(&memory), &names(&["a"])).expect("reopens");
    assert_eq!(common::stored_control_ids(&reopened), vec!["BEFORE"]);
    drop(reopened);
    writer.join();
}

#[tokio::test]
async fn one_request_that_fails_on_its_own_does_not_fail_the_others_in_its_commit() {
    let directory = tempfile::tempdir().expect("tempdir");
    let path = directory.path().join("mfoundry.redb");
    let open = || {
        let mut options = OutboxOptions::new(path.clone());
        options.dedup_window = None;
        Outbox::open(options, &names(&["a"])).expect("opens")
    };
    let (outbox, writer) = open();
    let connector = outbox.connector_id("a").expect("id");
    drop(outbox);
    writer.join();
    // A queue entry that cannot be decoded (a damaged or future record).
    {
        let database = mfoundry::outbox::datafile::open_raw(&path).expect("redb");
        let transaction = database.begin_write().expect("write");
        {
            let mut queue = transaction
                .open_table(mfoundry::outbox::schema::QUEUE)
                .expect("queue");
            queue
                .insert((connector.0, 999), b"\xff\xff".as_slice())
                .expect("insert");
        }
        transaction.commit().expect("commit");
    }
    let (outbox, writer) = open();
    for index in 0..30 {
        let (appended, marked) = tokio::join!(
            outbox.append(message(&outbox, &format!("OK{index}"), &["a"], &[])),
            outbox.mark_delivered(connector, Seq(999), 1),
        );
        appended.expect("the append is stored despite its neighbour");
        assert!(marked.is_err(), "the damaged entry fails on its own");
    }
    assert_eq!(common::stored_control_ids(&outbox).len(), 30);
    drop(outbox);
    writer.join();
}

/// An outbox with one connector `a` and `intake_hold` set, after one message was stored:
/// returns it, its writer, `a`'s id and the seq of that message's queue entry.
async fn one_message_stored(
    hold: std::time::Duration,
) -> (Outbox, mfoundry::outbox::WriterHandle, ConnectorId, Seq) {
    let memory = MemoryDisk::default();
    let mut options = options_with(&memory);
    options.intake_hold = hold;
    let (outbox, writer) = Outbox::open(options, &names(&["a"])).expect("opens");
    let a = outbox.connector_id("a").expect("a");
    outbox
        .append(message(&outbox, "R1", &["a"], &[]))
        .await
        .expect("1");
    let first = outbox
        .snapshot()
        .expect("snapshot")
        .queue(a)
        .expect("queue")[0]
        .0;
    (outbox, writer, a, first)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delivery_update_right_after_intake_shares_the_next_messages_commit() {
    // Long enough that only the next message, never the deadline, ends the hold here.
    let (outbox, writer, a, first) = one_message_stored(std::time::Duration::from_secs(30)).await;
    let outbox = Arc::new(outbox);
    let commits = outbox.stats().commits.load(Ordering::Relaxed);

    let marking = tokio::spawn({
        let outbox = Arc::clone(&outbox);
        async move { outbox.mark_delivered(a, first, 1).await }
    });
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    assert!(
        !marking.is_finished(),
        "the update waits for the next received message"
    );
    let second = stored(
        outbox
            .append(message(&outbox, "R2", &["a"], &[]))
            .await
            .expect("2"),
    );
    assert!(marking.await.expect("task").expect("mark"));
    assert_eq!(
        outbox.stats().commits.load(Ordering::Relaxed),
        commits + 1,
        "one commit carried the update and the message"
    );
    let snapshot = outbox.snapshot().expect("snapshot");
    let queued: Vec<MessageId> = snapshot
        .queue(a)
        .expect("queue")
        .into_iter()
        .map(|(_, entry)| entry.message_id)
        .collect();
    assert_eq!(
        queued,
        vec![second],
        "the first delivered, the second queued"
    );
    drop(snapshot);
    drop(outbox);
    writer.join();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delivery_update_is_held_only_right_after_intake_and_only_until_the_deadline() {
    let hold = std::time::Duration::from_secs(1);
    let (outbox, writer, a, first) = one_message_stored(hold).await;
    // No message follows: the update commits on its own when the hold ends.
    let started = std::time::Instant::now();
    assert!(outbox.mark_delivered(a, first, 1).await.expect("mark"));
    assert!(started.elapsed() >= hold, "{:?}", started.elapsed());
    // The last commit stored no message: nothing is held now.
    let started = std::time::Instant::now();
    assert!(!outbox.mark_delivered(a, first, 1).await.expect("mark"));
    assert!(started.elapsed() < hold, "{:?}", started.elapsed());
    drop(outbox);
    writer.join();
}
