//! Tests of every transition of the shard state machine, of retention, of the order index
//! under forced hash collisions, of memory per payment, and a model check against a naive
//! reference implementation.

use super::*;

const SHARD: u16 = 3;
const RETENTION_MS: u64 = 1_000;

fn terms(merchant: MerchantIndex, order_id: &str, amount: u64, method: &str) -> PaymentTerms {
    PaymentTerms {
        merchant,
        order_id: order_id.to_string(),
        amount,
        currency: Currency::parse("CNY").unwrap(),
        payment_method: method.to_string(),
        description: None,
        metadata: Vec::new(),
    }
}

fn visa(order_id: &str) -> PaymentTerms {
    terms(0, order_id, 1999, "tok_visa")
}

fn new_id(decision: CreateDecision) -> PaymentId {
    match decision {
        CreateDecision::New(id) => id,
        other => panic!("expected a new payment, got {other:?}"),
    }
}

/// Structural invariants that every public operation must keep.
fn check_invariants(state: &ShardState) {
    let occupied = state.slots.iter().flatten().count();
    assert_eq!(occupied, state.payment_count);
    if let (Some(first), Some(last)) = (state.slots.front(), state.slots.back()) {
        assert!(
            first.is_some() && last.is_some(),
            "ends of the deque are trimmed"
        );
    }
    for (index, slot) in state.slots.iter().enumerate() {
        let Some(payment) = slot else { continue };
        assert_eq!(payment.sequence, state.first_sequence + index as u64);
        assert!(payment.sequence < state.next_sequence);
        assert!(payment.updated_at_ms >= payment.created_at_ms);
        if payment.sequence < state.expire_cursor {
            assert!(
                state.lingering.contains(&payment.sequence),
                "retention sees it"
            );
        }
        // Every payment's order resolves to it or to a newer payment of the same order.
        let owner = state
            .get_by_order(payment.merchant, payment.order_id())
            .expect("an order in memory is indexed");
        assert!(owner.sequence >= payment.sequence);
    }
    let index_entries = state.orders.iter().map(|(&key, &sequence)| (key, sequence));
    for (key, sequence) in index_entries.chain(state.order_collisions.iter().copied()) {
        let payment = state.indexed_payment(sequence);
        assert_eq!(state.order_key(payment.merchant, payment.order_id()), key);
    }
    for &(key, _) in &state.order_collisions {
        assert!(state.orders.contains_key(&key));
    }
}

#[test]
fn new_orders_get_pending_payments_with_increasing_ids() {
    let mut state = ShardState::new(SHARD, 10);
    let first = new_id(state.begin_create(visa("ord-1"), 500));
    let second = new_id(state.begin_create(visa("ord-2"), 501));
    assert_eq!(
        first,
        PaymentId {
            shard: SHARD,
            sequence: 10
        }
    );
    assert_eq!(
        second,
        PaymentId {
            shard: SHARD,
            sequence: 11
        }
    );
    assert_eq!(state.next_sequence(), 12);
    assert_eq!(state.len(), 2);
    let payment = state.get(0, first).unwrap();
    assert_eq!(payment.id(), first);
    assert_eq!(payment.order_id(), "ord-1");
    assert_eq!(payment.payment_method(), "tok_visa");
    assert_eq!(payment.amount(), 1999);
    assert_eq!(payment.currency().as_str(), "CNY");
    assert_eq!(payment.status(), PaymentStatus::Pending);
    assert_eq!(payment.decline_code(), None);
    assert_eq!(payment.description(), None);
    assert_eq!(payment.metadata().len(), 0);
    assert_eq!(
        (payment.created_at_ms(), payment.updated_at_ms()),
        (500, 500)
    );
    assert!(!payment.answered());
    check_invariants(&state);
}

#[test]
fn description_and_metadata_are_kept_in_order() {
    let mut state = ShardState::new(SHARD, 0);
    let mut with_extras = visa("ord-1");
    with_extras.description = Some("2 coffees".to_string());
    with_extras.metadata = vec![("z".into(), "1".into()), ("a".into(), "2".into())];
    let id = new_id(state.begin_create(with_extras, 1));
    let payment = state.get(0, id).unwrap();
    assert_eq!(payment.description(), Some("2 coffees"));
    assert_eq!(
        payment.metadata().collect::<Vec<_>>(),
        vec![("z", "1"), ("a", "2")]
    );
}

#[test]
fn same_order_is_in_progress_until_answered_then_replayed() {
    let mut state = ShardState::new(SHARD, 0);
    let id = new_id(state.begin_create(visa("ord-1"), 1));
    assert_eq!(
        state.begin_create(visa("ord-1"), 2),
        CreateDecision::InProgress
    );
    state.mark_answered(id);
    assert_eq!(
        state.begin_create(visa("ord-1"), 3),
        CreateDecision::Replay(id)
    );
    // Still pending, still a replay: the answer is the payment as it is now.
    assert_eq!(state.get(0, id).unwrap().status(), PaymentStatus::Pending);
    assert_eq!(state.len(), 1);
    assert_eq!(state.next_sequence(), 1, "a replay takes no sequence");
}

#[test]
fn different_key_parameters_conflict() {
    let mut state = ShardState::new(SHARD, 0);
    let id = new_id(state.begin_create(visa("ord-1"), 1));
    state.mark_answered(id);
    let mut other_currency = visa("ord-1");
    other_currency.currency = Currency::parse("USD").unwrap();
    for conflicting in [
        terms(0, "ord-1", 2000, "tok_visa"),
        terms(0, "ord-1", 1999, "tok_mastercard"),
        other_currency,
    ] {
        assert_eq!(state.begin_create(conflicting, 2), CreateDecision::Conflict);
    }
    // Conflicts are reported even while the first request runs.
    let pending = new_id(state.begin_create(visa("ord-2"), 3));
    assert_eq!(
        state.begin_create(terms(0, "ord-2", 1, "tok_visa"), 4),
        CreateDecision::Conflict
    );
    assert_eq!(state.get(0, pending).unwrap().amount(), 1999);
}

#[test]
fn description_and_metadata_do_not_make_a_conflict() {
    let mut state = ShardState::new(SHARD, 0);
    let id = new_id(state.begin_create(visa("ord-1"), 1));
    state.mark_answered(id);
    let mut retry = visa("ord-1");
    retry.description = Some("changed".to_string());
    retry.metadata = vec![("k".into(), "v".into())];
    assert_eq!(state.begin_create(retry, 2), CreateDecision::Replay(id));
    assert_eq!(
        state.get(0, id).unwrap().description(),
        None,
        "first terms stay"
    );
}

#[test]
fn orders_are_per_merchant() {
    let mut state = ShardState::new(SHARD, 0);
    let first = new_id(state.begin_create(terms(0, "ord-1", 5, "tok_visa"), 1));
    let second = new_id(state.begin_create(terms(1, "ord-1", 7, "tok_visa"), 1));
    assert_ne!(first, second);
    assert_eq!(state.get_by_order(0, "ord-1").unwrap().id(), first);
    assert_eq!(state.get_by_order(1, "ord-1").unwrap().id(), second);
    assert!(
        state.get(1, first).is_none(),
        "another merchant's payment is not found"
    );
    assert!(state.get(0, second).is_none());
    assert!(state.get_by_order(2, "ord-1").is_none());
}

#[test]
fn get_needs_the_right_shard_and_a_known_sequence() {
    let mut state = ShardState::new(SHARD, 0);
    let id = new_id(state.begin_create(visa("ord-1"), 1));
    let other_shard = PaymentId {
        shard: SHARD + 1,
        ..id
    };
    assert!(state.get(0, other_shard).is_none());
    assert!(state.get(0, PaymentId { sequence: 1, ..id }).is_none());
    assert!(state
        .get(
            0,
            PaymentId {
                sequence: u64::MAX,
                ..id
            }
        )
        .is_none());
    assert!(state.get_by_order(0, "ord-2").is_none());
}

#[test]
fn abandon_forgets_the_payment_but_not_its_sequence() {
    let mut state = ShardState::new(SHARD, 0);
    let kept = new_id(state.begin_create(visa("ord-0"), 1));
    let abandoned = new_id(state.begin_create(visa("ord-1"), 1));
    state.abandon(abandoned);
    assert!(state.get(0, abandoned).is_none());
    assert!(state.get_by_order(0, "ord-1").is_none());
    assert_eq!(state.len(), 1);
    check_invariants(&state);
    let retried = new_id(state.begin_create(visa("ord-1"), 2));
    assert_eq!(retried.sequence, abandoned.sequence + 1, "never reused");
    assert!(state.get(0, kept).is_some());
    check_invariants(&state);
}

#[test]
#[should_panic(expected = "an answered payment was durable")]
fn abandon_of_an_answered_payment_is_a_bug() {
    let mut state = ShardState::new(SHARD, 0);
    let id = new_id(state.begin_create(visa("ord-1"), 1));
    state.mark_answered(id);
    state.abandon(id);
}

#[test]
fn finalize_sets_status_code_and_time() {
    let mut state = ShardState::new(SHARD, 0);
    let cases = [
        (Authorization::Approved, PaymentStatus::Succeeded, None),
        (
            Authorization::Declined("card_declined".into()),
            PaymentStatus::Declined,
            Some("card_declined"),
        ),
        (
            Authorization::Failed("acquirer_unavailable".into()),
            PaymentStatus::Failed,
            Some("acquirer_unavailable"),
        ),
    ];
    for (number, (authorization, status, code)) in cases.into_iter().enumerate() {
        let id = new_id(state.begin_create(visa(&format!("ord-{number}")), 100));
        let payment = state.finalize(id, &authorization, 250).unwrap();
        assert_eq!(payment.status(), status);
        assert_eq!(payment.decline_code(), code);
        assert_eq!(
            (payment.created_at_ms(), payment.updated_at_ms()),
            (100, 250)
        );
    }
    assert_eq!(state.pending().count(), 0);
}

#[test]
fn known_decline_codes_take_no_heap_and_others_are_kept_exactly() {
    let mut state = ShardState::new(SHARD, 0);
    let known = new_id(state.begin_create(visa("ord-1"), 1));
    let unusual = new_id(state.begin_create(visa("ord-2"), 1));
    let mut with_extras = visa("ord-3");
    with_extras.description = Some("tea".to_string());
    let described = new_id(state.begin_create(with_extras, 1));
    let heap_before = state.get(0, known).unwrap().heap_bytes();
    let insufficient = Authorization::Declined("insufficient_funds".into());
    state.finalize(known, &insufficient, 2).unwrap();
    let payment = state.get(0, known).unwrap();
    assert_eq!(payment.decline_code(), Some("insufficient_funds"));
    assert_eq!(payment.heap_bytes(), heap_before);
    let do_not_honor = Authorization::Declined("do_not_honor".into());
    for id in [unusual, described] {
        let payment = state.finalize(id, &do_not_honor, 2).unwrap();
        assert_eq!(payment.decline_code(), Some("do_not_honor"));
    }
    assert_eq!(state.get(0, described).unwrap().description(), Some("tea"));
    assert_eq!(state.get(0, unusual).unwrap().description(), None);
    assert_eq!(state.get(0, unusual).unwrap().metadata().len(), 0);
}

#[test]
fn finalizing_twice_is_an_error_and_changes_nothing() {
    let mut state = ShardState::new(SHARD, 0);
    let id = new_id(state.begin_create(visa("ord-1"), 100));
    state.finalize(id, &Authorization::Approved, 200).unwrap();
    let declined = Authorization::Declined("card_declined".into());
    assert_eq!(
        state.finalize(id, &declined, 300).unwrap_err(),
        FinalizeError::AlreadyFinal(id, PaymentStatus::Succeeded)
    );
    let payment = state.get(0, id).unwrap();
    assert_eq!(payment.status(), PaymentStatus::Succeeded);
    assert_eq!(payment.updated_at_ms(), 200);
}

#[test]
fn finalize_of_an_unknown_payment_is_an_error() {
    let mut state = ShardState::new(SHARD, 0);
    let id = new_id(state.begin_create(visa("ord-1"), 100));
    for unknown in [
        PaymentId { sequence: 7, ..id },
        PaymentId {
            shard: SHARD + 1,
            ..id
        },
    ] {
        assert_eq!(
            state
                .finalize(unknown, &Authorization::Approved, 1)
                .unwrap_err(),
            FinalizeError::UnknownPayment(unknown)
        );
    }
    assert_eq!(state.get(0, id).unwrap().status(), PaymentStatus::Pending);
}

#[test]
fn updated_at_never_precedes_created_at() {
    let mut state = ShardState::new(SHARD, 0);
    let id = new_id(state.begin_create(visa("ord-1"), 1_000));
    // The wall clock stepped back between creation and the acquirer's answer.
    let payment = state.finalize(id, &Authorization::Approved, 400).unwrap();
    assert_eq!(payment.updated_at_ms(), 1_000);
}

#[test]
fn pending_lists_only_pending_payments() {
    let mut state = ShardState::new(SHARD, 0);
    let done = new_id(state.begin_create(visa("ord-1"), 1));
    let waiting = new_id(state.begin_create(visa("ord-2"), 1));
    state.finalize(done, &Authorization::Approved, 2).unwrap();
    let pending: Vec<PaymentId> = state.pending().map(Payment::id).collect();
    assert_eq!(pending, vec![waiting]);
}

fn restored(sequence: u64, order_id: &str, created_at_ms: u64) -> Payment {
    let id = PaymentId {
        shard: SHARD,
        sequence,
    };
    Payment::pending(id, visa(order_id), created_at_ms)
}

#[test]
fn restore_created_counts_as_answered_and_keeps_sequences_ahead() {
    let mut state = ShardState::new(SHARD, 0);
    state.restore_created(restored(40, "ord-40", 5)).unwrap();
    state.restore_created(restored(7, "ord-7", 4)).unwrap();
    assert_eq!(state.next_sequence(), 41);
    assert_eq!(state.len(), 2);
    let id = PaymentId {
        shard: SHARD,
        sequence: 7,
    };
    assert!(state.get(0, id).unwrap().answered());
    assert_eq!(
        state.begin_create(visa("ord-7"), 6),
        CreateDecision::Replay(id)
    );
    let fresh = new_id(state.begin_create(visa("ord-new"), 6));
    assert_eq!(fresh.sequence, 41);
    assert_eq!(state.pending().count(), 3);
    check_invariants(&state);
}

#[test]
fn restore_created_twice_is_harmless_unless_it_differs() {
    let mut state = ShardState::new(SHARD, 0);
    state.restore_created(restored(3, "ord-3", 5)).unwrap();
    state.restore_created(restored(3, "ord-3", 5)).unwrap();
    assert_eq!(state.len(), 1);
    let id = PaymentId {
        shard: SHARD,
        sequence: 3,
    };
    assert_eq!(
        state.restore_created(restored(3, "ord-other", 5)),
        Err(RestoreError::Mismatch(id))
    );
    let foreign = Payment::pending(
        PaymentId {
            shard: 9,
            sequence: 1,
        },
        visa("o"),
        1,
    );
    assert_eq!(
        state.restore_created(foreign),
        Err(RestoreError::WrongShard(PaymentId {
            shard: 9,
            sequence: 1
        }))
    );
    check_invariants(&state);
}

#[test]
fn restore_finalized_applies_once_and_rejects_contradictions() {
    let mut state = ShardState::new(SHARD, 0);
    state.restore_created(restored(3, "ord-3", 5)).unwrap();
    let id = PaymentId {
        shard: SHARD,
        sequence: 3,
    };
    let declined = PaymentStatus::Declined;
    state
        .restore_finalized(id, declined, Some("card_declined"), 9)
        .unwrap();
    let payment = state.get(0, id).unwrap();
    assert_eq!(payment.status(), declined);
    assert_eq!(payment.decline_code(), Some("card_declined"));
    assert_eq!(payment.updated_at_ms(), 9);
    state
        .restore_finalized(id, declined, Some("card_declined"), 9)
        .unwrap();
    assert_eq!(
        state.restore_finalized(id, PaymentStatus::Succeeded, None, 10),
        Err(RestoreError::Mismatch(id))
    );
    let unknown = PaymentId {
        shard: SHARD,
        sequence: 4,
    };
    assert_eq!(
        state.restore_finalized(unknown, PaymentStatus::Succeeded, None, 10),
        Err(RestoreError::UnknownPayment(unknown))
    );
    assert_eq!(
        state.restore_finalized(id, PaymentStatus::Pending, None, 10),
        Err(RestoreError::NotFinal(id))
    );
    // A restored payment that was created again after the restart stays consistent.
    assert_eq!(state.pending().count(), 0);
}

#[test]
fn a_reused_order_belongs_to_its_newest_payment_whatever_the_restore_order() {
    for order in [[2, 9], [9, 2]] {
        let mut state = ShardState::new(SHARD, 0);
        for sequence in order {
            state
                .restore_created(restored(sequence, "ord-1", sequence))
                .unwrap();
        }
        assert_eq!(state.get_by_order(0, "ord-1").unwrap().id().sequence, 9);
        let older = PaymentId {
            shard: SHARD,
            sequence: 2,
        };
        assert!(
            state.get(0, older).is_some(),
            "readable by id until it expires"
        );
        check_invariants(&state);
        // Expiring the older payment leaves the newer one indexed.
        state
            .restore_finalized(older, PaymentStatus::Succeeded, None, 2)
            .unwrap();
        assert_eq!(state.expire(2 + RETENTION_MS, RETENTION_MS), 1);
        assert_eq!(state.get_by_order(0, "ord-1").unwrap().id().sequence, 9);
        check_invariants(&state);
    }
}

#[test]
fn expire_drops_only_final_payments_past_retention() {
    let mut state = ShardState::new(SHARD, 0);
    let old_final = new_id(state.begin_create(visa("ord-1"), 0));
    let old_pending = new_id(state.begin_create(visa("ord-2"), 0));
    let young_final = new_id(state.begin_create(visa("ord-3"), 500));
    state
        .finalize(old_final, &Authorization::Approved, 10)
        .unwrap();
    state
        .finalize(young_final, &Authorization::Approved, 510)
        .unwrap();
    // Exactly at the boundary: updated_at + retention == now expires.
    assert_eq!(state.expire(10 + RETENTION_MS - 1, RETENTION_MS), 0);
    assert_eq!(state.expire(10 + RETENTION_MS, RETENTION_MS), 1);
    assert!(state.get(0, old_final).is_none());
    assert!(state.get_by_order(0, "ord-1").is_none());
    assert!(
        state.get(0, old_pending).is_some(),
        "pending payments always stay"
    );
    assert!(state.get(0, young_final).is_some());
    assert_eq!(state.len(), 2);
    check_invariants(&state);
    // The order id is free again: a new payment, with a new id.
    let reused = new_id(state.begin_create(visa("ord-1"), 2_000));
    assert_ne!(reused, old_final);
    assert_eq!(state.expire(510 + RETENTION_MS, RETENTION_MS), 1);
    assert!(state.get(0, young_final).is_none());
    check_invariants(&state);
}

#[test]
fn a_payment_kept_pending_long_expires_after_it_is_finalised() {
    let mut state = ShardState::new(SHARD, 0);
    let slow = new_id(state.begin_create(visa("ord-slow"), 0));
    let mut others = Vec::new();
    for number in 0..10 {
        let id = new_id(state.begin_create(visa(&format!("ord-{number}")), 1));
        state.finalize(id, &Authorization::Approved, 1).unwrap();
        others.push(id);
    }
    assert_eq!(state.expire(5_000, RETENTION_MS), 10);
    assert_eq!(state.len(), 1);
    assert_eq!(state.slots.len(), 1, "memory follows the live payments");
    check_invariants(&state);
    state
        .finalize(slow, &Authorization::Approved, 6_000)
        .unwrap();
    assert_eq!(state.expire(6_000 + RETENTION_MS - 1, RETENTION_MS), 0);
    assert_eq!(state.expire(6_000 + RETENTION_MS, RETENTION_MS), 1);
    assert!(state.is_empty());
    assert!(state.slots.is_empty());
    check_invariants(&state);
}

#[test]
fn a_payment_restored_behind_the_retention_scan_is_still_expired() {
    let mut state = ShardState::new(SHARD, 0);
    for sequence in 100..110 {
        state
            .restore_created(restored(sequence, &format!("o{sequence}"), 0))
            .unwrap();
        let id = PaymentId {
            shard: SHARD,
            sequence,
        };
        state
            .restore_finalized(id, PaymentStatus::Succeeded, None, 0)
            .unwrap();
    }
    assert_eq!(state.expire(RETENTION_MS, RETENTION_MS), 10);
    // A payment carried forward by compaction arrives late, with an old sequence.
    state.restore_created(restored(50, "o50", 0)).unwrap();
    let id = PaymentId {
        shard: SHARD,
        sequence: 50,
    };
    state
        .restore_finalized(id, PaymentStatus::Failed, Some("x"), 0)
        .unwrap();
    check_invariants(&state);
    assert_eq!(state.expire(RETENTION_MS, RETENTION_MS), 1);
    assert!(state.is_empty());
    check_invariants(&state);
}

#[test]
fn expire_stops_at_the_first_young_payment() {
    let mut state = ShardState::new(SHARD, 0);
    let young = new_id(state.begin_create(visa("ord-young"), 900));
    // Created later by sequence but with an older clock: kept until the scan reaches it.
    let skewed = new_id(state.begin_create(visa("ord-skewed"), 0));
    state
        .finalize(young, &Authorization::Approved, 900)
        .unwrap();
    state.finalize(skewed, &Authorization::Approved, 0).unwrap();
    assert_eq!(
        state.expire(RETENTION_MS, RETENTION_MS),
        0,
        "never early, late is fine"
    );
    assert_eq!(state.expire(900 + RETENTION_MS, RETENTION_MS), 2);
    check_invariants(&state);
}

/// Places a payment and indexes it under a chosen hash key, to force collisions that a
/// 64-bit keyed hash would practically never produce.
fn place_with_key(state: &mut ShardState, order_id: &str, key: u64) -> u64 {
    let sequence = state.next_sequence;
    state.next_sequence += 1;
    let id = PaymentId {
        shard: SHARD,
        sequence,
    };
    state.place(Payment::pending(id, visa(order_id), 0));
    state.index_insert(key, sequence);
    sequence
}

#[test]
fn colliding_order_hashes_are_told_apart_by_the_stored_order_id() {
    let mut state = ShardState::new(SHARD, 0);
    let first = place_with_key(&mut state, "ord-a", 77);
    let second = place_with_key(&mut state, "ord-b", 77);
    let third = place_with_key(&mut state, "ord-c", 77);
    assert_eq!(state.order_collisions.len(), 2);
    assert_eq!(state.find_order(77, 0, "ord-a"), Some(first));
    assert_eq!(state.find_order(77, 0, "ord-b"), Some(second));
    assert_eq!(state.find_order(77, 0, "ord-c"), Some(third));
    assert_eq!(state.find_order(77, 0, "ord-d"), None);
    assert_eq!(state.find_order(77, 1, "ord-a"), None);
    // Removing the entry in the main map promotes a collision into it.
    state.index_remove(77, first);
    assert_eq!(state.find_order(77, 0, "ord-a"), None);
    assert_eq!(state.find_order(77, 0, "ord-b"), Some(second));
    assert_eq!(state.find_order(77, 0, "ord-c"), Some(third));
    state.index_remove(77, third);
    assert_eq!(state.find_order(77, 0, "ord-b"), Some(second));
    assert!(state.order_collisions.is_empty());
    state.index_remove(77, second);
    assert!(state.orders.is_empty());
}

#[test]
fn payment_memory_stays_within_the_design_budget() {
    const PAYMENTS: usize = 100_000;
    const BYTES_PER_PAYMENT_MAX: usize = 256;
    println!("size_of::<Payment>() = {}", size_of::<Payment>());
    assert!(size_of::<Payment>() <= 72);
    assert_eq!(
        size_of::<Option<Payment>>(),
        size_of::<Payment>(),
        "niche, no tag"
    );
    let mut state = ShardState::new(SHARD, 0);
    for number in 0..PAYMENTS {
        let order_id = format!("ord-20261122-{number:06}");
        let id = new_id(state.begin_create(visa(&order_id), 1_763_800_000_123));
        if number % 10 == 0 {
            let declined = Authorization::Declined("card_declined".into());
            state.finalize(id, &declined, 1_763_800_000_125).unwrap();
        }
    }
    let typical = state.get_by_order(0, "ord-20261122-000001").unwrap();
    println!("heap bytes of a typical payment = {}", typical.heap_bytes());
    assert_eq!(
        typical.heap_bytes(),
        48,
        "one chunk for 'ord-20261122-000001tok_visa'"
    );
    let bytes_per_payment = state.memory_bytes_estimate() / PAYMENTS;
    println!("estimated bytes per retained payment = {bytes_per_payment}");
    assert!(
        bytes_per_payment <= BYTES_PER_PAYMENT_MAX,
        "{bytes_per_payment}"
    );
}

/// A naive reference: a list of every payment ever created, searched linearly.
#[derive(Clone)]
struct ModelPayment {
    id: PaymentId,
    terms: PaymentTerms,
    status: PaymentStatus,
    answered: bool,
    updated_at_ms: u64,
    live: bool,
}

fn model_decision(model: &[ModelPayment], terms: &PaymentTerms) -> Option<CreateDecision> {
    let existing = model.iter().find(|p| {
        p.live && p.terms.merchant == terms.merchant && p.terms.order_id == terms.order_id
    })?;
    let same = existing.terms.amount == terms.amount
        && existing.terms.payment_method == terms.payment_method;
    Some(match (same, existing.answered) {
        (false, _) => CreateDecision::Conflict,
        (true, true) => CreateDecision::Replay(existing.id),
        (true, false) => CreateDecision::InProgress,
    })
}

#[test]
fn random_operations_agree_with_a_naive_model() {
    const OPERATIONS: usize = 20_000;
    let mut random_state = 0x5eed_u64;
    // xorshift64: deterministic, so a failure replays exactly.
    let mut random = move |bound: u64| {
        random_state ^= random_state << 13;
        random_state ^= random_state >> 7;
        random_state ^= random_state << 17;
        random_state % bound
    };
    let mut state = ShardState::new(SHARD, 1);
    let mut model: Vec<ModelPayment> = Vec::new();
    let mut now_ms = 0;
    for operation in 0..OPERATIONS {
        if operation % 97 == 0 {
            check_invariants(&state);
        }
        now_ms += random(20);
        let live: Vec<usize> = (0..model.len()).filter(|&i| model[i].live).collect();
        let pick = |r: u64| live.get(r as usize % live.len().max(1)).copied();
        match random(10) {
            0..=3 => {
                let merchant = random(2) as MerchantIndex;
                let order_id = format!("o{}", random(60));
                let method = if random(8) == 0 {
                    "tok_other"
                } else {
                    "tok_visa"
                };
                let terms = terms(merchant, &order_id, 100 + random(2), method);
                let decision = state.begin_create(terms.clone(), now_ms);
                match model_decision(&model, &terms) {
                    Some(expected) => assert_eq!(decision, expected),
                    None => model.push(ModelPayment {
                        id: new_id(decision),
                        terms,
                        status: PaymentStatus::Pending,
                        answered: false,
                        updated_at_ms: now_ms,
                        live: true,
                    }),
                }
            }
            4 | 5 => {
                if let Some(i) = pick(random(u64::MAX)) {
                    state.mark_answered(model[i].id);
                    model[i].answered = true;
                }
            }
            6 | 7 => {
                if let Some(i) = pick(random(u64::MAX)) {
                    let result = state.finalize(model[i].id, &Authorization::Approved, now_ms);
                    if model[i].status.is_final() {
                        assert!(result.is_err());
                    } else {
                        assert_eq!(result.unwrap().status(), PaymentStatus::Succeeded);
                        model[i].status = PaymentStatus::Succeeded;
                        model[i].updated_at_ms = now_ms.max(model[i].updated_at_ms);
                    }
                }
            }
            8 => {
                if let Some(i) = pick(random(u64::MAX)) {
                    if !model[i].answered && !model[i].status.is_final() {
                        state.abandon(model[i].id);
                        model[i].live = false;
                    }
                }
            }
            _ => {
                let expired = state.expire(now_ms, RETENTION_MS);
                let mut expected = 0;
                for payment in model.iter_mut().filter(|p| p.live) {
                    let old = payment.updated_at_ms + RETENTION_MS <= now_ms;
                    if payment.status.is_final() && old {
                        payment.live = false;
                        expected += 1;
                    }
                }
                assert_eq!(expired, expected);
            }
        }
        assert_eq!(state.len(), model.iter().filter(|p| p.live).count());
    }
    check_invariants(&state);
    for payment in &model {
        let found = state.get(payment.terms.merchant, payment.id);
        assert_eq!(found.is_some(), payment.live);
        if let Some(found) = found {
            assert_eq!(found.status(), payment.status);
            assert_eq!(found.answered(), payment.answered);
        }
    }
}

#[test]
fn a_checkpoint_keeps_new_ids_above_every_deleted_one() {
    let mut state = ShardState::new(SHARD, 0);
    state.restore_created(restored(3, "ord-3", 5)).unwrap();
    state.restore_next_sequence(90);
    // A lower checkpoint (an older one replayed later) never moves the sequence back.
    state.restore_next_sequence(10);
    assert_eq!(state.next_sequence(), 90);
    let fresh = new_id(state.begin_create(visa("ord-3-again"), 6));
    assert_eq!(fresh.sequence, 90);
    check_invariants(&state);
}

#[test]
fn terms_copy_what_the_payment_was_created_with() {
    let mut original = terms(2, "ord-t", 500, "tok_visa");
    original.description = Some("two mugs".to_string());
    original.metadata = vec![("k".to_string(), "v".to_string())];
    let id = PaymentId {
        shard: SHARD,
        sequence: 1,
    };
    let payment = Payment::pending(id, original.clone(), 7);
    assert_eq!(payment.terms(), original);
}
