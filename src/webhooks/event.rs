//! The body of a webhook event (API.md section 5):
//! `{"type": "payment.<status>", "timestamp": ms, "data": {payment object}}`.
//!
//! The payment object is written by the same code as the API's answers
//! (`payment_object`), so a merchant sees one shape in both places. The body is a pure
//! function of the stored event, so every attempt of an event sends the same bytes.

use crate::payment::{EventId, PaymentStatus};
use crate::payment_object::PaymentSnapshot;
use std::io::Write;

/// A payment object is at most a few dozen KiB (its metadata bounds it); most are a few
/// hundred bytes, and a body buffer of this size is rarely grown.
pub const EVENT_BODY_BYTES_TYPICAL: usize = 512;

/// The event's `type`: `payment.` and the final status.
pub fn event_type(status: PaymentStatus) -> &'static str {
    match status {
        PaymentStatus::Pending => panic!("a pending payment has no event"),
        PaymentStatus::Succeeded => "payment.succeeded",
        PaymentStatus::Declined => "payment.declined",
        PaymentStatus::Failed => "payment.failed",
    }
}

/// The event that tells `payment`'s final status: its id, and when it happened (the
/// payment's last update, which is its finalisation).
pub fn final_status_event(payment: &PaymentSnapshot) -> (EventId, u64) {
    assert!(payment.status.is_final());
    (EventId::of_final_status(payment.id), payment.updated_at_ms)
}

/// Appends the body of the event made at `created_at_ms` about `payment`.
pub fn write_event_body(out: &mut Vec<u8>, created_at_ms: u64, payment: &PaymentSnapshot) {
    let _ = write!(
        out,
        "{{\"type\":\"{}\",\"timestamp\":{created_at_ms},\"data\":",
        event_type(payment.status)
    );
    payment.view().write_json(out);
    out.push(b'}');
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::payment::PaymentId;
    use crate::payment_object::sample_snapshot;
    use simd_json::prelude::*;

    #[test]
    fn body_is_type_timestamp_and_the_payment_object() {
        let payment = sample_snapshot();
        let mut body = Vec::new();
        write_event_body(&mut body, 1_763_800_000_125, &payment);
        let mut object = Vec::new();
        payment.view().write_json(&mut object);
        let expected = format!(
            r#"{{"type":"payment.succeeded","timestamp":1763800000125,"data":{}}}"#,
            std::str::from_utf8(&object).unwrap()
        );
        assert_eq!(std::str::from_utf8(&body).unwrap(), expected);
        let value = simd_json::to_owned_value(&mut body.clone()).unwrap();
        assert_eq!(value["type"].as_str(), Some("payment.succeeded"));
        assert_eq!(value["timestamp"].as_u64(), Some(1_763_800_000_125));
        assert_eq!(
            value["data"]["id"].as_str(),
            Some("pay_00030000000000000007")
        );
        assert_eq!(value["data"].as_object().unwrap().len(), 12);
    }

    #[test]
    fn type_names_each_final_status() {
        for (status, name) in [
            (PaymentStatus::Succeeded, "payment.succeeded"),
            (PaymentStatus::Declined, "payment.declined"),
            (PaymentStatus::Failed, "payment.failed"),
        ] {
            assert_eq!(event_type(status), name);
            let payment = PaymentSnapshot {
                status,
                ..sample_snapshot()
            };
            let mut body = Vec::new();
            write_event_body(&mut body, 1, &payment);
            assert!(body.starts_with(format!(r#"{{"type":"{name}","#).as_bytes()));
        }
    }

    #[test]
    #[should_panic]
    fn a_pending_payment_has_no_event() {
        event_type(PaymentStatus::Pending);
    }

    #[test]
    fn the_final_event_is_named_after_its_payment_and_stable() {
        let payment = sample_snapshot();
        let (event, created_at_ms) = final_status_event(&payment);
        assert_eq!(event.to_string(), "evt_00030000000000000007");
        assert_eq!(created_at_ms, payment.updated_at_ms);
        // Rebuilt (a retry, a restart): the same id and the same bytes.
        assert_eq!(final_status_event(&payment.clone()), (event, created_at_ms));
        let (mut first, mut second) = (Vec::new(), Vec::new());
        write_event_body(&mut first, created_at_ms, &payment);
        write_event_body(&mut second, created_at_ms, &payment.clone());
        assert_eq!(first, second);
        let other = PaymentSnapshot {
            id: PaymentId {
                shard: 3,
                sequence: 8,
            },
            ..payment
        };
        assert_ne!(final_status_event(&other).0, event);
    }
}
