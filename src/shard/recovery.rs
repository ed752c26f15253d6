//! Rebuilding a shard's state from its log at start.
//!
//! Every record is replayed in log order into a fresh `ShardState`: `Created` restores a
//! pending payment, `Finalized` its final status, `Checkpoint` the next payment sequence
//! that retention saved before deleting segments. The log stores merchant ids, not
//! config indexes, so a config that changed order still maps every payment to its
//! merchant. Payments of a merchant no longer in the config cannot be served; they are
//! counted and reported, and stay on disk until retention.
//!
//! Retention makes two orders legitimate that a log without deletions never shows. A
//! payment carried forward has its `Created` again after its old `Finalized`, so a
//! finalisation of a payment not (yet) in memory waits until the end of the replay for
//! its creation. One still waiting then must be of a payment whose creation retention
//! deleted: its sequence is below a checkpoint. Any other is refused: a record was lost.

use super::retention::AppendMarks;
use super::state::{Payment, RestoreError, ShardState};
use super::webhook_reload::{OwedEvents, Scan};
use crate::auth::MerchantKeys;
use crate::config::BACKLOG_EVENTS_PER_SHARD_MAX;
use crate::payment::{EventId, MerchantIndex, PaymentId};
use crate::wal::{
    self, Checkpoint, Created, Finalized, Record, RecordKind, Recovery, WebhookDeadLetter,
};
use crate::webhooks::dead_letters::DEAD_LETTERS_PER_SHARD_MAX;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;

/// A shard's rebuilt state and what recovery found.
pub struct Rebuilt {
    pub state: ShardState,
    pub recovery: Recovery,
    /// Payments skipped because their merchant is not in the config.
    pub orphaned: usize,
    /// Webhook events whose delivery has not ended, in log order, at most
    /// `BACKLOG_EVENTS_PER_SHARD_MAX` per merchant; where each merchant's others start
    /// (the dispatcher reloads them as its backlog drains). Events of merchants no
    /// longer in the config stay on disk.
    pub webhooks_owed: Scan,
    /// Dead-lettered events, oldest first: at most `DEAD_LETTERS_PER_SHARD_MAX`, the
    /// newest ones (retention decides which are still kept).
    pub dead_letters: Vec<(MerchantIndex, WebhookDeadLetter)>,
    /// When the recovered records were appended, from the segment files' times: retention
    /// starts from these instead of knowing nothing older than the start.
    pub append_marks: AppendMarks,
}

/// Replays the shard's log (blocking file I/O: call it off the executor or before the
/// shard serves). Any record that does not decode refuses the start, with its file and
/// offset.
pub fn rebuild(shard: u16, shard_dir: &Path, keys: &MerchantKeys) -> Result<Rebuilt, String> {
    let mut replay = Replay {
        state: ShardState::new(shard, 0),
        orphans: HashSet::new(),
        waiting: HashMap::new(),
        checkpoint_sequence: 0,
        owed: OwedEvents::new(
            vec![Some(0); keys.len()],
            BACKLOG_EVENTS_PER_SHARD_MAX,
            keys,
        ),
        dead_letters: BTreeMap::new(),
        keys,
    };
    let recovery =
        wal::recover(shard_dir, &mut |record| replay.apply(record)).map_err(|e| e.to_string())?;
    replay.check_waiting()?;
    // Zeros after the last frame are padding and preallocation, there after every clean
    // stop: cut without a word. Anything else cut was a torn, never acknowledged write.
    if let Some(truncation) = recovery.truncation.as_ref().filter(|t| t.torn) {
        eprintln!(
            "payd: shard {shard}: cut a torn write that was never acknowledged: {} bytes at offset {} of {}",
            truncation.bytes_removed,
            truncation.offset,
            truncation.path.display()
        );
    }
    if recovery.legacy_segments > 0 {
        eprintln!(
            "payd: shard {shard}: {} log segment(s) in format 1 are read as they are; new records are written in format 2 (batch frames), and retention removes the old segments in time",
            recovery.legacy_segments
        );
    }
    let append_marks = AppendMarks::seeded(&recovery.segments);
    Ok(Rebuilt {
        state: replay.state,
        recovery,
        append_marks,
        orphaned: replay.orphans.len(),
        webhooks_owed: replay.owed.finish(),
        dead_letters: replay.dead_letters.into_values().collect(),
    })
}

/// The state being rebuilt and what the replay must remember until its end.
struct Replay<'k> {
    state: ShardState,
    orphans: HashSet<PaymentId>,
    /// Finalisations of payments whose creation was not replayed (yet).
    waiting: HashMap<PaymentId, Finalized>,
    /// The highest checkpoint seen: payments below it may have lost their creation.
    checkpoint_sequence: u64,
    /// Webhook events not (yet) seen delivered, with their last failed attempts.
    owed: OwedEvents<'k>,
    /// Dead letters by failure time, the newest `DEAD_LETTERS_PER_SHARD_MAX` only.
    dead_letters: BTreeMap<(u64, EventId), (MerchantIndex, WebhookDeadLetter)>,
    keys: &'k MerchantKeys,
}

impl Replay<'_> {
    fn apply(&mut self, record: Record<'_>) -> Result<(), String> {
        match RecordKind::from_u8(record.kind) {
            Some(RecordKind::Created) => {
                let created = Created::decode(record.payload).map_err(|e| e.to_string())?;
                let id = created.id;
                check_numbered_below(id.sequence, record.sequence)?;
                restore_created(&mut self.state, &mut self.orphans, self.keys, created)?;
                match self.waiting.remove(&id) {
                    Some(finalized) if !self.orphans.contains(&id) => self.finalize(finalized),
                    _ => Ok(()),
                }
            }
            Some(RecordKind::Finalized) => {
                let finalized = Finalized::decode(record.payload).map_err(|e| e.to_string())?;
                if self.orphans.contains(&finalized.id) {
                    return Ok(());
                }
                self.finalize(finalized)
            }
            Some(RecordKind::Checkpoint) => {
                let checkpoint = Checkpoint::decode(record.payload).map_err(|e| e.to_string())?;
                let sequence = checkpoint.next_payment_sequence;
                if sequence > record.sequence {
                    return Err(format!(
                        "a checkpoint of payment sequence {sequence} in record {}: a payment \
                         sequence is never ahead of the log",
                        record.sequence
                    ));
                }
                self.checkpoint_sequence = self.checkpoint_sequence.max(sequence);
                self.state.restore_next_sequence(sequence);
                Ok(())
            }
            Some(RecordKind::WebhookDeadLetter) => {
                self.owed
                    .visit(record.kind, record.sequence, record.payload)?;
                let dead = WebhookDeadLetter::decode(record.payload).map_err(|e| e.to_string())?;
                self.keep_dead_letter(dead);
                Ok(())
            }
            // Owed events, their attempts and their ends: attempts only grow, so the
            // highest count wins (retention may carry an older record forward).
            Some(
                RecordKind::WebhookEvent
                | RecordKind::WebhookAttempted
                | RecordKind::WebhookDelivered,
            ) => self
                .owed
                .visit(record.kind, record.sequence, record.payload),
            None => Err(format!("unknown record kind {}", record.kind)),
        }
    }

    fn keep_dead_letter(&mut self, dead: WebhookDeadLetter) {
        let merchant_id = dead.event.payment.merchant_id.as_bytes();
        let Some(merchant) = self.keys.index_of(merchant_id) else {
            return;
        };
        let key = (dead.failed_at_ms, dead.event.event);
        self.dead_letters.insert(key, (merchant, dead));
        if self.dead_letters.len() > DEAD_LETTERS_PER_SHARD_MAX {
            self.dead_letters.pop_first();
        }
    }

    fn finalize(&mut self, finalized: Finalized) -> Result<(), String> {
        let restored = self.state.restore_finalized(
            finalized.id,
            finalized.status,
            finalized.decline_code.as_deref(),
            finalized.updated_at_ms,
        );
        match restored {
            Err(RestoreError::UnknownPayment(id)) => {
                self.waiting.insert(id, finalized);
                Ok(())
            }
            other => other.map_err(|e| e.to_string()),
        }
    }

    /// Every finalisation still waiting must be of a payment retention deleted.
    fn check_waiting(&self) -> Result<(), String> {
        let lost = self
            .waiting
            .keys()
            .filter(|id| id.sequence >= self.checkpoint_sequence)
            .min_by_key(|id| id.sequence);
        match lost {
            Some(id) => Err(format!(
                "the log finalises payment {id} but holds no record of its creation"
            )),
            None => Ok(()),
        }
    }
}

/// Every payment took at least one record (its `Created`) before the next one was
/// numbered, so a payment's sequence is always below the sequence of any record that
/// names it. A record that says otherwise was written by something else than payd; it
/// would also make the state reserve room up to that sequence.
fn check_numbered_below(payment_sequence: u64, record_sequence: u64) -> Result<(), String> {
    if payment_sequence < record_sequence {
        return Ok(());
    }
    Err(format!(
        "payment sequence {payment_sequence} in record {record_sequence}: a payment \
         sequence is never ahead of the log"
    ))
}

fn restore_created(
    state: &mut ShardState,
    orphans: &mut HashSet<PaymentId>,
    keys: &MerchantKeys,
    created: Created,
) -> Result<(), String> {
    let Some(merchant) = keys.index_of(created.merchant_id.as_bytes()) else {
        orphans.insert(created.id);
        return Ok(());
    };
    let (id, created_at_ms) = (created.id, created.created_at_ms);
    let payment = Payment::pending(id, created.into_terms(merchant), created_at_ms);
    state.restore_created(payment).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::payment::EventId;
    use crate::payment::PaymentStatus;
    use crate::wal::{
        encode_record, segment_file_name, WebhookAttempted, WebhookDelivered, WebhookEvent,
    };

    fn finalized(sequence: u64) -> Vec<u8> {
        let mut out = Vec::new();
        Finalized {
            id: PaymentId { shard: 0, sequence },
            status: PaymentStatus::Succeeded,
            decline_code: None,
            updated_at_ms: 5,
        }
        .encode(&mut out);
        out
    }

    fn checkpoint(next_payment_sequence: u64) -> Vec<u8> {
        let mut out = Vec::new();
        Checkpoint {
            next_payment_sequence,
        }
        .encode(&mut out);
        out
    }

    /// A log whose segments with the creations were deleted: it starts at record 40.
    fn write_log(dir: &Path, records: &[(RecordKind, Vec<u8>)]) {
        let mut bytes = Vec::new();
        for (offset, (kind, payload)) in records.iter().enumerate() {
            encode_record(&mut bytes, kind.as_u8(), 40 + offset as u64, payload);
        }
        std::fs::write(dir.join(segment_file_name(40)), bytes).unwrap();
    }

    fn webhook_event(sequence: u64) -> WebhookEvent {
        let mut payment = crate::payment_object::sample_snapshot();
        payment.id = PaymentId { shard: 0, sequence };
        WebhookEvent {
            event: EventId::of_final_status(payment.id),
            created_at_ms: 5,
            payment,
        }
    }

    fn encoded(encode: impl FnOnce(&mut Vec<u8>)) -> Vec<u8> {
        let mut out = Vec::new();
        encode(&mut out);
        out
    }

    fn attempted(event: EventId, attempts: u16) -> Vec<u8> {
        encoded(|out| {
            WebhookAttempted {
                event,
                attempts,
                last_status: Some(503),
                attempted_at_ms: 10,
                next_attempt_at_ms: 10_000 + u64::from(attempts),
            }
            .encode(out)
        })
    }

    #[test]
    fn owed_events_resume_with_their_highest_attempt_and_dead_letters_are_kept() {
        let dir = tempfile::tempdir().unwrap();
        let keys = MerchantKeys::new(vec![("m_demo".to_string(), vec![b"s".to_vec()])]);
        let (owed, dead, delivered) = (webhook_event(1), webhook_event(2), webhook_event(3));
        let dead_letter = WebhookDeadLetter {
            outcome: crate::wal::WebhookOutcome::Gone,
            attempts: 1,
            last_status: Some(410),
            failed_at_ms: 20,
            event: dead.clone(),
        };
        let finished = WebhookDelivered {
            event: delivered.event,
            attempts: 1,
            outcome: crate::wal::WebhookOutcome::Delivered,
            finished_at_ms: 30,
        };
        write_log(
            dir.path(),
            &[
                (RecordKind::WebhookEvent, encoded(|out| owed.encode(out))),
                (RecordKind::WebhookEvent, encoded(|out| dead.encode(out))),
                (
                    RecordKind::WebhookEvent,
                    encoded(|out| delivered.encode(out)),
                ),
                (RecordKind::WebhookAttempted, attempted(owed.event, 2)),
                (RecordKind::WebhookAttempted, attempted(delivered.event, 4)),
                (
                    RecordKind::WebhookDeadLetter,
                    encoded(|out| dead_letter.encode(out)),
                ),
                (
                    RecordKind::WebhookDelivered,
                    encoded(|out| finished.encode(out)),
                ),
                // Retention carried the event and an older attempt forward.
                (RecordKind::WebhookEvent, encoded(|out| owed.encode(out))),
                (RecordKind::WebhookAttempted, attempted(owed.event, 1)),
            ],
        );
        let rebuilt = rebuild(0, dir.path(), &keys).unwrap();
        assert_eq!(rebuilt.webhooks_owed.events.len(), 1);
        assert!(rebuilt.webhooks_owed.left_on_disk.is_empty());
        let resumed = &rebuilt.webhooks_owed.events[0];
        assert_eq!(resumed.position, 47, "the carried copy's position");
        assert_eq!(resumed.event, owed);
        let attempts = resumed
            .attempted
            .map(|a| (a.attempts, a.next_attempt_at_ms));
        assert_eq!(attempts, Some((2, 10_002)), "attempts only grow");
        assert_eq!(rebuilt.dead_letters, vec![(0, dead_letter)]);
    }

    #[test]
    fn a_checkpoint_keeps_ids_unique_after_every_creation_was_deleted() {
        let dir = tempfile::tempdir().unwrap();
        let keys = MerchantKeys::new(vec![("m".to_string(), vec![b"s".to_vec()])]);
        // The finalisation of payment 6 outlived its creation; the checkpoint follows it.
        write_log(
            dir.path(),
            &[
                (RecordKind::Finalized, finalized(6)),
                (RecordKind::Checkpoint, checkpoint(9)),
            ],
        );
        let rebuilt = rebuild(0, dir.path(), &keys).unwrap();
        assert_eq!(rebuilt.state.next_sequence(), 9);
        assert!(rebuilt.state.is_empty());
    }

    #[test]
    fn a_finalisation_without_creation_above_the_checkpoint_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let keys = MerchantKeys::new(vec![("m".to_string(), vec![b"s".to_vec()])]);
        write_log(
            dir.path(),
            &[
                (RecordKind::Checkpoint, checkpoint(9)),
                (RecordKind::Finalized, finalized(12)),
            ],
        );
        let error = rebuild(0, dir.path(), &keys).err().unwrap();
        assert!(error.contains("no record of its creation"), "{error}");
    }
}
