"""Talking to lstmcore.serve from the tests: a server in this process or the real command, and
raw HTTP requests (used by test_serve and test_browser)."""

from __future__ import annotations

import http.client
import io
import json
import re
import select
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from lstmcore.cli import serve

Image = pytest.importorskip("PIL.Image")


@contextmanager
def serving(classifier: Any, **options: Any) -> Iterator[serve.Server]:
    """An in-process server on a free port of 127.0.0.1, stopped after the block."""
    server = serve.make_server(classifier, "127.0.0.1", 0, **options)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


@contextmanager
def served(ckpt: Path, *flags: str) -> Iterator[tuple[str, subprocess.Popen[str]]]:
    """``python -m lstmcore.serve CKPT --port 0 *flags`` running: (its URL, the process).
    Its stderr goes to a file (a pipe nobody reads could fill and stop the server); any
    traceback there fails the test."""
    with tempfile.TemporaryFile("w+") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "lstmcore.serve", str(ckpt), "--port", "0", *flags],
            stdout=subprocess.PIPE,
            stderr=log,
            text=True,
        )
        try:
            ready, _, _ = select.select([proc.stdout], [], [], 60)
            line = proc.stdout.readline() if ready and proc.stdout else ""
            found = re.match(r"serving (http://127\.0\.0\.1:\d+/) ", line)
            assert found, f"no 'serving' line: {line!r} {proc.poll()}"
            yield found.group(1), proc
        finally:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
            if proc.stdout:
                proc.stdout.close()
            log.seek(0)
            errors = log.read()
        assert "Traceback" not in errors, errors


def address(url: str) -> tuple[str, int]:
    host, port = url.split("//")[1].rstrip("/").split(":")
    return host, int(port)


def post(
    conn: http.client.HTTPConnection, body: bytes, query: str = ""
) -> tuple[int, dict[str, Any]]:
    conn.request("POST", "/predict" + query, body=body, headers={"Content-Type": "image/png"})
    response = conn.getresponse()
    payload = response.read()
    assert response.getheader("Content-Type") == "application/json"
    return response.status, json.loads(payload)


@contextmanager
def connect(server_or_url: Any, timeout: float = 10.0) -> Iterator[http.client.HTTPConnection]:
    """One keep-alive connection to a server (or its URL), closed after the block."""
    url = server_or_url if isinstance(server_or_url, str) else server_or_url.url
    conn = http.client.HTTPConnection(*address(url), timeout=timeout)
    try:
        yield conn
    finally:
        conn.close()


def raw(url: str, request: bytes, timeout: float = 10.0) -> bytes:
    """Sends ``request`` as it is on a fresh socket; everything the server answers."""
    with socket.create_connection(address(url), timeout=timeout) as sock:
        sock.sendall(request)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
        return b"".join(chunks)


def png_header(width: int, height: int) -> bytes:
    """A PNG that declares width x height pixels and holds almost none (a decompression bomb)."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return (
            struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
        )

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64))


def as_page_sends(png: bytes) -> bytes:
    """The page's request: its 280x280 drawing at half size, PNG."""
    out = io.BytesIO()
    Image.open(io.BytesIO(png)).resize((140, 140), Image.BOX).save(out, "PNG")
    return out.getvalue()
