//! Reading spooled bodies (ADR 0020, decision 10): a body's head, where it is, and a file
//! retention removed after the snapshot began told from a missing one.

use redb::ReadableDatabase;

use super::{Snapshot, name_message};
use crate::outbox::crypt::Place;
use crate::outbox::spool::{SPOOL, Spool, SpoolRef};
use crate::outbox::{MessageId, StoreError, schema};

impl Snapshot {
    /// At most the first `max` bytes of a message's body: the whole body unless it is
    /// spooled (a large DICOM object, whose header is all a view needs).
    pub fn body_head(&self, id: MessageId, max: usize) -> Result<Option<Vec<u8>>, StoreError> {
        match self.spool_ref(id)? {
            Some(reference) => {
                let (spool, _) = self.spooled(id, reference.len)?;
                match spool.read_head(&reference, max) {
                    Ok(head) => Ok(Some(head)),
                    Err(_) if self.removed_since(id, reference.file) => Ok(None),
                    Err(error) => Err(name_message(id, error)),
                }
            }
            None => self.body(id),
        }
    }

    /// Where a message's spooled body is, when it is spooled.
    pub fn spool_ref(&self, id: MessageId) -> Result<Option<SpoolRef>, StoreError> {
        let table = self.transaction.open_table(SPOOL)?;
        let Some(value) = table.get(id.0)? else {
            return Ok(None);
        };
        let reference: SpoolRef = schema::decode(&self.keys, Place::Spool(id.0), value.value())
            .map_err(|error| name_message(id, error))?;
        Ok(Some(reference))
    }

    /// A spooled body's entry and the spool to read it from; damage when there is none.
    pub(super) fn spooled(
        &self,
        id: MessageId,
        body_len: u64,
    ) -> Result<(&Spool, SpoolRef), StoreError> {
        let reference = self.spool_ref(id)?.ok_or_else(|| {
            StoreError::Damaged(format!("message {id}: its body is missing from the store"))
        })?;
        if reference.len != body_len {
            return Err(StoreError::Damaged(format!(
                "message {id}: its spooled body's length differs from its record's"
            )));
        }
        let spool = self.spool.as_deref().ok_or_else(|| {
            StoreError::Damaged(format!(
                "message {id}: its body is spooled, and this reader has no spool directory"
            ))
        })?;
        Ok((spool, reference))
    }

    /// Whether message `id`'s spooled file is missing because a commit after this snapshot
    /// removed its entry (retention): the message is gone, not damaged.
    pub(super) fn removed_since(&self, id: MessageId, file: u128) -> bool {
        let (Some(spool), Some(database)) = (&self.spool, &self.database) else {
            return false;
        };
        if spool.exists(file) {
            return false;
        }
        let Some(database) = database.upgrade() else {
            return false;
        };
        database
            .begin_read()
            .ok()
            .and_then(|now| now.open_table(SPOOL).ok())
            .and_then(|table| table.get(id.0).ok())
            .is_some_and(|entry| entry.is_none())
    }
}
