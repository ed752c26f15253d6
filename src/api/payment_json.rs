//! The payment object of API.md section 3 for an answer: a shard's payment seen through
//! the shared writer of `payment_object`, so answers and webhook events never differ.

use crate::auth::MerchantKeys;
use crate::payment::PaymentId;
use crate::payment_object::PaymentView;
use crate::shard::state::Payment;

pub fn write_payment(out: &mut Vec<u8>, payment: &Payment, keys: &MerchantKeys) {
    view(payment, keys).write_json(out);
}

/// The id of a payment object written by `write_payment`, which always starts with it.
pub fn id_of_written(body: &[u8]) -> Option<PaymentId> {
    let rest = body.strip_prefix(b"{\"id\":\"")?;
    let end = rest.iter().position(|&b| b == b'"')?;
    PaymentId::parse(std::str::from_utf8(&rest[..end]).ok()?)
}

/// The payment's fields as the payment object shows them, borrowed from the shard's copy.
fn view<'a>(
    payment: &'a Payment,
    keys: &'a MerchantKeys,
) -> PaymentView<'a, impl Iterator<Item = (&'a str, &'a str)>> {
    PaymentView {
        id: payment.id(),
        merchant_id: keys.merchant_id(payment.merchant()),
        order_id: payment.order_id(),
        amount: payment.amount(),
        currency: payment.currency(),
        status: payment.status(),
        decline_code: payment.decline_code(),
        description: payment.description(),
        metadata: payment.metadata(),
        created_at_ms: payment.created_at_ms(),
        updated_at_ms: payment.updated_at_ms(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::payment::{Authorization, PaymentStatus, PaymentTerms};
    use crate::payment_object::{sample_snapshot, PaymentSnapshot};
    use crate::shard::state::{CreateDecision, ShardState};

    /// A shard's payment answers as the same payment in a webhook event would read.
    #[test]
    fn a_shard_payment_is_written_field_for_field() {
        let expected = PaymentSnapshot {
            status: PaymentStatus::Declined,
            decline_code: Some("card_declined".to_string()),
            ..sample_snapshot()
        };
        let keys = MerchantKeys::new(vec![
            ("m_other".to_string(), vec![b"s0".to_vec()]),
            (expected.merchant_id.clone(), vec![b"s1".to_vec()]),
        ]);
        let mut state = ShardState::new(expected.id.shard, expected.id.sequence);
        let terms = PaymentTerms {
            merchant: 1,
            order_id: expected.order_id.clone(),
            amount: expected.amount,
            currency: expected.currency,
            payment_method: "tok_visa".to_string(),
            description: expected.description.clone(),
            metadata: expected.metadata.clone(),
        };
        let decision = state.begin_create(terms, expected.created_at_ms);
        assert_eq!(decision, CreateDecision::New(expected.id));
        let declined = Authorization::Declined("card_declined".to_string());
        let payment = state
            .finalize(expected.id, &declined, expected.updated_at_ms)
            .unwrap();
        let (mut answer, mut event) = (Vec::new(), Vec::new());
        write_payment(&mut answer, payment, &keys);
        expected.view().write_json(&mut event);
        assert_eq!(
            std::str::from_utf8(&answer).unwrap(),
            std::str::from_utf8(&event).unwrap()
        );
        assert!(!answer.windows(8).any(|w| w == b"tok_visa"));
        assert_eq!(id_of_written(&answer), Some(expected.id));
        assert_eq!(id_of_written(b"{\"error\":{}}"), None);
    }
}
