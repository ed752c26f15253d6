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

use super::state::{Payment, RestoreError, ShardState};
use crate::auth::MerchantKeys;
use crate::payment::{PaymentId, PaymentTerms};
use crate::wal::{self, Checkpoint, Created, Finalized, Record, RecordKind, Recovery};
use std::collections::{HashMap, HashSet};
use std::path::Path;

/// A shard's rebuilt state and what recovery found.
pub struct Rebuilt {
    pub state: ShardState,
    pub recovery: Recovery,
    /// Payments skipped because their merchant is not in the config.
    pub orphaned: usize,
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
        keys,
    };
    let recovery =
        wal::recover(shard_dir, &mut |record| replay.apply(record)).map_err(|e| e.to_string())?;
    replay.check_waiting()?;
    if let Some(truncation) = &recovery.truncation {
        eprintln!(
            "payd: shard {shard}: cut {} bytes of padding or unacknowledged tail at offset {} of {}",
            truncation.bytes_removed,
            truncation.offset,
            truncation.path.display()
        );
    }
    Ok(Rebuilt {
        state: replay.state,
        recovery,
        orphaned: replay.orphans.len(),
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
    keys: &'k MerchantKeys,
}

impl Replay<'_> {
    fn apply(&mut self, record: Record<'_>) -> Result<(), String> {
        match RecordKind::from_u8(record.kind) {
            Some(RecordKind::Created) => {
                let created = Created::decode(record.payload).map_err(|e| e.to_string())?;
                let id = created.id;
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
                self.checkpoint_sequence = self.checkpoint_sequence.max(sequence);
                self.state.restore_next_sequence(sequence);
                Ok(())
            }
            // Kinds of later versions (webhook events) are not this version's business.
            Some(_) => Ok(()),
            None => Err(format!("unknown record kind {}", record.kind)),
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
    let terms = PaymentTerms {
        merchant,
        order_id: created.order_id,
        amount: created.amount,
        currency: created.currency,
        payment_method: created.payment_method,
        description: created.description,
        metadata: created.metadata,
    };
    let payment = Payment::pending(created.id, terms, created.created_at_ms);
    state.restore_created(payment).map_err(|e| e.to_string())
}
