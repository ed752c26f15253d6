//! Rebuilding a shard's state from its log at start.
//!
//! Every record is replayed in log order into a fresh `ShardState`: `Created` restores a
//! pending payment, `Finalized` its final status. The log stores merchant ids, not
//! config indexes, so a config that changed order still maps every payment to its
//! merchant. Payments of a merchant no longer in the config cannot be served; they are
//! counted and reported, and stay on disk until retention.

use super::state::{Payment, ShardState};
use crate::auth::MerchantKeys;
use crate::payment::{PaymentId, PaymentTerms};
use crate::wal::{self, Created, Finalized, Record, RecordKind, Recovery};
use std::collections::HashSet;
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
    let mut state = ShardState::new(shard, 0);
    let mut orphans: HashSet<PaymentId> = HashSet::new();
    let mut visit = |record: Record<'_>| -> Result<(), String> {
        match RecordKind::from_u8(record.kind) {
            Some(RecordKind::Created) => {
                let created = Created::decode(record.payload).map_err(|e| e.to_string())?;
                restore_created(&mut state, &mut orphans, keys, created)
            }
            Some(RecordKind::Finalized) => {
                let finalized = Finalized::decode(record.payload).map_err(|e| e.to_string())?;
                if orphans.contains(&finalized.id) {
                    return Ok(());
                }
                let Finalized {
                    id,
                    status,
                    decline_code,
                    updated_at_ms,
                } = finalized;
                state
                    .restore_finalized(id, status, decline_code.as_deref(), updated_at_ms)
                    .map_err(|e| e.to_string())
            }
            // Kinds of later versions (webhook events) are not this version's business.
            Some(_) => Ok(()),
            None => Err(format!("unknown record kind {}", record.kind)),
        }
    };
    let recovery = wal::recover(shard_dir, &mut visit).map_err(|e| e.to_string())?;
    if let Some(truncation) = &recovery.truncation {
        eprintln!(
            "payd: shard {shard}: cut {} bytes of padding or unacknowledged tail at offset {} of {}",
            truncation.bytes_removed,
            truncation.offset,
            truncation.path.display()
        );
    }
    Ok(Rebuilt {
        state,
        recovery,
        orphaned: orphans.len(),
    })
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
