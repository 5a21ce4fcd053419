"""A static file server for bundles, with ``Range`` (resumable downloads): ``edgeslm fleet serve-artifacts``.

For demos and labs; any HTTP server that serves files and honours ``Range`` (nginx, caddy, an
object store) does the same job. GET and HEAD only, files under the root only (no listings,
no links followed out of it), one byte range per request (``bytes=N-`` or ``bytes=N-M``).
Loopback by default: give ``--host 0.0.0.0`` deliberately.
"""

from __future__ import annotations

import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

_RANGE = re.compile(r"^bytes=(\d+)-(\d*)$")
CHUNK = 256 * 1024


class _Handler(BaseHTTPRequestHandler):
    server_version = "edgeslm-artifacts"
    root: Path

    def log_message(self, fmt, *args):  # quiet; the CLI prints one line per file served instead
        pass

    def do_HEAD(self):
        self._serve(body=False)

    def do_GET(self):
        self._serve(body=True)

    def _resolve(self) -> Path | None:
        rel = unquote(urlsplit(self.path).path).lstrip("/")
        if not rel or "\x00" in rel or any(p in ("", ".", "..") for p in rel.split("/")):
            return None
        path = (self.root / rel).resolve()
        if self.root not in path.parents or not path.is_file():
            return None
        return path

    def _serve(self, body: bool) -> None:
        path = self._resolve()
        if path is None:
            self.send_error(404, "not found")
            return
        size = path.stat().st_size
        start, end, status = 0, size - 1, 200
        rng = self.headers.get("Range")
        if rng:
            m = _RANGE.match(rng.strip())
            if not m or int(m.group(1)) >= max(size, 1) and size:
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{size}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            start = int(m.group(1))
            end = min(int(m.group(2)), size - 1) if m.group(2) else size - 1
            status = 206
        self.send_response(status)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("Content-Length", str(max(0, end - start + 1)))
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
        self.end_headers()
        if not body:
            return
        with open(path, "rb") as f:
            f.seek(start)
            left = end - start + 1
            while left > 0:
                block = f.read(min(CHUNK, left))
                if not block:
                    break
                self.wfile.write(block)
                left -= len(block)


def serve_artifacts(root: str | Path, host: str = "127.0.0.1", port: int = 8700, cert_file: str | None = None,
                    key_file: str | None = None) -> ThreadingHTTPServer:
    """Start serving ``root`` in a background thread; ``.shutdown()`` stops it. ``port=0`` picks one.
    With ``cert_file`` (and ``key_file``) it speaks HTTPS (devices: ``--artifact-ca-file``)."""
    root = Path(root).resolve()
    if not root.is_dir():
        raise NotADirectoryError(f"{root} is not a directory")
    handler = type("ArtifactHandler", (_Handler,), {"root": root})
    server = ThreadingHTTPServer((host, port), handler)
    server.daemon_threads = True
    if cert_file:
        import ssl

        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(cert_file, key_file)
        server.socket = ctx.wrap_socket(server.socket, server_side=True)
        server.scheme = "https"
    threading.Thread(target=server.serve_forever, name="edgeslm-artifacts", daemon=True).start()
    return server


def url_of(server: ThreadingHTTPServer, rel: str = "") -> str:
    host, port = server.server_address[:2]
    return f"{getattr(server, 'scheme', 'http')}://{host}:{port}/{rel.strip('/')}" + ("/" if rel else "")


