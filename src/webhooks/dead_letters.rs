//! The dead letters of one shard: events whose delivery failed for good (the retry
//! schedule ran out, or the receiver answered 410), kept so their merchant can list them
//! (`GET /v1/events?delivery=failed`). Pure and bounded: the caller passes times in, and
//! the index holds at most `DEAD_LETTERS_PER_SHARD_MAX` entries, dropping the oldest.
//!
//! Each `WebhookDeadLetter` record in the log is one entry, so recovery rebuilds the index
//! and retention keeps an entry as long as its record: `storage.retention_hours` after
//! the dead letter. Entries are listed in one order everywhere: by the time of the dead
//! letter, then by event id, so pages gathered from every shard merge deterministically.

use super::dispatch::Fate;
use crate::payment::{EventId, MerchantIndex};
use std::collections::{BTreeMap, BTreeSet, HashMap};

/// Dead letters one shard keeps in memory. An entry is 88 bytes of key and counters in
/// one B-tree, 32 in the other, 48 in the lookup by event, and its compact encoded event
/// on the heap (97 bytes for a payment with a description and one metadata pair): about
/// 350 bytes with the trees' and the table's slack, so at most about 23 MiB per shard. Beyond it the oldest leave memory (counted
/// in `payd_webhook_dead_letters_dropped_total`); their records stay on disk until
/// retention.
pub const DEAD_LETTERS_PER_SHARD_MAX: usize = 65_536;

/// Where an entry sorts: dead-letter time, then event id.
pub type DeadLetterKey = (u64, EventId);

/// One dead-lettered event. `P` is the event as the caller stores it (its encoding).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeadLetter<P> {
    pub event: EventId,
    pub merchant: MerchantIndex,
    /// `DeadLettered` or `Gone`.
    pub fate: Fate,
    pub attempts: u32,
    /// The receiver's status on the last attempt; `None` when it did not answer.
    pub last_status: Option<u16>,
    /// When the last attempt ended.
    pub failed_at_ms: u64,
    pub payload: P,
}

impl<P> DeadLetter<P> {
    pub fn key(&self) -> DeadLetterKey {
        (self.failed_at_ms, self.event)
    }
}

pub struct DeadLetters<P> {
    capacity: usize,
    /// Every entry, by merchant then key: a merchant's page is one range.
    by_merchant: BTreeMap<(MerchantIndex, DeadLetterKey), DeadLetter<P>>,
    /// Every entry by key alone, to drop the oldest.
    by_age: BTreeSet<(DeadLetterKey, MerchantIndex)>,
    /// Every entry's key by merchant and event: inserts and cursors find an event in
    /// constant time (a merchant can hold every entry of the index).
    by_event: HashMap<(MerchantIndex, EventId), DeadLetterKey>,
    dropped_total: u64,
}

impl<P: Clone> DeadLetters<P> {
    pub fn new(capacity: usize) -> DeadLetters<P> {
        assert!(capacity > 0);
        DeadLetters {
            capacity,
            by_merchant: BTreeMap::new(),
            by_age: BTreeSet::new(),
            by_event: HashMap::new(),
            dropped_total: 0,
        }
    }

    pub fn len(&self) -> usize {
        self.by_merchant.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_merchant.is_empty()
    }

    /// Entries dropped from memory because the index was full.
    pub fn dropped_total(&self) -> u64 {
        self.dropped_total
    }

    /// Adds an entry; an event already listed is replaced (the later failure wins).
    pub fn insert(&mut self, entry: DeadLetter<P>) {
        assert!(matches!(entry.fate, Fate::DeadLettered | Fate::Gone));
        self.remove_event(entry.merchant, entry.event);
        let key = entry.key();
        self.by_age.insert((key, entry.merchant));
        self.by_event.insert((entry.merchant, entry.event), key);
        self.by_merchant.insert((entry.merchant, key), entry);
        if self.by_merchant.len() > self.capacity {
            let (oldest, merchant) = self.by_age.pop_first().expect("not empty");
            self.forget(merchant, oldest);
            self.dropped_total += 1;
        }
        assert_eq!(self.by_age.len(), self.by_merchant.len());
        assert_eq!(self.by_event.len(), self.by_merchant.len());
    }

    /// Drops the entries whose dead letter is `retention_ms` old at `now_ms`: retention
    /// may delete their records from now on.
    pub fn expire(&mut self, now_ms: u64, retention_ms: u64) -> usize {
        let mut expired = 0;
        while let Some(&((failed_at_ms, event), merchant)) = self.by_age.first() {
            if failed_at_ms.saturating_add(retention_ms) > now_ms {
                break;
            }
            self.by_age.pop_first();
            self.forget(merchant, (failed_at_ms, event));
            expired += 1;
        }
        assert_eq!(self.by_event.len(), self.by_merchant.len());
        expired
    }

    /// The sort key of `merchant`'s entry for `event`, if it has one.
    pub fn key_of(&self, merchant: MerchantIndex, event: EventId) -> Option<DeadLetterKey> {
        self.by_event.get(&(merchant, event)).copied()
    }

    /// Up to `limit` of `merchant`'s entries, in key order, after `after` (exclusive).
    pub fn page(
        &self,
        merchant: MerchantIndex,
        after: Option<DeadLetterKey>,
        limit: usize,
    ) -> Vec<DeadLetter<P>> {
        self.merchant_range(merchant, after)
            .take(limit)
            .map(|(_, entry)| entry.clone())
            .collect()
    }

    fn merchant_range(
        &self,
        merchant: MerchantIndex,
        after: Option<DeadLetterKey>,
    ) -> impl Iterator<Item = (&(MerchantIndex, DeadLetterKey), &DeadLetter<P>)> {
        use std::ops::Bound::{Excluded, Included};
        let lowest = EventId {
            shard: 0,
            sequence: 0,
        };
        let highest = EventId {
            shard: u16::MAX,
            sequence: u64::MAX,
        };
        let start = match after {
            Some(key) => Excluded((merchant, key)),
            None => Included((merchant, (0, lowest))),
        };
        self.by_merchant
            .range((start, Included((merchant, (u64::MAX, highest)))))
    }

    fn remove_event(&mut self, merchant: MerchantIndex, event: EventId) {
        if let Some(key) = self.key_of(merchant, event) {
            self.by_age.remove(&(key, merchant));
            self.forget(merchant, key);
        }
    }

    /// Removes an entry from the merchant tree and the event lookup (`by_age` is the
    /// caller's: it may have popped it already).
    fn forget(&mut self, merchant: MerchantIndex, key: DeadLetterKey) {
        let entry = self
            .by_merchant
            .remove(&(merchant, key))
            .expect("an indexed entry");
        let forgotten = self.by_event.remove(&(merchant, entry.event));
        assert_eq!(forgotten, Some(key));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(merchant: MerchantIndex, sequence: u64, failed_at_ms: u64) -> DeadLetter<u64> {
        DeadLetter {
            event: EventId { shard: 1, sequence },
            merchant,
            fate: Fate::DeadLettered,
            attempts: 8,
            last_status: Some(500),
            failed_at_ms,
            payload: sequence,
        }
    }

    fn sequences(page: &[DeadLetter<u64>]) -> Vec<u64> {
        page.iter().map(|entry| entry.payload).collect()
    }

    #[test]
    fn pages_list_one_merchant_by_time_then_id() {
        let mut index = DeadLetters::new(100);
        for (merchant, sequence, at) in [(0, 5, 30), (0, 3, 10), (1, 4, 10), (0, 9, 10), (0, 1, 20)]
        {
            index.insert(entry(merchant, sequence, at));
        }
        assert_eq!(sequences(&index.page(0, None, 10)), [3, 9, 1, 5]);
        assert_eq!(sequences(&index.page(1, None, 10)), [4]);
        assert!(index.page(2, None, 10).is_empty());
        // A cursor continues after its entry, whatever the limit was.
        assert_eq!(sequences(&index.page(0, None, 2)), [3, 9]);
        let cursor = index.key_of(
            0,
            EventId {
                shard: 1,
                sequence: 9,
            },
        );
        assert_eq!(
            cursor,
            Some((
                10,
                EventId {
                    shard: 1,
                    sequence: 9
                }
            ))
        );
        assert_eq!(sequences(&index.page(0, cursor, 2)), [1, 5]);
        // Another merchant's event is no cursor for this one.
        assert_eq!(
            index.key_of(
                1,
                EventId {
                    shard: 1,
                    sequence: 9
                }
            ),
            None
        );
    }

    #[test]
    fn the_oldest_leave_when_full_and_an_event_is_listed_once() {
        let mut index = DeadLetters::new(3);
        for sequence in 1..=5 {
            index.insert(entry(
                sequence as MerchantIndex % 2,
                sequence,
                sequence * 10,
            ));
        }
        assert_eq!(index.len(), 3);
        assert_eq!(index.dropped_total(), 2);
        assert_eq!(sequences(&index.page(1, None, 10)), [3, 5]);
        assert_eq!(sequences(&index.page(0, None, 10)), [4]);
        // The same event dead-lettered again (sent again after a restart): listed once.
        index.insert(entry(0, 4, 99));
        assert_eq!(index.len(), 3);
        assert_eq!(index.page(0, None, 10)[0].failed_at_ms, 99);
    }

    #[test]
    fn entries_expire_a_retention_after_their_dead_letter() {
        let mut index = DeadLetters::new(10);
        index.insert(entry(0, 1, 1_000));
        index.insert(entry(0, 2, 2_000));
        assert_eq!(index.expire(1_999, 1_000), 0);
        assert_eq!(index.expire(2_000, 1_000), 1);
        assert_eq!(sequences(&index.page(0, None, 10)), [2]);
        assert_eq!(index.expire(u64::MAX, 1_000), 1);
        assert!(index.is_empty());
    }

    /// A merchant holding the whole index (one dead endpoint): every insert and cursor
    /// finds its event without walking the merchant's entries. Quadratic, this took 24 s
    /// in release at start-up; it must be quick even unoptimised.
    #[test]
    fn one_merchant_can_fill_the_index_and_find_every_entry() {
        let mut index = DeadLetters::new(DEAD_LETTERS_PER_SHARD_MAX);
        let count = DEAD_LETTERS_PER_SHARD_MAX as u64;
        for sequence in 0..count {
            index.insert(entry(0, sequence, sequence));
        }
        // One more drops the oldest, from every structure.
        index.insert(entry(0, count, count));
        assert_eq!(index.len(), DEAD_LETTERS_PER_SHARD_MAX);
        assert_eq!(index.dropped_total(), 1);
        let event = |sequence| EventId { shard: 1, sequence };
        assert_eq!(index.key_of(0, event(0)), None);
        for sequence in 1..=count {
            assert_eq!(
                index.key_of(0, event(sequence)),
                Some((sequence, event(sequence)))
            );
        }
        // A repeat replaces its entry; expiry forgets the lookup too.
        index.insert(entry(0, 5, count + 1));
        assert_eq!(index.key_of(0, event(5)), Some((count + 1, event(5))));
        assert_eq!(index.expire(count, 0), DEAD_LETTERS_PER_SHARD_MAX - 1);
        assert_eq!(index.key_of(0, event(7)), None);
        assert_eq!(sequences(&index.page(0, None, 10)), [5]);
    }

    #[test]
    #[should_panic]
    fn a_delivered_event_is_no_dead_letter() {
        let mut index = DeadLetters::new(10);
        index.insert(DeadLetter {
            fate: Fate::Delivered,
            ..entry(0, 1, 1)
        });
    }
}
