"""Serve the example webhook receiver of ``worker.demo.receiver`` on a chosen address.

``worker.demo.receiver.Receiver`` listens on 127.0.0.1 only, which other containers
cannot reach, so deploy/docker-compose.yml runs this script instead. It responds with
the same ``handle`` function, on ``--host`` and ``--port``. The credentials come from
the variables the example tenant settings reference: ``ACME_FRAUD_TOKEN``,
``ACME_ERP_PASSWORD`` and ``ACME_STOCK_KEY``.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import FrameType

from worker.demo.receiver import ReceiverCredentials, ReceiverState, handle

# Fixed by config/examples/tenants/acme.json (Username of webhook-erp) and by
# config/examples/jobs/06-inline-host.json (its X-Api-Key request header).
BASIC_USER = "acme-erp"
INLINE_KEY = "inline-demo-key"
SECRET_VARIABLES = ("ACME_FRAUD_TOKEN", "ACME_ERP_PASSWORD", "ACME_STOCK_KEY")


def credentials_from_environment() -> ReceiverCredentials:
    """Build the credentials, or exit with a message when a variable is unset."""
    missing = [name for name in SECRET_VARIABLES if not os.environ.get(name)]
    if missing:
        raise SystemExit(
            f"missing environment variable(s) {', '.join(missing)}: set the same "
            "values the worker gets (deploy/.env)"
        )
    return ReceiverCredentials(
        bearer_token=os.environ["ACME_FRAUD_TOKEN"],
        basic_user=BASIC_USER,
        basic_password=os.environ["ACME_ERP_PASSWORD"],
        stock_key=os.environ["ACME_STOCK_KEY"],
        inline_key=INLINE_KEY,
    )


def build_server(
    host: str, port: int, credentials: ReceiverCredentials
) -> ThreadingHTTPServer:
    """Create the HTTP server. Port 0 picks a free port."""
    state = ReceiverState()

    class RequestHandler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length)
            headers = {name.lower(): value for name, value in self.headers.items()}
            path = self.path.split("?", 1)[0]
            status, payload = handle(path, headers, body, credentials, state)
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

    server = ThreadingHTTPServer((host, port), RequestHandler)
    server.daemon_threads = True
    return server


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)"
    )
    parser.add_argument(
        "--port", type=int, default=8765, help="TCP port, or 0 for a free one"
    )
    args = parser.parse_args(argv)
    server = build_server(args.host, args.port, credentials_from_environment())

    def stop(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    # A container stops with SIGTERM, so end the loop the same way as Ctrl-C.
    signal.signal(signal.SIGTERM, stop)
    host, port = server.server_address[:2]
    print(f"example receiver listening on http://{host}:{port}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
