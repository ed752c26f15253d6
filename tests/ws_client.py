#!/usr/bin/env python3
"""An independent WebSocket client for payd's tests: the `websockets` package from PyPI
(pip install websockets) speaks the protocol, not payd's code.

    ws_client.py --url ws://127.0.0.1:PORT/v1/ws --merchant m_a --secret S \
        [--connections N] [--expect N] [--timeout SECS] [--ca CA_PEM]

Opens N connections, each signed as API.md section 1 says for a GET of /v1/ws (the
signature computed here with hmac, independently of payd and of the Rust harness).
Then reads stdin: one message per line, `CONNECTION<TAB>TEXT`, every text sent as-is
as a text message on that connection, all of them at once. It prints one JSON line per
message received, {"connection": i, "text": "..."}, until `--expect` messages came (or
the timeout), then closes and prints {"closed": [code per connection]}.

A wss:// URL is verified against the certificate authority in --ca.

If an opening is refused, it prints {"open_status": STATUS, "body": "..."} and exits 0.
"""

import argparse
import asyncio
import hashlib
import hmac
import json
import ssl
import sys
import time

from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus


def signed_headers(merchant, secret):
    timestamp = str(int(time.time()))
    message = f"{timestamp}\nGET\n/v1/ws\n".encode()
    digest = hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()
    return {
        "X-Payd-Merchant": merchant,
        "X-Payd-Timestamp": timestamp,
        "X-Payd-Signature": f"v1={digest}",
    }


async def receive(index, socket, received, wanted, done):
    try:
        async for text in socket:
            received.append({"connection": index, "text": text})
            if len(received) >= wanted:
                done.set()
    except ConnectionClosed:
        pass


async def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--url", required=True)
    parser.add_argument("--merchant", required=True)
    parser.add_argument("--secret", required=True)
    parser.add_argument("--connections", type=int, default=1)
    parser.add_argument("--expect", type=int, default=0)
    parser.add_argument("--timeout", type=float, default=20.0)
    parser.add_argument("--ca")
    args = parser.parse_args()
    context = ssl.create_default_context(cafile=args.ca) if args.ca else None
    sockets = []
    for _ in range(args.connections):
        try:
            socket = await connect(
                args.url,
                additional_headers=signed_headers(args.merchant, args.secret),
                proxy=None,
                ping_interval=None,
                max_queue=None,
                close_timeout=2,
                ssl=context,
            )
        except InvalidStatus as refused:
            body = refused.response.body.decode(errors="replace")
            print(json.dumps({"open_status": refused.response.status_code, "body": body}))
            return
        sockets.append(socket)
    print(json.dumps({"opened": len(sockets)}), flush=True)
    received = []
    done = asyncio.Event()
    if args.expect == 0:
        done.set()
    readers = [
        asyncio.create_task(receive(i, s, received, args.expect, done))
        for i, s in enumerate(sockets)
    ]
    for line in sys.stdin:
        line = line.rstrip("\n")
        if not line:
            continue
        index, text = line.split("\t", 1)
        await sockets[int(index)].send(text)
    try:
        await asyncio.wait_for(done.wait(), args.timeout)
    except asyncio.TimeoutError:
        pass
    for message in received:
        print(json.dumps(message))
    codes = []
    for socket in sockets:
        await socket.close()
        codes.append(socket.close_code)
    for reader in readers:
        reader.cancel()
    print(json.dumps({"closed": codes}))


asyncio.run(main())
