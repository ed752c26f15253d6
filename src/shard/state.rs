//! The payment state machine of one shard: idempotency by order, creation, finalisation,
//! restore from the log, and retention.
//!
//! It is pure: no I/O, no clock, no glommio. The caller passes the time (`now_ms`) and every
//! outside answer in, so each transition can be tested and replayed exactly. The only
//! randomness is the per-process key of the order hash (hash-flooding defence), which
//! changes no observable result.
//!
//! Memory is the design constraint (DESIGN.md: at most 256 bytes per retained payment):
//! payments live in a deque indexed by their sequence number (sequences are dense and
//! increase with time, so retention pops from the front), and the order index keeps one
//! 64-bit hash and one sequence per payment, never a second copy of the order id.

use crate::acquirer::{
    DECLINE_CODE_FALLBACK, DECLINE_CODE_LENGTH_MAX, DECLINE_CODE_REJECTED, DECLINE_CODE_UNAVAILABLE,
};
use crate::payment::{
    has_characters_within, is_valid_order_id, Authorization, Currency, MerchantIndex, PaymentId,
    PaymentStatus, PaymentTerms, PAYMENT_METHOD_LENGTH_MAX,
};
use std::collections::hash_map::{Entry, RandomState};
use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::hash::{BuildHasher, BuildHasherDefault, Hasher};
use std::mem::size_of;

/// Orders whose 64-bit keyed hash equals another live order's. With a random 64-bit key a
/// single collision among a billion orders is a few percent likely; reaching this bound
/// means the hash is broken, and the process stops rather than degrade to linear scans.
pub const ORDER_HASH_COLLISIONS_MAX: usize = 1024;

/// Decline codes common enough to be kept in one byte instead of a heap string.
const DECLINE_CODES_KNOWN: [&str; 5] = [
    "card_declined",
    "insufficient_funds",
    DECLINE_CODE_REJECTED,
    DECLINE_CODE_UNAVAILABLE,
    DECLINE_CODE_FALLBACK,
];
/// `Payment::decline_code_tag`: no code, `DECLINE_CODES_KNOWN[tag - 1]`, or one in extras.
const DECLINE_CODE_TAG_NONE: u8 = 0;
const DECLINE_CODE_TAG_OTHER: u8 = u8::MAX;

/// What `begin_create` decided for a create request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CreateDecision {
    /// A new pending payment, not yet durable and not yet answered.
    New(PaymentId),
    /// Same order, same key parameters, first request answered: answer with the payment.
    Replay(PaymentId),
    /// Same order, same key parameters, first request still running: 409, retry later.
    InProgress,
    /// Same order with a different amount, currency or payment method: 409.
    Conflict,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FinalizeError {
    UnknownPayment(PaymentId),
    /// A final status never changes; a second finalisation is a bug upstream.
    AlreadyFinal(PaymentId, PaymentStatus),
}

impl fmt::Display for FinalizeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FinalizeError::UnknownPayment(id) => write!(f, "no payment {id} in this shard"),
            FinalizeError::AlreadyFinal(id, status) => {
                write!(f, "payment {id} is already {}", status.as_str())
            }
        }
    }
}

impl std::error::Error for FinalizeError {}

/// Why a record of the log could not be replayed into the state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RestoreError {
    /// The payment id names another shard: the record is in the wrong log.
    WrongShard(PaymentId),
    /// A finalisation for a payment not in memory. Legitimate when the segment holding its
    /// creation was already deleted by retention; the caller decides.
    UnknownPayment(PaymentId),
    /// The same id restored twice with different terms, or finalised twice differently.
    Mismatch(PaymentId),
    /// `restore_finalized` was given `pending`.
    NotFinal(PaymentId),
}

impl fmt::Display for RestoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RestoreError::WrongShard(id) => write!(f, "payment {id} belongs to another shard"),
            RestoreError::UnknownPayment(id) => write!(f, "payment {id} was never created"),
            RestoreError::Mismatch(id) => write!(f, "payment {id} is restored inconsistently"),
            RestoreError::NotFinal(id) => write!(f, "payment {id} finalised as pending"),
        }
    }
}

impl std::error::Error for RestoreError {}

/// One payment as a shard keeps it in memory (72 bytes plus its strings).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Payment {
    sequence: u64,
    amount: u64,
    created_at_ms: u64,
    updated_at_ms: u64,
    /// The order id then the payment method, in one allocation: both are needed for the
    /// life of the payment (idempotency, recovery), and one heap block costs less than two.
    order_and_method: Box<str>,
    /// Most payments have no description, no metadata and no unusual decline code: for
    /// them this is one null pointer.
    extras: Option<Box<Extras>>,
    merchant: MerchantIndex,
    shard: u16,
    currency: Currency,
    status: PaymentStatus,
    order_id_length: u8,
    decline_code_tag: u8,
    /// The answer to the first create request went out; a retry now gets a replay.
    answered: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct Extras {
    description: Option<Box<str>>,
    metadata: Box<[(Box<str>, Box<str>)]>,
    /// A decline code outside `DECLINE_CODES_KNOWN`.
    decline_code: Option<Box<str>>,
}

impl Payment {
    /// A new pending payment from validated terms. Takes the strings without copying them
    /// more than once.
    ///
    /// The terms were validated (by the API, or by the log's decoder on recovery): an
    /// order id of ASCII characters only, a payment method of 1 to 128 characters, which
    /// may take up to four bytes each.
    pub fn pending(id: PaymentId, terms: PaymentTerms, created_at_ms: u64) -> Payment {
        let order_id_length = terms.order_id.len();
        assert!(is_valid_order_id(&terms.order_id));
        assert!(has_characters_within(
            &terms.payment_method,
            1,
            PAYMENT_METHOD_LENGTH_MAX
        ));
        let mut order_and_method =
            String::with_capacity(order_id_length + terms.payment_method.len());
        order_and_method.push_str(&terms.order_id);
        order_and_method.push_str(&terms.payment_method);
        let extras = if terms.description.is_none() && terms.metadata.is_empty() {
            None
        } else {
            Some(Box::new(Extras {
                description: terms.description.map(String::into_boxed_str),
                metadata: terms
                    .metadata
                    .into_iter()
                    .map(|(key, value)| (key.into_boxed_str(), value.into_boxed_str()))
                    .collect(),
                decline_code: None,
            }))
        };
        Payment {
            sequence: id.sequence,
            amount: terms.amount,
            created_at_ms,
            updated_at_ms: created_at_ms,
            order_and_method: order_and_method.into_boxed_str(),
            extras,
            merchant: terms.merchant,
            shard: id.shard,
            currency: terms.currency,
            status: PaymentStatus::Pending,
            order_id_length: u8::try_from(order_id_length).expect("order id length fits a u8"),
            decline_code_tag: DECLINE_CODE_TAG_NONE,
            answered: false,
        }
    }

    pub fn id(&self) -> PaymentId {
        PaymentId {
            shard: self.shard,
            sequence: self.sequence,
        }
    }

    pub fn merchant(&self) -> MerchantIndex {
        self.merchant
    }

    pub fn order_id(&self) -> &str {
        &self.order_and_method[..usize::from(self.order_id_length)]
    }

    /// The token, for the acquirer only: it is never rendered to clients.
    pub fn payment_method(&self) -> &str {
        &self.order_and_method[usize::from(self.order_id_length)..]
    }

    pub fn amount(&self) -> u64 {
        self.amount
    }

    pub fn currency(&self) -> Currency {
        self.currency
    }

    pub fn status(&self) -> PaymentStatus {
        self.status
    }

    pub fn decline_code(&self) -> Option<&str> {
        match self.decline_code_tag {
            DECLINE_CODE_TAG_NONE => None,
            DECLINE_CODE_TAG_OTHER => self.extras.as_ref()?.decline_code.as_deref(),
            tag => Some(DECLINE_CODES_KNOWN[usize::from(tag) - 1]),
        }
    }

    pub fn description(&self) -> Option<&str> {
        self.extras.as_ref()?.description.as_deref()
    }

    /// Metadata pairs in the order the client sent them.
    pub fn metadata(&self) -> impl ExactSizeIterator<Item = (&str, &str)> {
        let pairs: &[(Box<str>, Box<str>)] = match &self.extras {
            Some(extras) => &extras.metadata,
            None => &[],
        };
        pairs.iter().map(|(key, value)| (&**key, &**value))
    }

    pub fn created_at_ms(&self) -> u64 {
        self.created_at_ms
    }

    pub fn updated_at_ms(&self) -> u64 {
        self.updated_at_ms
    }

    pub fn answered(&self) -> bool {
        self.answered
    }

    /// The terms this payment was created with, copied: retention re-encodes them when
    /// it carries the payment forward in the log.
    pub fn terms(&self) -> PaymentTerms {
        PaymentTerms {
            merchant: self.merchant,
            order_id: self.order_id().to_string(),
            amount: self.amount,
            currency: self.currency,
            payment_method: self.payment_method().to_string(),
            description: self.description().map(str::to_string),
            metadata: self
                .metadata()
                .map(|(key, value)| (key.to_string(), value.to_string()))
                .collect(),
        }
    }

    /// Bytes this payment holds on the heap, counted as glibc malloc chunks.
    pub fn heap_bytes(&self) -> usize {
        let mut bytes = malloc_chunk_bytes(self.order_and_method.len());
        if let Some(extras) = &self.extras {
            bytes += malloc_chunk_bytes(size_of::<Extras>());
            bytes += extras
                .description
                .as_ref()
                .map_or(0, |d| malloc_chunk_bytes(d.len()));
            bytes += extras
                .decline_code
                .as_ref()
                .map_or(0, |c| malloc_chunk_bytes(c.len()));
            bytes += malloc_chunk_bytes(extras.metadata.len() * size_of::<(Box<str>, Box<str>)>());
            for (key, value) in extras.metadata.iter() {
                bytes += malloc_chunk_bytes(key.len()) + malloc_chunk_bytes(value.len());
            }
        }
        bytes
    }

    /// Stripe's rule: a replay must repeat the key parameters; description and metadata
    /// may differ.
    fn has_same_key_terms(&self, terms: &PaymentTerms) -> bool {
        self.amount == terms.amount
            && self.currency == terms.currency
            && self.payment_method() == terms.payment_method
    }

    fn is_order(&self, merchant: MerchantIndex, order_id: &str) -> bool {
        self.merchant == merchant && self.order_id() == order_id
    }

    fn set_outcome(&mut self, status: PaymentStatus, decline_code: Option<&str>, now_ms: u64) {
        assert!(status.is_final());
        assert_eq!(self.status, PaymentStatus::Pending);
        assert!(decline_code.is_none_or(|code| code.len() <= DECLINE_CODE_LENGTH_MAX));
        self.status = status;
        self.set_decline_code(decline_code);
        // The clock may step back; a payment is never updated before it was created.
        self.updated_at_ms = now_ms.max(self.created_at_ms);
    }

    fn set_decline_code(&mut self, decline_code: Option<&str>) {
        let Some(code) = decline_code else {
            self.decline_code_tag = DECLINE_CODE_TAG_NONE;
            return;
        };
        if let Some(index) = DECLINE_CODES_KNOWN.iter().position(|known| *known == code) {
            self.decline_code_tag = u8::try_from(index + 1).expect("few known codes");
            return;
        }
        let extras = self.extras.get_or_insert_with(|| {
            Box::new(Extras {
                description: None,
                metadata: Box::new([]),
                decline_code: None,
            })
        });
        extras.decline_code = Some(Box::from(code));
        self.decline_code_tag = DECLINE_CODE_TAG_OTHER;
    }

    /// Final and untouched for the whole retention period.
    fn is_expired(&self, now_ms: u64, retention_ms: u64) -> bool {
        self.status.is_final() && self.updated_at_ms.saturating_add(retention_ms) <= now_ms
    }
}

/// The size of the glibc malloc chunk that holds `length` bytes (none for empty boxes).
fn malloc_chunk_bytes(length: usize) -> usize {
    const CHUNK_BYTES_MIN: usize = 32;
    const CHUNK_HEADER_BYTES: usize = 8;
    if length == 0 {
        0
    } else {
        (length + CHUNK_HEADER_BYTES)
            .next_multiple_of(16)
            .max(CHUNK_BYTES_MIN)
    }
}

/// Hashes a `u64` key to itself: the order index's keys are already keyed SipHash values.
#[derive(Default)]
struct IdentityHasher(u64);

impl Hasher for IdentityHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &byte in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(byte);
        }
    }

    fn write_u64(&mut self, value: u64) {
        self.0 = value;
    }
}

type OrderIndex = HashMap<u64, u64, BuildHasherDefault<IdentityHasher>>;

/// The payments of one shard, with their order index.
pub struct ShardState {
    shard: u16,
    next_sequence: u64,
    /// The sequence of `slots[0]`.
    first_sequence: u64,
    /// `slots[i]` holds payment `first_sequence + i`. The first and last slots are occupied
    /// (or there are none); holes are abandoned or expired payments.
    slots: VecDeque<Option<Payment>>,
    payment_count: usize,
    /// Order hash -> sequence. A second live order with the same hash goes to
    /// `order_collisions`; every hash there is also a key here.
    orders: OrderIndex,
    order_collisions: Vec<(u64, u64)>,
    order_hasher: RandomState,
    /// Retention has looked at every slot below this sequence; the payments it had to
    /// keep there (pending, or finalised recently) are listed in `lingering`.
    expire_cursor: u64,
    lingering: Vec<u64>,
}

impl ShardState {
    pub fn new(shard: u16, next_sequence: u64) -> ShardState {
        ShardState {
            shard,
            next_sequence,
            first_sequence: next_sequence,
            slots: VecDeque::new(),
            payment_count: 0,
            orders: OrderIndex::default(),
            order_collisions: Vec::new(),
            order_hasher: RandomState::new(),
            expire_cursor: 0,
            lingering: Vec::new(),
        }
    }

    pub fn shard(&self) -> u16 {
        self.shard
    }

    /// Payments in memory.
    pub fn len(&self) -> usize {
        self.payment_count
    }

    pub fn is_empty(&self) -> bool {
        self.payment_count == 0
    }

    /// The sequence the next new payment gets; above every sequence ever used or restored.
    pub fn next_sequence(&self) -> u64 {
        self.next_sequence
    }

    /// Looks the order up and either answers from the existing payment or inserts a new
    /// pending one. See `CreateDecision`.
    pub fn begin_create(&mut self, terms: PaymentTerms, now_ms: u64) -> CreateDecision {
        let key = self.order_key(terms.merchant, &terms.order_id);
        if let Some(sequence) = self.find_order(key, terms.merchant, &terms.order_id) {
            let existing = self.payment(sequence).expect("the order index is exact");
            return if !existing.has_same_key_terms(&terms) {
                CreateDecision::Conflict
            } else if existing.answered {
                CreateDecision::Replay(existing.id())
            } else {
                CreateDecision::InProgress
            };
        }
        let id = PaymentId {
            shard: self.shard,
            sequence: self.next_sequence,
        };
        self.next_sequence = id.sequence.checked_add(1).expect("sequence space is 2^64");
        self.place(Payment::pending(id, terms, now_ms));
        self.index_insert(key, id.sequence);
        CreateDecision::New(id)
    }

    /// The first request's answer went out: retries now get replays.
    pub fn mark_answered(&mut self, id: PaymentId) {
        let payment = self
            .payment_mut(id)
            .expect("mark_answered of a known payment");
        payment.answered = true;
    }

    /// Forgets a `New` payment whose pending record could not be made durable, so that a
    /// retry can create it. Its sequence is never reused.
    pub fn abandon(&mut self, id: PaymentId) {
        assert_eq!(id.shard, self.shard);
        let payment = self
            .payment(id.sequence)
            .expect("abandon of a known payment");
        assert_eq!(
            payment.status,
            PaymentStatus::Pending,
            "only a new payment is abandoned"
        );
        assert!(!payment.answered, "an answered payment was durable");
        self.remove(id.sequence);
    }

    /// Pending -> succeeded, declined or failed. A final payment never changes again.
    pub fn finalize(
        &mut self,
        id: PaymentId,
        authorization: &Authorization,
        now_ms: u64,
    ) -> Result<&Payment, FinalizeError> {
        let payment = self
            .payment_mut(id)
            .ok_or(FinalizeError::UnknownPayment(id))?;
        if payment.status.is_final() {
            return Err(FinalizeError::AlreadyFinal(id, payment.status));
        }
        payment.set_outcome(authorization.status(), authorization.decline_code(), now_ms);
        Ok(payment)
    }

    /// The payment `id`, whoever its merchant (for the shard itself, never for a client).
    pub fn get_by_id(&self, id: PaymentId) -> Option<&Payment> {
        if id.shard != self.shard {
            return None;
        }
        self.payment(id.sequence)
    }

    /// The payment `id` if it belongs to `merchant`: another merchant's payment does not
    /// exist for this one.
    pub fn get(&self, merchant: MerchantIndex, id: PaymentId) -> Option<&Payment> {
        if id.shard != self.shard {
            return None;
        }
        self.payment(id.sequence)
            .filter(|payment| payment.merchant == merchant)
    }

    pub fn get_by_order(&self, merchant: MerchantIndex, order_id: &str) -> Option<&Payment> {
        let key = self.order_key(merchant, order_id);
        let sequence = self.find_order(key, merchant, order_id)?;
        self.payment(sequence)
    }

    /// Every payment still waiting for the acquirer (recovery re-asks for these).
    pub fn pending(&self) -> impl Iterator<Item = &Payment> {
        self.slots
            .iter()
            .flatten()
            .filter(|payment| payment.status == PaymentStatus::Pending)
    }

    /// Replays a creation from the log. After a restart no first request is waiting for
    /// its answer, so a restored payment counts as answered: a retry gets the replay.
    /// A second copy of the same payment (carried forward by log compaction) is ignored.
    pub fn restore_created(&mut self, mut payment: Payment) -> Result<(), RestoreError> {
        let id = payment.id();
        if id.shard != self.shard {
            return Err(RestoreError::WrongShard(id));
        }
        payment.answered = true;
        self.next_sequence = self.next_sequence.max(id.sequence.saturating_add(1));
        if let Some(present) = self.payment(id.sequence) {
            let same = present.is_order(payment.merchant, payment.order_id())
                && present.amount == payment.amount
                && present.currency == payment.currency
                && present.payment_method() == payment.payment_method();
            return if same {
                Ok(())
            } else {
                Err(RestoreError::Mismatch(id))
            };
        }
        let key = self.order_key(payment.merchant, payment.order_id());
        match self.find_order(key, payment.merchant, payment.order_id()) {
            // An order id reused after its first payment left retention: the newest
            // payment owns the order, the older one stays readable by id until it expires.
            Some(newer) if newer > id.sequence => self.place(payment),
            Some(older) => {
                self.index_remove(key, older);
                self.place(payment);
                self.index_insert(key, id.sequence);
            }
            None => {
                self.place(payment);
                self.index_insert(key, id.sequence);
            }
        }
        Ok(())
    }

    /// Replays a checkpoint from the log: every sequence below `next_sequence` was handed
    /// out once, even if retention deleted its records since, so none is handed out again.
    pub fn restore_next_sequence(&mut self, next_sequence: u64) {
        self.next_sequence = self.next_sequence.max(next_sequence);
    }

    /// Replays a finalisation from the log. Replaying the same one twice is harmless.
    pub fn restore_finalized(
        &mut self,
        id: PaymentId,
        status: PaymentStatus,
        decline_code: Option<&str>,
        updated_at_ms: u64,
    ) -> Result<(), RestoreError> {
        if !status.is_final() {
            return Err(RestoreError::NotFinal(id));
        }
        if id.shard != self.shard {
            return Err(RestoreError::WrongShard(id));
        }
        let payment = self
            .payment_mut(id)
            .ok_or(RestoreError::UnknownPayment(id))?;
        if payment.status.is_final() {
            let same = payment.status == status && payment.decline_code() == decline_code;
            return if same {
                Ok(())
            } else {
                Err(RestoreError::Mismatch(id))
            };
        }
        payment.set_outcome(status, decline_code, updated_at_ms);
        Ok(())
    }

    /// Drops final payments not updated for `retention_ms` from memory and from the order
    /// index, so the order id may be used again. Pending payments always stay. Returns how
    /// many were dropped. Amortised cost: the payments dropped plus the few kept lingering.
    pub fn expire(&mut self, now_ms: u64, retention_ms: u64) -> usize {
        let mut expired = self.expire_lingering(now_ms, retention_ms);
        // Sequences grow with creation time: stop at the first payment too young to go.
        loop {
            // Removing a payment may trim leading holes past the cursor.
            self.expire_cursor = self.expire_cursor.max(self.first_sequence);
            let Some(index) = self.slot_index(self.expire_cursor) else {
                break;
            };
            let sequence = self.expire_cursor;
            if let Some(payment) = &self.slots[index] {
                if payment.created_at_ms.saturating_add(retention_ms) > now_ms {
                    break;
                }
                if payment.is_expired(now_ms, retention_ms) {
                    self.remove(sequence);
                    expired += 1;
                } else {
                    self.lingering.push(sequence);
                }
            }
            self.expire_cursor += 1;
        }
        expired
    }

    /// Estimated bytes of memory held: slots, order index and every payment's strings.
    pub fn memory_bytes_estimate(&self) -> usize {
        // hashbrown keeps one control byte per bucket and at most 7/8 of buckets full.
        let order_bucket_bytes = size_of::<(u64, u64)>() + 1;
        let order_buckets = self.orders.capacity() * 8 / 7;
        let slots = self.slots.capacity() * size_of::<Option<Payment>>();
        let heap: usize = self.slots.iter().flatten().map(Payment::heap_bytes).sum();
        slots
            + order_buckets * order_bucket_bytes
            + self.order_collisions.capacity() * size_of::<(u64, u64)>()
            + self.lingering.capacity() * size_of::<u64>()
            + heap
    }

    /// Re-checks the payments earlier scans had to keep; drops those now expired.
    fn expire_lingering(&mut self, now_ms: u64, retention_ms: u64) -> usize {
        let mut expired = 0;
        let mut lingering = std::mem::take(&mut self.lingering);
        lingering.retain(|&sequence| match self.payment(sequence) {
            None => false,
            Some(payment) if payment.is_expired(now_ms, retention_ms) => {
                self.remove(sequence);
                expired += 1;
                false
            }
            Some(_) => true,
        });
        assert!(self.lingering.is_empty());
        self.lingering = lingering;
        expired
    }

    fn order_key(&self, merchant: MerchantIndex, order_id: &str) -> u64 {
        let mut hasher = self.order_hasher.build_hasher();
        hasher.write_u32(merchant);
        hasher.write(order_id.as_bytes());
        hasher.finish()
    }

    fn find_order(&self, key: u64, merchant: MerchantIndex, order_id: &str) -> Option<u64> {
        let sequence = *self.orders.get(&key)?;
        if self.indexed_payment(sequence).is_order(merchant, order_id) {
            return Some(sequence);
        }
        self.order_collisions
            .iter()
            .filter(|&&(collision_key, _)| collision_key == key)
            .map(|&(_, sequence)| sequence)
            .find(|&sequence| self.indexed_payment(sequence).is_order(merchant, order_id))
    }

    fn indexed_payment(&self, sequence: u64) -> &Payment {
        self.payment(sequence)
            .expect("the order index points at payments in memory")
    }

    fn index_insert(&mut self, key: u64, sequence: u64) {
        match self.orders.entry(key) {
            Entry::Vacant(vacant) => {
                vacant.insert(sequence);
            }
            Entry::Occupied(_) => {
                self.order_collisions.push((key, sequence));
                assert!(self.order_collisions.len() <= ORDER_HASH_COLLISIONS_MAX);
            }
        }
    }

    /// Removes `key -> sequence` if present. An order that a newer payment took over is
    /// not present, and that is fine.
    fn index_remove(&mut self, key: u64, sequence: u64) {
        let colliding = |&(collision_key, _): &(u64, u64)| collision_key == key;
        if self.orders.get(&key) == Some(&sequence) {
            match self.order_collisions.iter().position(colliding) {
                Some(position) => {
                    let (_, promoted) = self.order_collisions.swap_remove(position);
                    self.orders.insert(key, promoted);
                }
                None => {
                    self.orders.remove(&key);
                }
            }
        } else if let Some(position) = self
            .order_collisions
            .iter()
            .position(|&entry| entry == (key, sequence))
        {
            self.order_collisions.swap_remove(position);
        }
    }

    fn slot_index(&self, sequence: u64) -> Option<usize> {
        let offset = usize::try_from(sequence.checked_sub(self.first_sequence)?).ok()?;
        (offset < self.slots.len()).then_some(offset)
    }

    fn payment(&self, sequence: u64) -> Option<&Payment> {
        self.slots[self.slot_index(sequence)?].as_ref()
    }

    fn payment_mut(&mut self, id: PaymentId) -> Option<&mut Payment> {
        if id.shard != self.shard {
            return None;
        }
        let index = self.slot_index(id.sequence)?;
        self.slots[index].as_mut()
    }

    /// Puts a payment into its slot, growing the deque at either end as needed.
    fn place(&mut self, payment: Payment) {
        let sequence = payment.sequence;
        if self.slots.is_empty() {
            self.first_sequence = sequence;
        }
        while sequence < self.first_sequence {
            self.slots.push_front(None);
            self.first_sequence -= 1;
        }
        let offset = usize::try_from(sequence - self.first_sequence).expect("slot offset");
        if offset >= self.slots.len() {
            self.slots.resize(offset + 1, None);
        }
        assert!(self.slots[offset].is_none(), "a sequence holds one payment");
        // Retention already passed this slot: make sure it looks again.
        if sequence < self.expire_cursor {
            self.lingering.push(sequence);
        }
        self.slots[offset] = Some(payment);
        self.payment_count += 1;
    }

    /// Takes a payment out of memory and out of the order index.
    fn remove(&mut self, sequence: u64) {
        let index = self
            .slot_index(sequence)
            .expect("remove of a known payment");
        let payment = self.slots[index].take().expect("remove of a known payment");
        self.payment_count -= 1;
        let key = self.order_key(payment.merchant, payment.order_id());
        self.index_remove(key, sequence);
        self.trim();
    }

    /// Keeps the first and last slots occupied, so memory follows the live payments.
    fn trim(&mut self) {
        while let Some(None) = self.slots.front() {
            self.slots.pop_front();
            self.first_sequence += 1;
        }
        while let Some(None) = self.slots.back() {
            self.slots.pop_back();
        }
    }
}

#[cfg(test)]
mod tests;
