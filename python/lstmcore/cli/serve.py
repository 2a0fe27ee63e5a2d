"""``python -m lstmcore.serve CHECKPOINT [--host 127.0.0.1] [--port 8000]``: a page to draw a
digit on and watch the model read it, and an HTTP endpoint that reads digits in images.

``GET /`` is the page (one HTML file with its script and style inline: nothing is fetched from
anywhere else, it works offline). ``POST /predict`` takes image bytes (any format Pillow reads)
and answers JSON ``{"digit": 7, "probabilities": [10 floats]}``; ``POST /predict?number=1``
reads one row of digits: ``{"number": "2026", "probability": 0.913, "probabilities": [[10
floats] per digit]}`` (the probability that every digit is right). Images are prepared as
``python -m lstmcore.predict`` prepares them (:mod:`lstmcore.imaging`).

Errors are JSON ``{"error": "..."}``, never a traceback: 400 a body that is not an image, 404,
405, 408 a body that does not arrive in time, 411 no Content-Length, 413 a body over
``--max-bytes`` or an image over ``imaging.MAX_PIXELS`` pixels, 422 an image without a digit,
503 more than ``--max-connections`` connections at once.

The standard library's ThreadingHTTPServer, one thread per connection (HTTP/1.1 keep-alive):
no dependency, and measured as fast as uvicorn + Starlette here (the time is the image's
preparation, not HTTP; docs/serving.md). Models loaded with :func:`lstmcore.load` take
concurrent predict calls. It binds 127.0.0.1 unless told otherwise: it is a demonstration
server, without authentication or TLS. Each read from a client waits at most ``--timeout``
seconds and a whole body must arrive within three times that, so a slow client holds only its
own thread, and never more than ``--max-connections`` threads are held.
"""

from __future__ import annotations

import argparse
import json
import socket
import sys
import threading
import time
import traceback
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from typing import Any
from urllib.parse import parse_qs, urlsplit

from lstmcore._argtypes import duration, integer
from lstmcore.cli import predict
from lstmcore.mnist import checkpoint, imaging, model

MAX_BYTES = 16 * 1024 * 1024  # a phone's JPEG is 2-8 MB
TIMEOUT = 10.0
MAX_CONNECTIONS = 64
PAGE = "static/index.html"


def page() -> bytes:
    """The drawing page, shipped in the package (lstmcore/cli/static/index.html)."""
    return resources.files("lstmcore.cli").joinpath(PAGE).read_bytes()


class Server(ThreadingHTTPServer):
    """The HTTP server: one thread per connection, at most ``max_connections`` at once."""

    daemon_threads = True  # a client idling on keep-alive must not hold up shutdown
    block_on_close = False

    def __init__(
        self,
        address: tuple[str, int],
        classifier: model.Classifier,
        *,
        max_bytes: int = MAX_BYTES,
        timeout: float = TIMEOUT,
        max_connections: int = MAX_CONNECTIONS,
        log: bool = False,
    ) -> None:
        self.classifier = classifier
        self.max_bytes = max_bytes
        self.read_timeout = timeout
        self.log = log
        self.page = page()
        self._slots = threading.BoundedSemaphore(max_connections)
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        super().__init__(address, Handler)

    @property
    def url(self) -> str:
        address, port = self.server_address[:2]
        host = address.decode() if isinstance(address, bytes) else str(address)
        return f"http://[{host}]:{port}/" if ":" in host else f"http://{host}:{port}/"

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._slots.acquire(blocking=False):
            try:  # answered here, without a thread: the client hears why at once
                request.settimeout(1.0)
                request.sendall(_plain_response(503, "too many connections, try again"))
            except OSError:
                pass
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._slots.release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()


def _plain_response(status: int, message: str) -> bytes:
    body = json.dumps({"error": message}).encode()
    head = (
        f"HTTP/1.1 {status} {HTTPStatus(status).phrase}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    )
    return head.encode() + body


class Handler(BaseHTTPRequestHandler):
    server: Server
    protocol_version = "HTTP/1.1"  # keep-alive: the page sends a request per stroke
    # headers and body go out in two writes: with Nagle's algorithm the body waited for the
    # client's delayed ACK of the headers, 40 ms on Linux (the page's answers took 50 ms)
    disable_nagle_algorithm = True

    def version_string(self) -> str:  # the Server header: no Python version on show
        return "lstmcore"

    _started: float | None = None  # when the body had arrived

    def setup(self) -> None:
        super().setup()
        self.connection.settimeout(self.server.read_timeout)  # every read waits this long

    def log_message(self, format: str, *args: Any) -> None:
        if self.server.log:
            super().log_message(format, *args)

    # ---- responses ----------------------------------------------------------------------

    def _send(self, status: int, body: bytes, content_type: str, close: bool = False) -> None:
        try:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            if self._started is not None:  # the time spent on the image, for the page's log
                spent = 1e3 * (time.perf_counter() - self._started)
                self.send_header("Server-Timing", f"read;dur={spent:.1f}")
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            self.send_header("X-Content-Type-Options", "nosniff")
            if content_type.startswith("text/html"):
                # nothing but this page's own inline script and style, and its own requests
                self.send_header(
                    "Content-Security-Policy",
                    "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; "
                    "connect-src 'self'; img-src 'self' data: blob:; base-uri 'none'; "
                    "form-action 'none'",
                )
            if close:
                self.send_header("Connection", "close")
                self.close_connection = True
            self.end_headers()
            self.wfile.write(body)
        except OSError:  # the client went away
            self.close_connection = True

    def _json(self, status: int, payload: dict[str, Any], close: bool = False) -> None:
        body = json.dumps(payload, separators=(",", ":")).encode()
        self._send(status, body, "application/json", close)

    def _error(self, status: int, message: str, close: bool = False) -> None:
        self._json(status, {"error": message}, close)

    # ---- requests -----------------------------------------------------------------------

    def do_GET(self) -> None:
        path = urlsplit(self.path).path
        if path in ("/", "/index.html"):
            self._send(200, self.server.page, "text/html; charset=utf-8")
        elif path == "/predict":
            self._error(405, "POST the image's bytes to /predict")
        else:
            self._error(404, f"no page {path}: the page is /, images go to POST /predict")

    def do_POST(self) -> None:
        self._started = None
        try:
            self._post()
        except Exception as err:  # never a traceback to the client; the log gets it
            traceback.print_exc(file=sys.stderr)
            self._error(500, f"internal error: {type(err).__name__}", close=True)

    def _post(self) -> None:
        url = urlsplit(self.path)
        if url.path != "/predict":
            self._error(404, f"no endpoint {url.path}: POST images to /predict", close=True)
            return
        query = parse_qs(url.query)
        number = query.get("number", ["0"])[-1].lower() in ("1", "true", "yes")
        body = self._body()
        if body is None:
            return
        self._started = time.perf_counter()
        try:
            gray = imaging.decode(body, "image", imaging.WORK_SIDE)
        except imaging.TooLargeError as err:
            self._error(413, _unnamed(err))
            return
        except imaging.ImageError as err:
            reason = _unnamed(err).removeprefix("cannot read image: ")
            self._error(400, f"the body is not an image Pillow reads: {reason}")
            return
        try:
            if number:
                reading = predict.read_number(self.server.classifier, gray, "image")
                self._json(
                    200,
                    {
                        "number": reading.text,
                        "probability": round(reading.probability, 6),
                        "probabilities": [[round(float(p), 6) for p in r]
                                          for r in reading.probabilities],
                    },
                )  # fmt: skip
            else:
                reading = predict.read_digit(self.server.classifier, gray, "image")
                probs = [round(float(p), 6) for p in reading.probabilities[0]]
                self._json(200, {"digit": int(reading.text), "probabilities": probs})
        except imaging.ImageError as err:
            self._error(422, _unnamed(err))

    def _body(self) -> bytes | None:
        """The request's body, or None once an error has been sent (the connection then
        closes: an unread body cannot be skipped)."""
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            self._error(411, "send the image with a Content-Length, not chunked", close=True)
            return None
        declared = self.headers.get("Content-Length")
        if declared is None:
            self._error(411, "send the image with a Content-Length header", close=True)
            return None
        try:
            length = int(declared)
            if length < 0:
                raise ValueError(declared)
        except ValueError:
            self._error(400, f"bad Content-Length: {declared!r}", close=True)
            return None
        if length > self.server.max_bytes:
            self._error(
                413,
                f"body of {length:,} bytes is over the limit of {self.server.max_bytes:,} bytes",
                close=True,
            )
            return None
        if length == 0:
            self._error(400, "empty body: POST the image's bytes", close=False)
            return None
        deadline = time.monotonic() + 3 * self.server.read_timeout
        parts = []
        left = length
        try:
            while left:
                if time.monotonic() > deadline:
                    raise TimeoutError
                chunk = self.rfile.read1(min(left, 1 << 16))
                if not chunk:  # the client closed its side
                    self.close_connection = True
                    return None
                parts.append(chunk)
                left -= len(chunk)
        except TimeoutError:
            self._error(408, "the body did not arrive in time", close=True)
            return None
        return b"".join(parts)


def _unnamed(err: Exception) -> str:
    """An imaging error's message without the name it gives the body ("image: ...")."""
    return str(err).removeprefix("image: ")


def make_server(
    classifier: model.Classifier,
    host: str = "127.0.0.1",
    port: int = 8000,
    **options: Any,
) -> Server:
    """A server bound to (host, port) (port 0: any free port; ``server.url`` says which); call
    ``serve_forever()`` on it, ``shutdown()`` from another thread to stop it."""
    return Server((host, port), classifier, **options)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m lstmcore.serve",
        description="A local page to draw digits on (and POST /predict for images), "
        "read by a trained checkpoint (needs Pillow: pip install 'lstmcore[image]').",
    )
    parser.add_argument("checkpoint", help="a best.npz or last.npz written by lstmcore.train")
    parser.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to listen on (default 127.0.0.1: this machine only; 0.0.0.0 opens it "
        "to every network the machine is on)",
    )
    parser.add_argument(
        "--port", type=integer(0, 65535), default=8000, help="port (default 8000; 0: any)"
    )
    parser.add_argument(
        "--max-bytes",
        type=integer(1),
        default=MAX_BYTES,
        help=f"largest image body accepted, larger ones get 413 (default {MAX_BYTES})",
    )
    parser.add_argument(
        "--timeout",
        type=duration("seconds"),
        default=TIMEOUT,
        help=f"seconds a read from a client may wait; a body must arrive in 3x that "
        f"(default {TIMEOUT:g})",
    )
    parser.add_argument(
        "--max-connections",
        type=integer(1),
        default=MAX_CONNECTIONS,
        help=f"connections served at once, more get 503 (default {MAX_CONNECTIONS})",
    )
    parser.add_argument("--log", action="store_true", help="one line per request on stderr")
    args = parser.parse_args(argv)
    try:
        imaging.require_pillow()
        classifier = predict.load_classifier(args.checkpoint)
    except (imaging.ImageError, checkpoint.CheckpointError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    try:
        server = make_server(
            classifier,
            args.host,
            args.port,
            max_bytes=args.max_bytes,
            timeout=args.timeout,
            max_connections=args.max_connections,
            log=args.log,
        )
    except OSError as err:
        print(f"error: cannot listen on {args.host}:{args.port}: {err}", file=sys.stderr)
        return 1
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        print(
            f"warning: listening on {args.host}: anyone who can reach it can use it",
            file=sys.stderr,
        )
    print(f"serving {server.url} ({args.checkpoint}); Ctrl-C stops", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
