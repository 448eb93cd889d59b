"""What the ACME tests share: an http-01 challenge server the CA validates against."""

from __future__ import annotations

import http.server
import threading
from collections.abc import Iterator, MutableMapping
from contextlib import contextmanager


@contextmanager
def http01_server(served: MutableMapping[str, str]) -> Iterator[int]:
    """Serve ``/.well-known/acme-challenge/{token}`` from ``served`` (token → key authorization)
    on 127.0.0.1; yields the port. Unknown tokens and other paths are 404."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = served.get(self.path.rsplit("/", 1)[-1])
            if body is None or not self.path.startswith("/.well-known/acme-challenge/"):
                self.send_response(404)
                self.end_headers()
                return
            data = body.encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield int(server.server_address[1])
    finally:
        server.shutdown()
        server.server_close()


def http01_config(port: int, *extra: str) -> str:
    """``[acme]`` TOML pointing http-01 validation at ``port`` on 127.0.0.1 (plus ``extra`` lines)."""
    lines = ['validation_resolve_to = "127.0.0.1"', f"validation_http01_port = {port}", *extra]
    return "\n[acme]\n" + "".join(line + "\n" for line in lines)
