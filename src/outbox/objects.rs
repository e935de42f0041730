//! The DICOM object index (ADR 0020): which stored message holds each SOP Instance UID, so a
//! re-store of the same object is recognised at any time, not only within the retransmit
//! window.
//!
//! `OBJECTS`: `(tag, 0) → message id (8 bytes LE) ‖ SHA-256 of the data set (32 bytes)`.
//! The tag is the first 8 bytes of `SHA-256(instance id ‖ "sop" ‖ listener ‖ 0 ‖ UID)`: an
//! object is stored once per listener (another listener routes with other `inbound`
//! filters, so the same object arriving there is routed there too); the UIDs are not
//! kept in the clear outside the (sealed) records, and the per-store salt keeps the tags of
//! two stores apart. It is not a secret: whoever holds the data directory can test a UID
//! they already know, as they could read an unencrypted store. The entry is written in the
//! commit that stores the message, replaced by a later object with the same UID and other
//! bytes, and removed by retention with the message it names.

use redb::{ReadableTable, Table, TableDefinition};
use sha2::{Digest, Sha256};

use super::StoreError;

/// `(tag, 0) → message id ‖ digest`.
pub const OBJECTS: TableDefinition<(u64, u64), &[u8]> = TableDefinition::new("objects");

/// What identifies a stored object: the listener it came through, its SOP Instance UID and
/// the digest of its bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ObjectKey {
    /// The listener's name.
    pub listener: String,
    /// The SOP Instance UID.
    pub sop_instance_uid: String,
    /// SHA-256 of the data set as received.
    pub digest: [u8; 32],
}

impl ObjectKey {
    /// The key of an object with this UID and data set, received by `listener`.
    pub fn new(listener: &str, sop_instance_uid: &str, data_set: &[u8]) -> Self {
        Self {
            listener: listener.to_owned(),
            sop_instance_uid: sop_instance_uid.to_owned(),
            digest: Sha256::digest(data_set).into(),
        }
    }

    fn tag(&self, salt: u64) -> (u64, u64) {
        tag(salt, &self.listener, &self.sop_instance_uid)
    }
}

/// The index key of a UID received by `listener`, in the store with `salt` (its instance
/// id).
pub(super) fn tag(salt: u64, listener: &str, uid: &str) -> (u64, u64) {
    let mut hash = Sha256::new();
    hash.update(salt.to_le_bytes());
    hash.update(b"sop");
    hash.update(listener.as_bytes());
    hash.update([0]);
    hash.update(uid.as_bytes());
    let digest = hash.finalize();
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    (u64::from_le_bytes(first), 0)
}

/// What the index knows of an object.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Seen {
    /// Not stored (or its message is gone).
    New,
    /// Stored with the same bytes, as this message.
    Same(u64),
    /// Stored with other bytes.
    Changed,
}

/// Look `key` up; `exists` says whether a message id is still stored.
pub(super) fn lookup(
    table: &Table<'_, (u64, u64), &[u8]>,
    salt: u64,
    key: &ObjectKey,
    exists: impl FnOnce(u64) -> Result<bool, StoreError>,
) -> Result<Seen, StoreError> {
    let Some(value) = table.get(key.tag(salt))? else {
        return Ok(Seen::New);
    };
    let value = value.value();
    let Some((id, digest)) = split(value) else {
        return Ok(Seen::New);
    };
    if !exists(id)? {
        return Ok(Seen::New);
    }
    Ok(if digest == key.digest {
        Seen::Same(id)
    } else {
        Seen::Changed
    })
}

fn split(value: &[u8]) -> Option<(u64, [u8; 32])> {
    if value.len() != 40 {
        return None;
    }
    let mut id = [0u8; 8];
    id.copy_from_slice(&value[..8]);
    let mut digest = [0u8; 32];
    digest.copy_from_slice(&value[8..]);
    Some((u64::from_le_bytes(id), digest))
}

/// Point the UID at message `id`.
pub(super) fn insert(
    table: &mut Table<'_, (u64, u64), &[u8]>,
    salt: u64,
    key: &ObjectKey,
    id: u64,
) -> Result<(), StoreError> {
    let mut value = [0u8; 40];
    value[..8].copy_from_slice(&id.to_le_bytes());
    value[8..].copy_from_slice(&key.digest);
    table.insert(key.tag(salt), &value[..])?;
    Ok(())
}

/// Remove the entry of the UID `listener` received if it names message `id` (retention of
/// that message).
pub(super) fn remove(
    table: &mut Table<'_, (u64, u64), &[u8]>,
    salt: u64,
    listener: &str,
    uid: &str,
    id: u64,
) -> Result<(), StoreError> {
    let key = tag(salt, listener, uid);
    let names_it = table
        .get(key)?
        .and_then(|value| split(value.value()))
        .is_some_and(|(stored, _)| stored == id);
    if names_it {
        table.remove(key)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_differ_by_store_and_by_uid() {
        assert_ne!(tag(1, "in", "1.2.3"), tag(2, "in", "1.2.3"));
        assert_ne!(tag(1, "in", "1.2.3"), tag(1, "in", "1.2.4"));
        assert_ne!(tag(1, "in", "1.2.3"), tag(1, "other", "1.2.3"));
        assert_eq!(tag(1, "in", "1.2.3"), tag(1, "in", "1.2.3"));
    }

    #[test]
    fn an_object_is_new_then_the_same_then_changed() {
        let file = tempfile::NamedTempFile::new().expect("in the test");
        let database = redb::Database::create(file.path()).expect("in the test");
        let transaction = database.begin_write().expect("in the test");
        {
            let mut table = transaction.open_table(OBJECTS).expect("in the test");
            let key = ObjectKey::new("in", "1.2.3", b"bytes");
            assert_eq!(
                lookup(&table, 7, &key, |_| Ok(true)).expect("in the test"),
                Seen::New
            );
            insert(&mut table, 7, &key, 42).expect("in the test");
            assert_eq!(
                lookup(&table, 7, &key, |_| Ok(true)).expect("in the test"),
                Seen::Same(42)
            );
            assert_eq!(
                lookup(&table, 7, &key, |_| Ok(false)).expect("in the test"),
                Seen::New,
                "a message retention removed is stored again"
            );
            let other = ObjectKey::new("in", "1.2.3", b"other bytes");
            assert_eq!(
                lookup(&table, 7, &other, |_| Ok(true)).expect("in the test"),
                Seen::Changed
            );
            remove(&mut table, 7, "in", "1.2.3", 41).expect("in the test");
            assert_eq!(
                lookup(&table, 7, &key, |_| Ok(true)).expect("in the test"),
                Seen::Same(42),
                "only the entry naming the removed message goes"
            );
            remove(&mut table, 7, "in", "1.2.3", 42).expect("in the test");
            assert_eq!(
                lookup(&table, 7, &key, |_| Ok(true)).expect("in the test"),
                Seen::New
            );
        }
        transaction.commit().expect("in the test");
    }
}
