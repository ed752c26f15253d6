//! The payment object of API.md section 3 for an answer: a shard's payment seen through
//! the shared writer of `payment_object`, so answers and webhook events never differ.

use crate::auth::MerchantKeys;
use crate::payment_object::PaymentView;
use crate::shard::state::Payment;

pub fn write_payment(out: &mut Vec<u8>, payment: &Payment, keys: &MerchantKeys) {
    view(payment, keys).write_json(out);
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
