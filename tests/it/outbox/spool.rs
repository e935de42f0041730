//! Spooled bodies in the store (ADR 0020): a body named by its `spool` entry reads back
//! whole, `store verify` reads its file, a damaged file is damage named by message, and
//! `store rekey` seals the files again with the new key.

use bytes::Bytes;
use mfoundry::outbox::crypt::{Keys, StoreKey};
use mfoundry::outbox::{Outbox, OutboxOptions, StoreError};

use super::{message, names, stored};

/// A DICOM object's message whose body is the spooled `reference`.
fn spooled_message(
    outbox: &Outbox,
    uid: &str,
    reference: mfoundry::outbox::spool::SpoolRef,
) -> mfoundry::outbox::NewMessage {
    let mut new = message(outbox, uid, &["a"], &[]);
    new.body = Bytes::new();
    new.record.body_len = reference.len;
    new.spool = Some(reference);
    new.object = Some(mfoundry::outbox::ObjectKey {
        listener: "modalities".to_owned(),
        sop_instance_uid: uid.to_owned(),
        digest: reference.digest,
    });
    new
}

fn write_spooled(
    spool: &mfoundry::outbox::spool::Spool,
    body: &[u8],
) -> mfoundry::outbox::spool::SpoolRef {
    let mut file = spool.create(0).expect("create");
    file.write(body).expect("write");
    let mut spooled = file.finish().expect("finish");
    spooled.keep();
    spooled.reference
}

#[tokio::test]
async fn a_duplicates_file_is_removed_after_its_commit_and_a_retried_originals_is_kept() {
    let scratch = tempfile::tempdir().expect("tempdir");
    let data = scratch.path().join("mfoundry.redb");
    let (outbox, writer) = open(&data, Keys::plain());
    let spool = outbox.spool().expect("a store on disk spools").clone();
    let body = vec![7u8; 300_000];
    let first = write_spooled(&spool, &body);
    let id = stored(
        outbox
            .append(spooled_message(&outbox, "1.2.3.4", first))
            .await
            .expect("append"),
    );
    // The same object again, spooled to a second file: a duplicate, its file removed.
    let second = write_spooled(&spool, &body);
    assert_ne!(second.file, first.file);
    let appended = outbox
        .append(spooled_message(&outbox, "1.2.3.4", second))
        .await
        .expect("append");
    assert!(
        matches!(appended, mfoundry::outbox::Appended::Duplicate { id: original, .. } if original == id),
        "{appended:?}"
    );
    // The original's own request again (a retry after a commit reported failed that did
    // reach the disk): answered as stored, under the original's id, nothing removed.
    let appended = outbox
        .append(spooled_message(&outbox, "1.2.3.4", first))
        .await
        .expect("append");
    assert_eq!(appended, mfoundry::outbox::Appended::Stored { id });
    // So too an object without an index key (stored as ERROR): never two messages on one
    // file.
    let third = write_spooled(&spool, &[9u8; 200_000]);
    let mut refused = spooled_message(&outbox, "1.2.3.5", third);
    refused.object = None;
    let once = stored(outbox.append(refused.clone()).await.expect("append"));
    let again = outbox.append(refused).await.expect("append");
    assert_eq!(again, mfoundry::outbox::Appended::Stored { id: once });
    let count = outbox
        .snapshot()
        .expect("snapshot")
        .message_count()
        .expect("count");
    assert_eq!(count, 2, "the object and the refused one, each once");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while spool.exists(second.file) && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    assert!(
        !spool.exists(second.file),
        "the duplicate's file is removed"
    );
    assert!(spool.exists(first.file), "the original's file stays");
    let snapshot = outbox.snapshot().expect("snapshot");
    assert_eq!(snapshot.body(id).expect("read").expect("body"), body);
    drop(snapshot);
    drop(outbox);
    writer.join();
}

fn open(data: &std::path::Path, keys: Keys) -> (Outbox, mfoundry::outbox::WriterHandle) {
    let mut options = OutboxOptions::new(data.to_path_buf());
    options.keys = keys;
    Outbox::open(options, &names(&["a"])).expect("opens")
}

fn spool_files(data: &std::path::Path) -> Vec<std::path::PathBuf> {
    std::fs::read_dir(mfoundry::outbox::spool::dir_of(data))
        .expect("the spool directory")
        .map(|entry| entry.expect("entry").path())
        .collect()
}

#[tokio::test]
async fn a_spooled_body_reads_back_verifies_and_is_resealed_by_a_rekey() {
    let scratch = tempfile::tempdir().expect("tempdir");
    let data = scratch.path().join("mfoundry.redb");
    let body: Vec<u8> = b"SPOOLCANARY"
        .iter()
        .copied()
        .cycle()
        .take(700_000)
        .collect();
    let (outbox, writer) = open(&data, Keys::plain());
    let spool = outbox.spool().expect("a store on disk spools").clone();
    let reference = write_spooled(&spool, &body);
    let mut new = message(&outbox, "SPOOLED-1", &["a"], &[]);
    new.body = Bytes::new();
    new.record.body_len = body.len() as u64;
    new.spool = Some(reference);
    let id = stored(outbox.append(new).await.expect("append"));
    let snapshot = outbox.snapshot().expect("snapshot");
    assert_eq!(snapshot.body(id).expect("read").expect("body"), body);
    assert_eq!(
        snapshot.body_head(id, 100).expect("head").expect("body"),
        body[..100]
    );
    assert!(snapshot.verify().expect("verify").is_intact());
    drop(snapshot);

    // A file changed on disk is damage, named by its message, never other bytes.
    let path = spool_files(&data).pop().expect("one file");
    let original = std::fs::read(&path).expect("read");
    let mut changed = original.clone();
    let last = changed.len() - 1;
    changed[last] ^= 1;
    std::fs::write(&path, &changed).expect("write");
    let snapshot = outbox.snapshot().expect("snapshot");
    match snapshot.body(id) {
        Err(StoreError::Damaged(what)) => {
            assert!(what.contains(&format!("message {id}")), "{what}")
        }
        other => panic!(
            "expected damage, got {:?}",
            other.map(|body| body.map(|b| b.len()))
        ),
    }
    assert!(!snapshot.verify().expect("verify").is_intact());
    drop(snapshot);
    std::fs::write(&path, &original).expect("write");
    drop(outbox);
    writer.join();

    // A rekey seals the body into a new file; the plain one is gone.
    let keys = Keys::new(StoreKey::from_bytes(&[5; 32]), Vec::new());
    let rekeyed = mfoundry::outbox::rekey::rekey(&data, false, &keys, |_, _| {}).expect("rekeyed");
    assert_eq!(rekeyed.records.get("spool"), Some(&1));
    let files = spool_files(&data);
    assert_eq!(files.len(), 1, "{files:?}");
    assert_ne!(files[0], path);
    let raw = std::fs::read(&files[0]).expect("read");
    assert!(!raw.windows(11).any(|window| window == b"SPOOLCANARY"));
    let (outbox, writer) = open(&data, keys);
    let snapshot = outbox.snapshot().expect("snapshot");
    assert_eq!(snapshot.body(id).expect("read").expect("body"), body);
    let report = snapshot.verify().expect("verify");
    assert!(report.is_intact() && report.unsealed == 0, "{report:?}");
    drop(snapshot);
    drop(outbox);
    writer.join();
}
