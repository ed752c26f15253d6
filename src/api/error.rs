//! The error catalogue of API.md section 2: one kind per `error.code`, each with its
//! HTTP status. Every layer's error turns into an `ApiError` here, in one place.

pub use crate::payment_object::write_json_string;
use std::borrow::Cow;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorKind {
    BadRequest,
    InvalidJson,
    InvalidRequest,
    RawCardDataRejected,
    AuthenticationRequired,
    TimestampOutOfRange,
    InvalidSignature,
    NotFound,
    PaymentNotFound,
    MethodNotAllowed,
    RequestTimeout,
    OrderConflict,
    RequestInProgress,
    BodyTooLarge,
    UnsupportedMediaType,
    HeadersTooLarge,
    NotImplemented,
    Overloaded,
    /// A WebSocket connection's own excess over `websocket.max_in_flight_per_connection`:
    /// the client's doing, hence 429 rather than the server's 503 (same code).
    InFlightLimit,
    NotReady,
    InternalError,
}

impl ErrorKind {
    pub fn status(self) -> u16 {
        match self {
            ErrorKind::BadRequest
            | ErrorKind::InvalidJson
            | ErrorKind::InvalidRequest
            | ErrorKind::RawCardDataRejected => 400,
            ErrorKind::AuthenticationRequired
            | ErrorKind::TimestampOutOfRange
            | ErrorKind::InvalidSignature => 401,
            ErrorKind::NotFound | ErrorKind::PaymentNotFound => 404,
            ErrorKind::MethodNotAllowed => 405,
            ErrorKind::RequestTimeout => 408,
            ErrorKind::OrderConflict | ErrorKind::RequestInProgress => 409,
            ErrorKind::BodyTooLarge => 413,
            ErrorKind::UnsupportedMediaType => 415,
            ErrorKind::InFlightLimit => 429,
            ErrorKind::HeadersTooLarge => 431,
            ErrorKind::InternalError => 500,
            ErrorKind::NotImplemented => 501,
            ErrorKind::Overloaded | ErrorKind::NotReady => 503,
        }
    }

    pub fn code(self) -> &'static str {
        match self {
            ErrorKind::BadRequest => "bad_request",
            ErrorKind::InvalidJson => "invalid_json",
            ErrorKind::InvalidRequest => "invalid_request",
            ErrorKind::RawCardDataRejected => "raw_card_data_rejected",
            ErrorKind::AuthenticationRequired => "authentication_required",
            ErrorKind::TimestampOutOfRange => "timestamp_out_of_range",
            ErrorKind::InvalidSignature => "invalid_signature",
            ErrorKind::NotFound => "not_found",
            ErrorKind::PaymentNotFound => "payment_not_found",
            ErrorKind::MethodNotAllowed => "method_not_allowed",
            ErrorKind::RequestTimeout => "request_timeout",
            ErrorKind::OrderConflict => "order_conflict",
            ErrorKind::RequestInProgress => "request_in_progress",
            ErrorKind::BodyTooLarge => "body_too_large",
            ErrorKind::UnsupportedMediaType => "unsupported_media_type",
            ErrorKind::HeadersTooLarge => "headers_too_large",
            ErrorKind::NotImplemented => "not_implemented",
            ErrorKind::Overloaded | ErrorKind::InFlightLimit => "overloaded",
            ErrorKind::NotReady => "not_ready",
            ErrorKind::InternalError => "internal_error",
        }
    }

    /// The default human message; handlers may give a more precise one.
    pub fn default_message(self) -> &'static str {
        match self {
            ErrorKind::BadRequest => "malformed HTTP request",
            ErrorKind::InvalidJson => "body is not a valid JSON object",
            ErrorKind::InvalidRequest => "invalid request",
            ErrorKind::RawCardDataRejected => {
                "payment_method looks like a card number; send a token instead"
            }
            ErrorKind::AuthenticationRequired => {
                "X-Payd-Merchant, X-Payd-Timestamp and X-Payd-Signature are required"
            }
            ErrorKind::TimestampOutOfRange => "X-Payd-Timestamp is too far from the server's clock",
            ErrorKind::InvalidSignature => "signature does not match",
            ErrorKind::NotFound => "no such route",
            ErrorKind::PaymentNotFound => "no such payment",
            ErrorKind::MethodNotAllowed => "method not allowed on this route",
            ErrorKind::RequestTimeout => "request not received in time",
            ErrorKind::OrderConflict => {
                "order_id was already used with a different amount, currency or payment_method"
            }
            ErrorKind::RequestInProgress => {
                "the first request for this order_id is still in progress"
            }
            ErrorKind::BodyTooLarge => "request body too large",
            ErrorKind::UnsupportedMediaType => "Content-Type must be application/json",
            ErrorKind::HeadersTooLarge => "request headers too large",
            ErrorKind::NotImplemented => "unsupported Transfer-Encoding",
            ErrorKind::Overloaded => "server overloaded, retry later",
            ErrorKind::InFlightLimit => {
                "too many requests in flight on this connection; read the answers first"
            }
            ErrorKind::NotReady => "server not ready",
            ErrorKind::InternalError => "internal error",
        }
    }
}

/// An error as the client sees it: kind (status and code), message, and the field at fault.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApiError {
    pub kind: ErrorKind,
    pub message: Cow<'static, str>,
    pub param: Option<Cow<'static, str>>,
}

impl ApiError {
    pub fn new(kind: ErrorKind) -> ApiError {
        ApiError {
            kind,
            message: Cow::Borrowed(kind.default_message()),
            param: None,
        }
    }

    pub fn with_message(kind: ErrorKind, message: impl Into<Cow<'static, str>>) -> ApiError {
        ApiError {
            kind,
            message: message.into(),
            param: None,
        }
    }

    /// `invalid_request` on one field. The message must never quote the field's value.
    pub fn invalid_param(
        param: impl Into<Cow<'static, str>>,
        message: impl Into<Cow<'static, str>>,
    ) -> ApiError {
        ApiError {
            kind: ErrorKind::InvalidRequest,
            message: message.into(),
            param: Some(param.into()),
        }
    }

    pub fn with_param(mut self, param: impl Into<Cow<'static, str>>) -> ApiError {
        self.param = Some(param.into());
        self
    }

    /// Appends `{"error":{"code":..,"message":..,"param":..}}` to `out`.
    pub fn write_json(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(b"{\"error\":{\"code\":\"");
        out.extend_from_slice(self.kind.code().as_bytes());
        out.extend_from_slice(b"\",\"message\":");
        write_json_string(out, &self.message);
        if let Some(param) = &self.param {
            out.extend_from_slice(b",\"param\":");
            write_json_string(out, param);
        }
        out.extend_from_slice(b"}}");
    }
}

impl From<crate::auth::AuthError> for ApiError {
    /// The messages say what to fix without revealing which merchants exist.
    fn from(error: crate::auth::AuthError) -> ApiError {
        use crate::auth::AuthError;
        match error {
            AuthError::AuthenticationRequired => ApiError::with_message(
                ErrorKind::AuthenticationRequired,
                "X-Payd-Merchant, X-Payd-Timestamp and X-Payd-Signature (v1= and 64 hex digits) are required",
            ),
            AuthError::TimestampOutOfRange => ApiError::with_message(
                ErrorKind::TimestampOutOfRange,
                "X-Payd-Timestamp is too far from the server's clock",
            ),
            AuthError::InvalidSignature => ApiError::with_message(
                ErrorKind::InvalidSignature,
                "the signature does not match the request",
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_json_has_code_message_and_param() {
        let mut out = Vec::new();
        ApiError::invalid_param("amount", "amount must be a positive integer").write_json(&mut out);
        assert_eq!(
            std::str::from_utf8(&out).unwrap(),
            r#"{"error":{"code":"invalid_request","message":"amount must be a positive integer","param":"amount"}}"#
        );
    }

    #[test]
    fn json_strings_escape_quotes_and_controls() {
        let mut out = Vec::new();
        write_json_string(&mut out, "a\"b\\c\n\u{1}");
        assert_eq!(std::str::from_utf8(&out).unwrap(), r#""a\"b\\c\n\u0001""#);
    }
}
