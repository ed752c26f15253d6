//! Which shard owns a payment, and which core runs a shard.
//!
//! The shard of an order is written into its payment id and into the data directory's
//! layout, so the hash must give the same answer in every build, on every Rust version and
//! on every machine for ever: it is CRC32C (a fixed, specified polynomial), never `std`'s
//! `Hash`, whose output may change between releases.

/// The shard that owns the order `order_id` of merchant `merchant_id`, in `0..shards`.
///
/// The zero byte between the two parts keeps `("ab", "c")` and `("a", "bc")` apart: neither
/// a merchant id nor an order id can contain one.
pub fn shard_of(merchant_id: &str, order_id: &str, shards: u16) -> u16 {
    assert!(shards > 0, "a data directory has at least one shard");
    let checksum = crc32c::crc32c(merchant_id.as_bytes());
    let checksum = crc32c::crc32c_append(checksum, &[0]);
    let checksum = crc32c::crc32c_append(checksum, order_id.as_bytes());
    let shard = checksum % u32::from(shards);
    u16::try_from(shard).expect("shard is below a u16 shard count")
}

/// The core (an index into the server's configured cores) that runs `shard`. A restart
/// with another core count maps the same shards onto the new cores; nothing moves on disk.
pub fn core_of(shard: u16, cores: usize) -> usize {
    assert!(cores > 0, "the server runs on at least one core");
    usize::from(shard) % cores
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shard_of_never_changes() {
        // These values were computed once and are hard-coded on purpose: the shard of an
        // order is persisted (in payment ids and on disk), so if this test ever fails the
        // hash changed and existing data directories would route orders to the wrong shard.
        // Fix the hash; never update these numbers. They were computed by an independent
        // bit-by-bit CRC32C (polynomial 0x82F63B78) outside Rust.
        assert_eq!(crc32c::crc32c(b"123456789"), 0xe306_9283);
        assert_eq!(shard_of("m_demo", "ord-1", u16::MAX), 27_551);
        assert_eq!(shard_of("m_demo", "ord-20261122-0001", 4096), 2_452);
        assert_eq!(shard_of("m_demo", "ord-1", 1), 0);
    }

    #[test]
    fn shard_of_separates_merchant_from_order() {
        assert_ne!(shard_of("ab", "c", u16::MAX), shard_of("a", "bc", u16::MAX));
    }

    #[test]
    fn shard_of_spreads_orders_evenly() {
        const SHARDS: u16 = 16;
        const ORDERS: usize = 64_000;
        let mut counts = [0usize; SHARDS as usize];
        for order in 0..ORDERS {
            let order_id = format!("ord-{order}");
            counts[usize::from(shard_of("m_demo", &order_id, SHARDS))] += 1;
        }
        let expected = ORDERS / usize::from(SHARDS);
        for (shard, count) in counts.iter().enumerate() {
            // 4000 expected per shard; a fair hash stays well within 10% (about 6 sigma).
            assert!(
                count.abs_diff(expected) < expected / 10,
                "shard {shard} got {count} of {ORDERS} orders"
            );
        }
    }

    #[test]
    fn shard_of_stays_below_the_shard_count() {
        for shards in [1, 2, 3, 7, 4096] {
            for order in 0..200 {
                assert!(shard_of("m", &format!("o{order}"), shards) < shards);
            }
        }
    }

    #[test]
    fn core_of_wraps_shards_onto_cores() {
        assert_eq!(core_of(0, 2), 0);
        assert_eq!(core_of(1, 2), 1);
        assert_eq!(core_of(2, 2), 0);
        assert_eq!(core_of(5, 1), 0);
        assert_eq!(core_of(7, 3), 1);
    }
}
