//! Dead-letter queues, one implementation for the admin API and `mfoundry dlq --offline`:
//! the same JSON, the same limits, one transaction per replay or purge with its audit record
//! written in it.
//!
//! A dead letter keeps what the downstream system answered in its own words (`downstream`):
//! it can hold patient data, so it is returned only to callers allowed to read message bodies
//! (the operator and admin roles; the offline commands, which read the data file directly).

use std::collections::HashMap;

use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::views::{MessageSummary, connector_states, summary};
use crate::outbox::{
    AuditContext, ConnectorId, DlqEntry, EntryRef, Outbox, Seq, Snapshot, StoreError,
};
use crate::units::format_micros;

/// Most entries returned in one page.
pub const MAX_PAGE: usize = 500;
/// Entries in a page when no limit is given.
pub const DEFAULT_PAGE: usize = 50;
/// Most entries one replay or purge takes.
pub const MAX_BATCH: usize = 10_000;

/// Which entries to list.
#[derive(Debug, Default, Clone, Deserialize, Serialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct DlqQuery {
    /// One connector (default: every connector, `limit` entries each).
    pub connector: Option<String>,
    /// Continue after this seq (with `connector`).
    pub after: Option<u64>,
    /// Page size, 1 to 500 (default 50).
    pub limit: Option<usize>,
}

/// An entry named by connector and seq.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
pub struct EntryView {
    /// Connector name.
    pub connector: String,
    /// Seq in its queue.
    pub seq: u64,
}

/// An earlier life of a dead letter: a dead-letter entry it was replayed from.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
pub struct PastView {
    /// Connector name.
    pub connector: String,
    /// Its seq.
    pub seq: u64,
    /// Attempts it had.
    pub attempts: u32,
    /// Why it was given up on.
    pub reason: String,
    /// When, RFC 3339.
    pub failed_at: String,
}

/// A dead-letter entry.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct DlqItem {
    /// Connector name.
    pub connector: String,
    /// The entry's seq (its position in the queue it left).
    pub seq: u64,
    /// The message id.
    pub message_id: u64,
    /// MSH-10 of the message.
    pub control_id: String,
    /// MSH-9 as `type^trigger`.
    pub message_type: String,
    /// Attempts made.
    pub attempts: u32,
    /// When it was given up on, RFC 3339.
    pub failed_at: String,
    /// Why (mfoundry's words).
    pub reason: String,
    /// What the downstream system answered, in its own words (an ACK's MSA and ERR segments,
    /// the first 1 KiB of an HTTP body). Only for callers allowed to read message bodies.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub downstream: Option<String>,
    /// For an entry replayed before: the entry it was first.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub origin: Option<EntryView>,
    /// Its earlier lives (the dead letters it was replayed from), oldest first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub history: Vec<PastView>,
    /// True when the stored message is damaged (fails its checksum): header fields are then
    /// empty.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub message_damaged: bool,
}

/// A page of dead-letter entries, oldest first per connector.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct DlqPage {
    /// The entries.
    pub entries: Vec<DlqItem>,
    /// With `connector`: pass as `after` for the next page; absent at the end.
    pub next_after: Option<u64>,
    /// Without `connector`: true when some connector had more than `limit` entries.
    pub truncated: bool,
}

/// A dead-letter entry with its message's summary (no body).
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct DlqDetail {
    /// The entry.
    pub entry: DlqItem,
    /// Its message (absent if it was removed or is damaged).
    pub message: Option<MessageSummary>,
}

/// Which dead-letter entries to replay.
#[derive(Debug, Default, Clone, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReplayRequest {
    /// These seqs, in this order.
    #[serde(default)]
    pub seqs: Vec<u64>,
    /// Every entry of the connector, oldest first (at most 10,000 per request).
    #[serde(default)]
    pub all: bool,
    /// Queue them for this connector instead of their own.
    pub to: Option<String>,
}

/// Which dead-letter entries to purge.
#[derive(Debug, Default, Clone, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PurgeRequest {
    /// These seqs.
    #[serde(default)]
    pub seqs: Vec<u64>,
    /// Every entry of the connector (at most 10,000 per request).
    #[serde(default)]
    pub all: bool,
}

/// One replayed entry.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Replayed {
    /// The dead-letter seq.
    pub seq: u64,
    /// Its new queue seq (a fresh place at the tail of the queue).
    pub new_seq: u64,
}

/// What a replay did.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ReplayResult {
    /// Entries put back at the tail of the queue, in order.
    pub replayed: Vec<Replayed>,
    /// Seqs that were not in the dead-letter queue.
    pub missing: Vec<u64>,
    /// Entries left in the dead-letter queue (with `all`: send again to continue).
    pub remaining: u64,
}

/// What a purge did.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct PurgeResult {
    /// Seqs removed.
    pub purged: Vec<u64>,
    /// Seqs that were not in the dead-letter queue.
    pub missing: Vec<u64>,
    /// Entries left in the dead-letter queue.
    pub remaining: u64,
}

/// Why a dead-letter command could not run.
#[derive(Debug, thiserror::Error)]
pub enum DlqError {
    /// The request is malformed (the text says how).
    #[error("{0}")]
    BadRequest(String),
    /// No such connector or entry (the text says which, and names the known connectors).
    #[error("{0}")]
    NotFound(String),
    /// The store failed.
    #[error("the store could not answer")]
    Store(#[from] StoreError),
}

/// The dead-letter queues of one store.
#[derive(Debug)]
pub struct DeadLetters<'a> {
    outbox: &'a Outbox,
    /// The connectors commands may name (the configured ones, or offline every one the data
    /// file knows), with their ids.
    connectors: Vec<(String, ConnectorId)>,
    /// Every connector name the data file knows, by id (for origins and histories).
    names: HashMap<ConnectorId, String>,
    /// Connectors with transform steps: a dead letter of another connector is not replayed
    /// to them (it has no copy of theirs; the received bytes would be sent instead).
    transforming: Vec<String>,
    /// Working on a stopped server's store, without its configuration: connectors with steps
    /// are recognised by the copies they stored.
    offline: bool,
    /// Connectors removed from the configuration (listed and purged, never replayed to:
    /// nothing delivers their queues).
    orphaned: Vec<String>,
}

impl<'a> DeadLetters<'a> {
    /// Connectors no longer configured: their dead letters can be listed and purged; a
    /// replay must name a configured connector with `to`.
    #[must_use]
    pub fn with_orphaned(mut self, orphaned: Vec<(String, ConnectorId)>) -> Self {
        self.orphaned = orphaned.iter().map(|(name, _)| name.clone()).collect();
        self.connectors.extend(orphaned);
        self
    }

    /// Name the connectors with transform steps (see the field).
    #[must_use]
    pub fn with_transforming(mut self, names: Vec<String>) -> Self {
        self.transforming = names;
        self
    }

    /// The queues of `outbox`; commands may name `connectors`, `names` resolves every id.
    pub fn new(
        outbox: &'a Outbox,
        connectors: Vec<(String, ConnectorId)>,
        names: HashMap<ConnectorId, String>,
    ) -> Self {
        Self {
            outbox,
            connectors,
            names,
            transforming: Vec::new(),
            offline: false,
            orphaned: Vec::new(),
        }
    }

    /// Every connector the data file knows (the offline commands).
    pub fn all_of(outbox: &'a Outbox) -> Self {
        let mut connectors: Vec<(String, ConnectorId)> = outbox.connectors();
        connectors.sort();
        let names = connectors
            .iter()
            .map(|(name, id)| (*id, name.clone()))
            .collect();
        Self {
            offline: true,
            ..Self::new(outbox, connectors, names)
        }
    }

    fn connector(&self, name: &str) -> Result<ConnectorId, DlqError> {
        self.connectors
            .iter()
            .find(|(known, _)| known == name)
            .map(|(_, id)| *id)
            .ok_or_else(|| {
                let known: Vec<&str> = self.connectors.iter().map(|(n, _)| n.as_str()).collect();
                DlqError::NotFound(format!(
                    "no connector named {name:?}; known: {}",
                    known.join(", ")
                ))
            })
    }

    /// A page of entries (see [`DlqQuery`]); `reveal`: include what the downstream answered.
    pub async fn list(&self, query: &DlqQuery, reveal: bool) -> Result<DlqPage, DlqError> {
        let limit = page_limit(query.limit)?;
        let targets: Vec<(String, ConnectorId)> = match query.connector.as_deref() {
            Some(name) => vec![(name.to_owned(), self.connector(name)?)],
            None => self.connectors.clone(),
        };
        let single = query.connector.is_some();
        let after = if single { query.after } else { None };
        let names = self.names.clone();
        let page = self
            .outbox
            .read(move |snapshot| {
                let mut entries = Vec::new();
                let mut truncated = false;
                let mut next_after = None;
                for (name, id) in targets {
                    // One more than asked, to know whether there is more.
                    let found = snapshot.dead_letters_after(id, after.map(Seq), limit + 1)?;
                    if found.len() > limit {
                        truncated = true;
                    }
                    for (seq, entry) in found.iter().take(limit) {
                        entries.push(item(snapshot, &names, &name, seq.0, entry, reveal)?);
                    }
                    if single && found.len() > limit {
                        next_after = found.get(limit - 1).map(|(seq, _)| seq.0);
                    }
                }
                Ok(DlqPage {
                    entries,
                    next_after,
                    truncated: truncated && !single,
                })
            })
            .await?;
        Ok(page)
    }

    /// One entry with its message's summary.
    pub async fn show(&self, name: &str, seq: u64, reveal: bool) -> Result<DlqDetail, DlqError> {
        let id = self.connector(name)?;
        let names = self.names.clone();
        let owned = name.to_owned();
        let found = self
            .outbox
            .read(move |snapshot| {
                let Some(entry) = snapshot.dead_letter(id, Seq(seq))? else {
                    return Ok(None);
                };
                let item = item(snapshot, &names, &owned, seq, &entry, reveal)?;
                let message = match snapshot.message(entry.message_id) {
                    Ok(Some(record)) => {
                        let states = connector_states(snapshot, entry.message_id, &record, &names)?;
                        Some(summary(entry.message_id, &record, states))
                    }
                    Ok(None) | Err(StoreError::Damaged(_)) => None,
                    Err(other) => return Err(other),
                };
                Ok(Some(DlqDetail {
                    entry: item,
                    message,
                }))
            })
            .await?;
        found.ok_or_else(|| DlqError::NotFound(format!("no dead-letter entry {seq} at {name}")))
    }

    /// Put entries back at the tail of a queue (theirs, or `to`), in the order given, each in
    /// a fresh place keeping its origin and history; unknown seqs are named, the known ones
    /// replayed. One transaction, its audit record (by `token_id`) in it.
    pub async fn replay(
        &self,
        token_id: &str,
        name: &str,
        request: ReplayRequest,
    ) -> Result<ReplayResult, DlqError> {
        let from = self.connector(name)?;
        let target = request.to.as_deref().unwrap_or(name);
        if self.orphaned.iter().any(|orphan| orphan == target) {
            return Err(DlqError::BadRequest(format!(
                "connector {target} is no longer in the configuration: nothing would deliver \
                 what is replayed to it. Name a configured connector (\"to\"), add {target} \
                 back to the configuration file, or purge these dead letters"
            )));
        }
        if let Some(target) = request.to.as_deref()
            && target != name
            && self.transforming.iter().any(|known| known == target)
        {
            return Err(DlqError::BadRequest(format!(
                "connector {target} has transform steps, and these dead letters have no copy of \
                 its: replayed there they would be sent as received. Reprocess the messages to \
                 {target} instead (mfoundry messages reprocess ID... --to {target})"
            )));
        }
        let to = match request.to.as_deref() {
            Some(target) => Some(self.connector(target)?),
            None => None,
        };
        if let (true, Some(target), Some(target_id)) = (self.offline, request.to.as_deref(), to)
            && target_id != from
        {
            let has_copies = self
                .outbox
                .read(move |snapshot| snapshot.has_copies(target_id))
                .await?;
            if has_copies {
                return Err(DlqError::BadRequest(format!(
                    "connector {target} transforms messages (it has stored copies), and these \
                     dead letters have no copy of its: replayed there they would be sent as \
                     received. Start the server and reprocess the messages to {target} instead"
                )));
            }
        }
        let seqs = self.selected(from, request.seqs, request.all).await?;
        let target = match &request.to {
            Some(to) => format!("connector {name} to {to}"),
            None => format!("connector {name}"),
        };
        let context = AuditContext {
            token_id: token_id.to_owned(),
            action: "dlq.replay".to_owned(),
            target,
        };
        let answers = self
            .outbox
            .replay_audited(from, &typed(&seqs), to, Some(context))
            .await?;
        let mut replayed = Vec::new();
        let mut missing = Vec::new();
        for (seq, answer) in seqs.iter().zip(answers) {
            match answer {
                Some(new_seq) => replayed.push(Replayed {
                    seq: *seq,
                    new_seq: new_seq.0,
                }),
                None => missing.push(*seq),
            }
        }
        Ok(ReplayResult {
            replayed,
            missing,
            remaining: self.remaining(from).await?,
        })
    }

    /// Remove entries without delivering them; unknown seqs are named. One transaction, its
    /// audit record in it.
    pub async fn purge(
        &self,
        token_id: &str,
        name: &str,
        request: PurgeRequest,
    ) -> Result<PurgeResult, DlqError> {
        let id = self.connector(name)?;
        let seqs = self.selected(id, request.seqs, request.all).await?;
        let context = AuditContext {
            token_id: token_id.to_owned(),
            action: "dlq.purge".to_owned(),
            target: format!("connector {name}"),
        };
        let answers = self
            .outbox
            .purge_audited(id, &typed(&seqs), Some(context))
            .await?;
        let mut purged = Vec::new();
        let mut missing = Vec::new();
        for (seq, removed) in seqs.iter().copied().zip(answers) {
            if removed {
                purged.push(seq);
            } else {
                missing.push(seq);
            }
        }
        Ok(PurgeResult {
            purged,
            missing,
            remaining: self.remaining(id).await?,
        })
    }

    /// Entries of a connector's dead-letter queue now.
    pub async fn remaining(&self, connector: ConnectorId) -> Result<u64, DlqError> {
        Ok(self
            .outbox
            .read(move |snapshot| snapshot.dead_letter_count(connector))
            .await?)
    }

    /// The seqs a replay or purge names: explicit, or the first [`MAX_BATCH`] of all.
    async fn selected(
        &self,
        connector: ConnectorId,
        seqs: Vec<u64>,
        all: bool,
    ) -> Result<Vec<u64>, DlqError> {
        match (all, seqs.is_empty()) {
            (true, true) => Ok(self
                .outbox
                .read(move |snapshot| snapshot.dead_letters_after(connector, None, MAX_BATCH))
                .await?
                .into_iter()
                .map(|(seq, _)| seq.0)
                .collect()),
            (true, false) => Err(DlqError::BadRequest(
                "give seqs or all, not both".to_owned(),
            )),
            (false, true) => Err(DlqError::BadRequest(
                "name the entries: {\"seqs\": [1, 2]} or {\"all\": true}".to_owned(),
            )),
            (false, false) if seqs.len() > MAX_BATCH => Err(DlqError::BadRequest(format!(
                "at most {MAX_BATCH} seqs per request"
            ))),
            (false, false) => Ok(seqs),
        }
    }
}

/// The page size asked for, checked.
pub fn page_limit(limit: Option<usize>) -> Result<usize, DlqError> {
    match limit {
        None => Ok(DEFAULT_PAGE),
        Some(limit) if (1..=MAX_PAGE).contains(&limit) => Ok(limit),
        Some(_) => Err(DlqError::BadRequest(format!(
            "limit must be from 1 to {MAX_PAGE}"
        ))),
    }
}

fn item(
    snapshot: &Snapshot,
    names: &HashMap<ConnectorId, String>,
    connector: &str,
    seq: u64,
    entry: &DlqEntry,
    reveal: bool,
) -> Result<DlqItem, StoreError> {
    let (header, message_damaged) = match snapshot.message(entry.message_id) {
        Ok(record) => (
            record.map(|record| record.header).unwrap_or_default(),
            false,
        ),
        Err(StoreError::Damaged(_)) => (Default::default(), true),
        Err(other) => return Err(other),
    };
    let name = |id: ConnectorId| names.get(&id).cloned().unwrap_or_else(|| format!("#{id}"));
    let view = |entry: &EntryRef| EntryView {
        connector: name(entry.connector),
        seq: entry.seq.0,
    };
    Ok(DlqItem {
        connector: connector.to_owned(),
        seq,
        message_id: entry.message_id.0,
        control_id: header.control_id,
        message_type: format!("{}^{}", header.msg_type, header.trigger),
        attempts: entry.attempts,
        failed_at: format_micros(entry.failed_at_micros),
        reason: entry.reason.clone(),
        downstream: if reveal {
            entry.downstream.clone()
        } else {
            None
        },
        origin: entry.origin.as_ref().map(view),
        history: entry
            .history
            .iter()
            .map(|past| PastView {
                connector: name(past.entry.connector),
                seq: past.entry.seq.0,
                attempts: past.attempts,
                reason: past.reason.clone(),
                failed_at: format_micros(past.failed_at_micros),
            })
            .collect(),
        message_damaged,
    })
}

/// Seqs as the API names them, as the outbox takes them.
fn typed(seqs: &[u64]) -> Vec<Seq> {
    seqs.iter().copied().map(Seq).collect()
}
