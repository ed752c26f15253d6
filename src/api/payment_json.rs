//! The payment object of API.md section 3, written as JSON. The payment method token is
//! never written.

use super::error::write_json_string;
use crate::auth::MerchantKeys;
use crate::shard::state::Payment;
use std::io::Write;

pub fn write_payment(out: &mut Vec<u8>, payment: &Payment, keys: &MerchantKeys) {
    let _ = write!(
        out,
        "{{\"id\":\"{}\",\"object\":\"payment\",\"merchant_id\":",
        payment.id()
    );
    write_json_string(out, keys.merchant_id(payment.merchant()));
    out.extend_from_slice(b",\"order_id\":");
    write_json_string(out, payment.order_id());
    let _ = write!(
        out,
        ",\"amount\":{},\"currency\":\"{}\",\"status\":\"{}\",\"decline_code\":",
        payment.amount(),
        payment.currency().as_str(),
        payment.status().as_str()
    );
    write_optional_string(out, payment.decline_code());
    out.extend_from_slice(b",\"description\":");
    write_optional_string(out, payment.description());
    out.extend_from_slice(b",\"metadata\":{");
    for (index, (key, value)) in payment.metadata().enumerate() {
        if index > 0 {
            out.push(b',');
        }
        write_json_string(out, key);
        out.push(b':');
        write_json_string(out, value);
    }
    let _ = write!(
        out,
        "}},\"created_at\":{},\"updated_at\":{}}}",
        payment.created_at_ms(),
        payment.updated_at_ms()
    );
}

fn write_optional_string(out: &mut Vec<u8>, value: Option<&str>) {
    match value {
        Some(value) => write_json_string(out, value),
        None => out.extend_from_slice(b"null"),
    }
}
