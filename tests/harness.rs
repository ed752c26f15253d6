//! Self-tests of the harness's Prometheus scraper and error-body checker, so a failing
//! server test means the server, not a parser that accepts or rejects the wrong thing.

mod common;

use common::{parse_error_body, Metrics};

#[test]
fn scraper_reads_names_labels_and_values() {
    let text = "# HELP payd_requests_total Requests.\n\
                # TYPE payd_requests_total counter\n\
                payd_requests_total{route=\"healthz\",status=\"200\"} 7\n\
                payd_requests_total{route=\"a\\\"b\\\\c\",status=\"404\"} 2\n\
                # TYPE lat summary\n\
                lat{route=\"healthz\",quantile=\"0.5\"} 12.5\n\
                lat_sum{route=\"healthz\"} 100\n\
                lat_count{route=\"healthz\"} 8\n\
                process_resident_memory_bytes 1.5e7\n";
    let metrics = Metrics::parse(text).unwrap();
    let healthz = [("route", "healthz"), ("status", "200")];
    assert_eq!(metrics.get("payd_requests_total", &healthz), Some(7.0));
    let escaped = [("route", "a\"b\\c"), ("status", "404")];
    assert_eq!(metrics.get("payd_requests_total", &escaped), Some(2.0));
    assert_eq!(
        metrics.get("payd_requests_total", &[("route", "healthz")]),
        None
    );
    assert_eq!(metrics.sum("payd_requests_total"), 9.0);
    assert_eq!(
        metrics.get("process_resident_memory_bytes", &[]),
        Some(1.5e7)
    );
    assert_eq!(metrics.get("lat_count", &[("route", "healthz")]), Some(8.0));
}

#[test]
fn scraper_rejects_what_prometheus_rejects() {
    let split = "a{core=\"0\"} 1\nb 2\na{core=\"1\"} 3\n";
    assert!(Metrics::parse(split).unwrap_err().contains("one group"));
    let twice = "# TYPE a counter\na 1\n# TYPE a counter\n";
    assert!(Metrics::parse(twice).unwrap_err().contains("twice"));
    let late_type = "a 1\n# TYPE a counter\n";
    assert!(Metrics::parse(late_type).is_err());
    let duplicate = "a{core=\"0\"} 1\na{core=\"0\"} 2\n";
    assert!(Metrics::parse(duplicate).unwrap_err().contains("twice"));
    assert!(Metrics::parse("a{core=\"0} 1\n").is_err());
    assert!(Metrics::parse("a one\n").is_err());
    assert!(Metrics::parse("9a 1\n").is_err());
}

#[test]
fn error_body_must_have_exactly_the_contract_shape() {
    let good = br#"{"error":{"code":"not_found","message":"no such route"}}"#;
    assert_eq!(parse_error_body(good).unwrap().code, "not_found");
    let with_param = br#"{"error":{"code":"invalid_request","message":"m","param":"amount"}}"#;
    assert_eq!(
        parse_error_body(with_param).unwrap().param.as_deref(),
        Some("amount")
    );
    for bad in [
        &br#"{"error":{"code":"x"}}"#[..],
        br#"{"error":{"code":"x","message":"m","extra":1}}"#,
        br#"{"error":{"code":"x","message":"m"},"more":1}"#,
        br#"{"code":"x","message":"m"}"#,
        b"not json",
    ] {
        assert!(
            parse_error_body(bad).is_err(),
            "{:?}",
            String::from_utf8_lossy(bad)
        );
    }
}
