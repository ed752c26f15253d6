#!/usr/bin/env python3
"""A minimal acquirer behind TLS (Python's `ssl`), for payd's TLS tests.

    tls_acquirer.py --tls-cert PEM --tls-key PEM [--port 0]

Serves `POST /v1/authorize` over HTTPS on 127.0.0.1 as API.md section 4 says, for the
tokens the tests use: `tok_decline` is declined with `card_declined`, anything else is
approved. Its first stdout line is `listening PORT`; then one JSON line per request:
{"idempotency_key", "payment_method", "tls_resumed"}.
"""

import argparse
import json
import ssl
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

# An authorisation body is a few hundred bytes.
BODY_BYTES_MAX = 64 * 1024


def make_handler():
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self):
            length = int(self.headers.get("content-length", "0"))
            body = self.rfile.read(min(length, BODY_BYTES_MAX))
            try:
                request = json.loads(body)
            except ValueError:
                request = {}
            token = request.get("payment_method") if isinstance(request, dict) else None
            with lock:
                print(
                    json.dumps(
                        {
                            "idempotency_key": self.headers.get("idempotency-key"),
                            "payment_method": token,
                            "tls_resumed": self.connection.session_reused,
                        }
                    ),
                    flush=True,
                )
            if self.path != "/v1/authorize":
                answer = (404, {"error": "not found"})
            elif token == "tok_decline":
                answer = (200, {"approved": False, "code": "card_declined"})
            else:
                answer = (200, {"approved": True})
            payload = json.dumps(answer[1]).encode()
            self.send_response(answer[0])
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, format, *values):
            pass  # stdout carries only the JSON lines

    return Handler


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tls-cert", required=True)
    parser.add_argument("--tls-key", required=True)
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args()
    server = ThreadingHTTPServer(("127.0.0.1", args.port), make_handler())
    server.daemon_threads = True
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(args.tls_cert, args.tls_key)
    server.socket = context.wrap_socket(
        server.socket, server_side=True, do_handshake_on_connect=False
    )
    print(f"listening {server.server_address[1]}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
