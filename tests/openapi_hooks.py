"""Schemathesis hooks for tests/openapi.rs: every generated request to a /v1 route is
signed the way payd expects, over the exact bytes that go on the wire.

Signing happens in two steps. An auth provider puts the merchant id and placeholders
for the timestamp and signature into each /v1 case (leaving out any header a negative
case removes on purpose), so schemathesis knows the case carries credentials and can
probe what happens without them. Then a requests auth handler, which runs after
requests has encoded the URL and the body, replaces the placeholders with the real
timestamp and HMAC over the request-target (path and query as sent) and body exactly
as payd receives them. A request whose credentials schemathesis removed or replaced is
left as it is, and must be refused. The merchant and its secret come from the
environment the Rust test sets: PAYD_OPENAPI_MERCHANT and PAYD_OPENAPI_SECRET.
"""

import hashlib
import hmac
import json
import os
import time

import requests
import schemathesis
from schemathesis.core.parameters import ParameterLocation
from schemathesis.generation.meta import negated_parameters

MERCHANT = os.environ["PAYD_OPENAPI_MERCHANT"]
SECRET = os.environ["PAYD_OPENAPI_SECRET"].encode()

MERCHANT_HEADER = "X-Payd-Merchant"
TIMESTAMP_HEADER = "X-Payd-Timestamp"
SIGNATURE_HEADER = "X-Payd-Signature"
PLACEHOLDER = "to-be-signed"


def signature(timestamp, method, target, body):
    message = b"\n".join([timestamp.encode(), method.encode(), target.encode(), body])
    return "v1=" + hmac.new(SECRET, message, hashlib.sha256).hexdigest()


class PaydSignature(requests.auth.AuthBase):
    """Signs a prepared request that carries our merchant and both placeholders."""

    def __call__(self, request):
        headers = request.headers
        wanted = (
            headers.get(MERCHANT_HEADER) == MERCHANT
            and headers.get(TIMESTAMP_HEADER) == PLACEHOLDER
            and headers.get(SIGNATURE_HEADER) == PLACEHOLDER
        )
        if wanted:
            body = request.body or b""
            if isinstance(body, str):
                body = body.encode()
            timestamp = str(int(time.time()))
            headers[TIMESTAMP_HEADER] = timestamp
            headers[SIGNATURE_HEADER] = signature(
                timestamp, request.method, request.path_url, body
            )
        return request


@schemathesis.auth().apply_to(path_regex="^/v1/")
class PaydCredentials:
    def get(self, case, context):
        return MERCHANT

    def set(self, case, data, context):
        removed = {name.lower() for name, _ in negated_parameters(case.meta)}
        if case.headers is None:
            case.headers = {}
        for name, value in (
            (MERCHANT_HEADER, data),
            (TIMESTAMP_HEADER, PLACEHOLDER),
            (SIGNATURE_HEADER, PLACEHOLDER),
        ):
            if name.lower() not in removed:
                case.headers[name] = value


@schemathesis.hook
def before_call(context, case, kwargs):
    kwargs["auth"] = PaydSignature()


@schemathesis.hook
def map_body(context, body):
    """payd takes an amount only as an integer literal (1e3 and 1936.0 are refused, as
    its contract says), while JSON Schema counts 1936.0 as an integer: send such values
    the way a client would write them."""
    if isinstance(body, dict) and isinstance(body.get("amount"), float):
        if body["amount"].is_integer():
            body["amount"] = int(body["amount"])
    return body


@schemathesis.hook
def filter_failure(context, failure, case, response):
    """A cursor of the right shape that is not one of the merchant's failed events is
    refused with 400 on `starting_after`, by contract; no schema can say which event
    ids exist, so that refusal of a schema-valid request is not a failure."""
    if case.operation.label != "GET /v1/events" or response.status_code != 400:
        return True
    try:
        param = json.loads(response.content)["error"].get("param")
    except (ValueError, KeyError, AttributeError, TypeError):
        return True
    return param != "starting_after"
