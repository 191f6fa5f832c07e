"""A webhook receiver that accepts only requests signed with its SigningSecret.

Run it with the secret the connector uses, then point the connector's Host at it:

    WEBHOOK_SIGNING_SECRET=whsec_... python verifying_receiver.py 8766

It needs only the Python standard library, so it also shows a receiver in any
language what to check: the three ``webhook-*`` headers, the timestamp's age,
and the HMAC-SHA256 of ``<webhook-id>.<webhook-timestamp>.<raw body>``.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

TOLERANCE_S = 300


def hmac_key(secret: str) -> bytes:
    """Return the key: the base64 part of a whsec_ secret, else the text's bytes."""
    if secret.startswith("whsec_"):
        return base64.b64decode(secret.removeprefix("whsec_"))
    return secret.encode("utf-8")


def signature_problem(key: bytes, headers: dict[str, str], body: bytes) -> str | None:
    """Return why a request is not validly signed, or None when it is."""
    message_id = headers.get("webhook-id", "")
    timestamp = headers.get("webhook-timestamp", "")
    if not message_id or not timestamp.isdigit():
        return "missing webhook-id or webhook-timestamp"
    if abs(time.time() - int(timestamp)) > TOLERANCE_S:
        return "webhook-timestamp too old or in the future (a replay?)"
    signed = f"{message_id}.{timestamp}.".encode() + body
    digest = hmac.new(key, signed, hashlib.sha256).digest()
    expected = "v1," + base64.b64encode(digest).decode("ascii")
    for candidate in headers.get("webhook-signature", "").split():
        if hmac.compare_digest(candidate, expected):
            return None
    return "signature does not match"


def main() -> None:
    key = hmac_key(os.environ["WEBHOOK_SIGNING_SECRET"])
    port = int(sys.argv[1]) if len(sys.argv) > 1 else 8766

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            headers = {name.lower(): value for name, value in self.headers.items()}
            problem = signature_problem(key, headers, body)
            status, reply = (
                (401, b'{"error":"bad signature"}')
                if problem
                else (
                    200,
                    b'{"Tags":["signature-verified"]}',
                )
            )
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(reply)))
            self.end_headers()
            self.wfile.write(reply)

    ThreadingHTTPServer(("127.0.0.1", port), Handler).serve_forever()


if __name__ == "__main__":
    main()
