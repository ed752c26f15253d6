#!/usr/bin/env python3
"""An independent Standard Webhooks verifier and receiver for payd's tests.

Every signature is checked by the reference implementation, the Python package
`standardwebhooks` (pip install standardwebhooks), never by payd's own code.

    webhook_verify.py verify --secret whsec_... --id evt_... --timestamp 1763800000 \
        --signature 'v1,...' < body
        Exit 0 when the signature verifies (timestamp within 5 minutes of now), 1 when
        it does not, 2 on bad usage.

    webhook_verify.py serve --secret whsec_... [--port 0] [--fail-first N]
        [--fail-status 500] [--retry-after SECS] [--hang]
        [--tls-cert PEM --tls-key PEM] [--close]
        A receiver on 127.0.0.1. Its first stdout line is `listening PORT`; then one
        JSON line per request received:
        {"id", "timestamp", "verified", "type", "payment_id", "attempt", "answered"}
        `attempt` counts the requests seen for that webhook-id (1 first). The first N
        attempts of each id are answered `--fail-status` (with `Retry-After` when given),
        later ones 204. `--hang` never answers: a dead endpoint that accepts connections.
        With `--tls-cert` and `--tls-key` it serves HTTPS only (Python's `ssl`), and each
        line ends with "tls_resumed": whether the request's connection resumed a TLS
        session. `--close` closes the connection after every answer.
"""

import argparse
import json
import ssl
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from standardwebhooks.webhooks import Webhook, WebhookVerificationError

# A body over this is not a payd event (the largest payment object is under 100 KiB).
BODY_BYTES_MAX = 1 << 20


def verify(secret, headers, body):
    """The parsed JSON body if the signature verifies, else None."""
    try:
        return Webhook(secret).verify(body, headers)
    except WebhookVerificationError:
        return None


def command_verify(args):
    body = sys.stdin.buffer.read(BODY_BYTES_MAX + 1)
    if len(body) > BODY_BYTES_MAX:
        print("body too large", file=sys.stderr)
        return 2
    headers = {
        "webhook-id": args.id,
        "webhook-timestamp": args.timestamp,
        "webhook-signature": args.signature,
    }
    if verify(args.secret, headers, body) is None:
        print("signature does not verify", file=sys.stderr)
        return 1
    return 0


def make_handler(args):
    attempts = {}
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self):
            length = int(self.headers.get("content-length", "0"))
            body = self.rfile.read(min(length, BODY_BYTES_MAX))
            headers = {name.lower(): value for name, value in self.headers.items()}
            event_id = headers.get("webhook-id", "")
            with lock:
                attempts[event_id] = attempts.get(event_id, 0) + 1
                attempt = attempts[event_id]
            parsed = verify(args.secret, headers, body)
            if args.hang:
                answered = None
            elif attempt <= args.fail_first:
                answered = args.fail_status
            else:
                answered = 204
            record = {
                "id": event_id,
                "timestamp": headers.get("webhook-timestamp"),
                "verified": parsed is not None,
                "type": parsed.get("type") if isinstance(parsed, dict) else None,
                "payment_id": (parsed.get("data") or {}).get("id")
                if isinstance(parsed, dict)
                else None,
                "attempt": attempt,
                "answered": answered,
            }
            if isinstance(self.connection, ssl.SSLSocket):
                record["tls_resumed"] = self.connection.session_reused
            with lock:
                print(json.dumps(record), flush=True)
            if answered is None:
                # Hold the connection open without answering, as a hung server does.
                while True:
                    time.sleep(3600)
            self.send_response(answered)
            if answered != 204 and args.retry_after is not None:
                self.send_header("Retry-After", str(args.retry_after))
            if args.close:
                self.send_header("Connection", "close")
                self.close_connection = True
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format, *values):
            pass  # stdout carries only the JSON lines

    return Handler


def command_serve(args):
    server = ThreadingHTTPServer(("127.0.0.1", args.port), make_handler(args))
    server.daemon_threads = True
    if args.tls_cert:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(args.tls_cert, args.tls_key)
        # The handshake runs in the request's thread, so a client that fails it (payd
        # refusing the certificate) never holds up the accept loop.
        server.socket = context.wrap_socket(
            server.socket, server_side=True, do_handshake_on_connect=False
        )
    print(f"listening {server.server_address[1]}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    return 0


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    check = commands.add_parser("verify")
    check.add_argument("--secret", required=True)
    check.add_argument("--id", required=True)
    check.add_argument("--timestamp", required=True)
    check.add_argument("--signature", required=True)
    serve = commands.add_parser("serve")
    serve.add_argument("--secret", required=True)
    serve.add_argument("--port", type=int, default=0)
    serve.add_argument("--fail-first", type=int, default=0)
    serve.add_argument("--fail-status", type=int, default=500)
    serve.add_argument("--retry-after", type=int)
    serve.add_argument("--hang", action="store_true")
    serve.add_argument("--tls-cert")
    serve.add_argument("--tls-key")
    serve.add_argument("--close", action="store_true")
    args = parser.parse_args()
    if args.command == "verify":
        return command_verify(args)
    return command_serve(args)


if __name__ == "__main__":
    sys.exit(main())
