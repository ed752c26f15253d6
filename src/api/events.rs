//! `GET /v1/events?delivery=failed`: the signing merchant's webhook events whose delivery
//! failed for good (every retry failed, or the receiver answered 410), so it can fetch
//! what it missed. Signed like every `/v1` route; lists only the signer's events.
//!
//! Query parameters: `delivery` (required, `failed`), `limit` (1 to `EVENTS_LIMIT_MAX`,
//! default `EVENTS_LIMIT_DEFAULT`) and `starting_after` (an event id from a previous
//! page). The list is ordered by the time of the dead letter, then event id, over every
//! shard; a page says whether more follow (`has_more`).

use super::error::{ApiError, ErrorKind};
use super::payments::authenticate;
use super::{write_error, Context, Request};
use crate::http::Response;
use crate::payment::EventId;
use crate::payment_object::write_json_string;
use crate::shard::mesh::{EventsError, FailedEventsPage};
use crate::shard::webhooks::FailedEvent;

/// Events on one page unless `limit` says otherwise.
pub const EVENTS_LIMIT_DEFAULT: usize = 50;
/// The most events on one page: a page is a bounded answer, however many failed.
pub const EVENTS_LIMIT_MAX: usize = 100;
/// Query parameters of one request: more is no list query of ours.
const QUERY_PARAMETERS_MAX: usize = 8;
/// An unknown parameter's name is quoted back only if it is this short and plain.
const PARAMETER_NAME_QUOTED_LENGTH_MAX: usize = 32;

/// What the query asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EventsListQuery {
    pub limit: usize,
    pub starting_after: Option<EventId>,
}

pub async fn list(context: &Context, request: Request<'_>, response: &mut Response) {
    let merchant = match authenticate(context, &request) {
        Ok(merchant) => merchant,
        Err(error) => return write_error(response, &error),
    };
    let query = match parse_query(request.target) {
        Ok(query) => query,
        Err(error) => return write_error(response, &error),
    };
    if query
        .starting_after
        .is_some_and(|event| event.shard >= context.shard_count)
    {
        return write_error(response, &unknown_cursor());
    }
    let page = context
        .peers
        .failed_events(merchant, query.starting_after, query.limit)
        .await;
    match page {
        Ok(page) => write_page(&mut response.body, &page),
        Err(EventsError::UnknownCursor) => write_error(response, &unknown_cursor()),
        Err(EventsError::NotReady) => write_error(response, &ApiError::new(ErrorKind::NotReady)),
    }
}

fn unknown_cursor() -> ApiError {
    ApiError::invalid_param(
        "starting_after",
        "starting_after must be the id of one of your failed events",
    )
}

/// Parses the query of `target` (after `?`). Every parameter once, none unknown.
pub fn parse_query(target: &[u8]) -> Result<EventsListQuery, ApiError> {
    let query = match target.iter().position(|&b| b == b'?') {
        Some(at) => &target[at + 1..],
        None => &[][..],
    };
    let mut delivery = None;
    let mut limit = None;
    let mut starting_after = None;
    let pairs = query.split(|&b| b == b'&').filter(|pair| !pair.is_empty());
    for (index, pair) in pairs.enumerate() {
        if index >= QUERY_PARAMETERS_MAX {
            return Err(ApiError::invalid_param(
                "query",
                "too many query parameters",
            ));
        }
        let (name, value) = match pair.iter().position(|&b| b == b'=') {
            Some(at) => (&pair[..at], &pair[at + 1..]),
            None => (pair, &[][..]),
        };
        let slot = match name {
            b"delivery" => &mut delivery,
            b"limit" => &mut limit,
            b"starting_after" => &mut starting_after,
            _ => return Err(unknown_parameter(name)),
        };
        if slot.replace(value).is_some() {
            let name = std::str::from_utf8(name).expect("a known name");
            return Err(ApiError::invalid_param(
                name.to_string(),
                format!("{name} is given more than once"),
            ));
        }
    }
    match delivery {
        Some(b"failed") => {}
        _ => {
            return Err(ApiError::invalid_param(
                "delivery",
                "delivery must be failed (the only list of events payd keeps)",
            ))
        }
    }
    Ok(EventsListQuery {
        limit: limit.map_or(Ok(EVENTS_LIMIT_DEFAULT), parse_limit)?,
        starting_after: starting_after.map(parse_event_id).transpose()?,
    })
}

fn unknown_parameter(name: &[u8]) -> ApiError {
    let plain = !name.is_empty()
        && name.len() <= PARAMETER_NAME_QUOTED_LENGTH_MAX
        && name
            .iter()
            .all(|&b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
    let param = if plain {
        std::str::from_utf8(name).expect("ASCII").to_string()
    } else {
        "query".to_string()
    };
    ApiError::invalid_param(
        param,
        "unknown query parameter; use delivery, limit and starting_after",
    )
}

fn parse_limit(text: &[u8]) -> Result<usize, ApiError> {
    let error = || {
        ApiError::invalid_param(
            "limit",
            format!("limit must be an integer from 1 to {EVENTS_LIMIT_MAX}"),
        )
    };
    // At most three digits: no overflow, and no leading sign or spaces.
    if text.is_empty() || text.len() > 3 || !text.iter().all(u8::is_ascii_digit) {
        return Err(error());
    }
    let limit = std::str::from_utf8(text)
        .expect("digits")
        .parse::<usize>()
        .expect("three digits");
    if (1..=EVENTS_LIMIT_MAX).contains(&limit) {
        Ok(limit)
    } else {
        Err(error())
    }
}

fn parse_event_id(text: &[u8]) -> Result<EventId, ApiError> {
    match std::str::from_utf8(text).ok().and_then(EventId::parse) {
        Some(event) => Ok(event),
        None => Err(ApiError::invalid_param(
            "starting_after",
            "starting_after must be an event id (evt_...)",
        )),
    }
}

/// `{"object":"list","data":[event, ...],"has_more":bool}`.
pub fn write_page(out: &mut Vec<u8>, page: &FailedEventsPage) {
    out.extend_from_slice(br#"{"object":"list","data":["#);
    for (index, event) in page.events.iter().enumerate() {
        if index > 0 {
            out.push(b',');
        }
        write_event(out, event);
    }
    out.extend_from_slice(br#"],"has_more":"#);
    out.extend_from_slice(if page.has_more { b"true" } else { b"false" });
    out.push(b'}');
}

fn write_event(out: &mut Vec<u8>, event: &FailedEvent) {
    let mut number = itoa::Buffer::new();
    out.extend_from_slice(br#"{"id":"#);
    write_json_string(out, &event.event.to_string());
    out.extend_from_slice(br#","object":"event","type":"#);
    write_json_string(out, event.event_type());
    out.extend_from_slice(br#","payment_id":"#);
    write_json_string(out, &event.payment.id.to_string());
    out.extend_from_slice(br#","delivery":"failed","attempts":"#);
    out.extend_from_slice(number.format(event.attempts).as_bytes());
    out.extend_from_slice(br#","last_attempt_at":"#);
    out.extend_from_slice(number.format(event.failed_at_ms).as_bytes());
    out.extend_from_slice(br#","last_status":"#);
    match event.last_status {
        Some(status) => out.extend_from_slice(number.format(status).as_bytes()),
        None => out.extend_from_slice(b"null"),
    }
    out.extend_from_slice(br#","created_at":"#);
    out.extend_from_slice(number.format(event.created_at_ms).as_bytes());
    out.extend_from_slice(br#","data":"#);
    event.payment.view().write_json(out);
    out.push(b'}');
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::payment_object::sample_snapshot;
    use simd_json::prelude::*;

    fn parsed(target: &str) -> Result<EventsListQuery, ApiError> {
        parse_query(target.as_bytes())
    }

    fn param_of(target: &str) -> String {
        parsed(target).unwrap_err().param.unwrap().to_string()
    }

    #[test]
    fn a_query_takes_delivery_limit_and_a_cursor() {
        assert_eq!(
            parsed("/v1/events?delivery=failed"),
            Ok(EventsListQuery {
                limit: EVENTS_LIMIT_DEFAULT,
                starting_after: None
            })
        );
        let query =
            parsed("/v1/events?limit=100&delivery=failed&starting_after=evt_0001000000000000002a");
        assert_eq!(
            query,
            Ok(EventsListQuery {
                limit: 100,
                starting_after: Some(EventId {
                    shard: 1,
                    sequence: 42
                })
            })
        );
        assert_eq!(
            parsed("/v1/events?delivery=failed&limit=1").unwrap().limit,
            1
        );
    }

    #[test]
    fn a_bad_query_names_its_parameter() {
        assert_eq!(param_of("/v1/events"), "delivery");
        assert_eq!(param_of("/v1/events?delivery=delivered"), "delivery");
        assert_eq!(param_of("/v1/events?delivery="), "delivery");
        for limit in ["0", "101", "-1", "1e2", "", "0050x", "99999999999999999999"] {
            let target = format!("/v1/events?delivery=failed&limit={limit}");
            assert_eq!(param_of(&target), "limit", "{limit}");
        }
        for cursor in [
            "pay_0001000000000000002a",
            "evt_1",
            "evt_0001000000000000002A",
        ] {
            let target = format!("/v1/events?delivery=failed&starting_after={cursor}");
            assert_eq!(param_of(&target), "starting_after", "{cursor}");
        }
        assert_eq!(param_of("/v1/events?delivery=failed&type=x"), "type");
        assert_eq!(
            param_of("/v1/events?delivery=failed&%3Cscript%3E=1"),
            "query"
        );
        assert_eq!(
            param_of("/v1/events?delivery=failed&delivery=failed"),
            "delivery"
        );
        let many =
            "/v1/events?delivery=failed".to_string() + &"&".repeat(3) + &"&limit=1".repeat(9);
        assert!(parsed(&many).is_err());
        let error = parsed("/v1/events?delivery=nope").unwrap_err();
        assert_eq!(error.kind, ErrorKind::InvalidRequest);
    }

    #[test]
    fn a_page_is_a_list_object_with_each_event_and_its_payment() {
        let payment = sample_snapshot();
        let event = FailedEvent {
            event: EventId::of_final_status(payment.id),
            attempts: 8,
            last_status: None,
            failed_at_ms: 1_763_900_000_000,
            created_at_ms: payment.updated_at_ms,
            payment,
        };
        let gone = FailedEvent {
            attempts: 1,
            last_status: Some(410),
            ..FailedEvent {
                payment: sample_snapshot(),
                ..event
            }
        };
        let page = FailedEventsPage {
            events: vec![event, gone],
            has_more: true,
        };
        let mut out = Vec::new();
        write_page(&mut out, &page);
        let value = simd_json::to_owned_value(&mut out.clone()).unwrap();
        assert_eq!(value["object"].as_str(), Some("list"));
        assert_eq!(value["has_more"].as_bool(), Some(true));
        let first = &value["data"][0];
        assert_eq!(first["id"].as_str(), Some("evt_00030000000000000007"));
        assert_eq!(first["object"].as_str(), Some("event"));
        assert_eq!(first["type"].as_str(), Some("payment.succeeded"));
        assert_eq!(
            first["payment_id"].as_str(),
            Some("pay_00030000000000000007")
        );
        assert_eq!(first["delivery"].as_str(), Some("failed"));
        assert_eq!(first["attempts"].as_u64(), Some(8));
        assert_eq!(first["last_attempt_at"].as_u64(), Some(1_763_900_000_000));
        assert!(first["last_status"].is_null());
        assert_eq!(first["created_at"].as_u64(), Some(1_763_800_000_125));
        assert_eq!(
            first["data"]["id"].as_str(),
            Some("pay_00030000000000000007")
        );
        assert_eq!(first.as_object().unwrap().len(), 10);
        assert_eq!(value["data"][1]["last_status"].as_u64(), Some(410));
        let mut empty = Vec::new();
        write_page(
            &mut empty,
            &FailedEventsPage {
                events: Vec::new(),
                has_more: false,
            },
        );
        assert_eq!(empty, br#"{"object":"list","data":[],"has_more":false}"#);
    }
}
