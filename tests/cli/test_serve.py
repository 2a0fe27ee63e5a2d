"""python -m lstmcore.serve: the page, POST /predict and its JSON, every error as JSON (never a
traceback), the body limit, read timeouts and the connection cap, and 8 clients x 200 requests
at once against the real command (every answer right, memory flat, slow or oversized clients
not stalling the others)."""

from __future__ import annotations

import http.client
import io
import json
import os
import re
import socket
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from helpers_photos import drawn_digit, number_photos, photograph, random_look, text_ink
from helpers_serve import address, as_page_sends, connect, png_header, post, raw, served, serving
from trained import trained_run

import lstmcore
from lstmcore.cli import predict, serve
from lstmcore.mnist import data, imaging

Image = pytest.importorskip("PIL.Image")


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return trained_run(tmp_path_factory) / "best.npz"


@pytest.fixture(scope="module")
def model(ckpt: Path) -> Any:
    return lstmcore.load(ckpt)


@pytest.fixture(scope="module")
def mnist() -> data.MnistData:
    return data.load_mnist()


# ---- the page and the endpoint -------------------------------------------------------------


def test_the_page_is_served_whole_and_needs_no_network(model: Any) -> None:
    with serving(model) as server, connect(server) as conn:
        assert server.server_address[0] == "127.0.0.1"
        conn.request("GET", "/")
        response = conn.getresponse()
        page = response.read().decode()
        assert response.status == 200
        assert response.getheader("Content-Type") == "text/html; charset=utf-8"
        assert "default-src 'none'" in response.getheader("Content-Security-Policy", "")
        for part in ('<canvas id="pad"', 'id="bars"', 'id="clear"', 'type="file"', '"predict'):
            assert part in page
        assert re.search(r"https?:|//[a-z]", page.replace("http://www.w3.org", "")) is None
        assert page.encode() == serve.page()


def test_a_drawn_digit_gets_its_digit_and_ten_probabilities(
    model: Any, mnist: data.MnistData
) -> None:
    with serving(model) as server, connect(server) as conn:
        for i in range(5):  # one connection: HTTP/1.1 keep-alive
            body = as_page_sends(drawn_digit(mnist.test_images[i]))
            status, answer = post(conn, body)
            assert status == 200 and set(answer) == {"digit", "probabilities"}
            expected = predict.read_digit(model, imaging.decode(body, "image", 640), "image")
            assert answer["digit"] == int(expected.text) == int(mnist.test_labels[i])
            np.testing.assert_allclose(
                answer["probabilities"], expected.probabilities[0], atol=1e-6
            )
            assert abs(sum(answer["probabilities"]) - 1.0) < 1e-4


def test_a_photographed_number_is_read_with_number_1(model: Any, mnist: data.MnistData) -> None:
    sample = number_photos(mnist)[6]  # 2026, handwritten
    with serving(model) as server, connect(server) as conn:
        status, answer = post(conn, sample.image, "?number=1")
    assert status == 200 and set(answer) == {"number", "probability", "probabilities"}
    expected = predict.read_number(model, imaging.decode(sample.image, "image", 640), "image")
    assert answer["number"] == expected.text and len(answer["probabilities"]) == len(expected.text)
    assert answer["probability"] == pytest.approx(expected.probability, abs=1e-6)


ERRORS = [
    # (what is sent, the status, words of the error)
    (b"POST /predict HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello", 400, "not an image"),
    (b"POST /predict HTTP/1.1\r\nContent-Length: 0\r\n\r\n", 400, "empty body"),
    (b"POST /predict HTTP/1.1\r\nContent-Length: ab\r\n\r\n", 400, "bad Content-Length"),
    (b"POST /predict HTTP/1.1\r\n\r\n", 411, "Content-Length"),
    (b"POST /predict HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n", 411,
     "not chunked"),
    (b"POST /predict HTTP/1.1\r\nContent-Length: 999999999\r\n\r\n", 413, "over the limit"),
    (b"GET /predict HTTP/1.1\r\n\r\n", 405, "POST"),
    (b"GET /nothing HTTP/1.1\r\n\r\n", 404, "no page /nothing"),
    (b"POST /elsewhere HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc", 404, "no endpoint"),
]  # fmt: skip


def test_every_error_is_one_json_line_never_a_traceback(model: Any, tmp_path: Path) -> None:
    blank = io.BytesIO()
    Image.new("L", (60, 60), 210).save(blank, "PNG")
    bomb = png_header(20000, 20000)
    cases = [
        *ERRORS,
        (b"POST /predict HTTP/1.1\r\nContent-Length: %d\r\n\r\n" % len(bomb) + bomb, 413, "large"),
        (b"POST /predict HTTP/1.1\r\nContent-Length: %d\r\n\r\n" % len(blank.getvalue())
         + blank.getvalue(), 422, "no digit found"),
    ]  # fmt: skip
    with serving(model, max_bytes=1 << 20) as server:
        for request, status, words in cases:
            request = request.replace(b"HTTP/1.1\r\n", b"HTTP/1.1\r\nConnection: close\r\n", 1)
            answer = raw(server.url, request)
            head, _, body = answer.partition(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 %d " % status), (request[:60], answer[:200])
            assert b"Content-Type: application/json" in head
            error = json.loads(body)["error"]
            assert words in error and "Traceback" not in error and "\n" not in error, error


def test_an_oversized_body_is_refused_before_it_is_sent(model: Any) -> None:
    with (
        serving(model, max_bytes=1000) as server,
        socket.create_connection(address(server.url), timeout=5) as sock,
    ):
        sock.sendall(b"POST /predict HTTP/1.1\r\nContent-Length: 1001\r\n\r\n")
        answer = b""
        while chunk := sock.recv(65536):  # no body sent: the answer comes anyway, then EOF
            answer += chunk
        assert answer.startswith(b"HTTP/1.1 413 ") and b"1,000 bytes" in answer


# ---- timeouts, the connection cap, binding ------------------------------------------------


def test_a_slow_client_does_not_stall_the_others_and_is_cut_off(
    model: Any, mnist: data.MnistData
) -> None:
    body = as_page_sends(drawn_digit(mnist.test_images[0]))
    with serving(model, timeout=0.5) as server:
        stalled = socket.create_connection(address(server.url), timeout=10)
        stalled.sendall(b"POST /predict HTTP/1.1\r\nContent-Length: 1000\r\n\r\n0123456789")
        trickle = socket.create_connection(address(server.url), timeout=10)
        trickle.sendall(b"POST /predict HTTP/1.1\r\nContent-Length: 1000\r\n\r\n")
        start = time.monotonic()
        with connect(server) as conn:
            for k in range(12):  # meanwhile, another client is answered at once
                trickle.sendall(b"x")  # a byte every 0.1 s: each read is quick, the body not
                t = time.monotonic()
                assert post(conn, body)[0] == 200
                assert time.monotonic() - t < 1.0
                time.sleep(max(0.0, start + 0.1 * (k + 1) - time.monotonic()))
        assert stalled.recv(65536).startswith(b"HTTP/1.1 408 ")  # after 0.5 s without data
        while time.monotonic() - start < 3.0:  # the body's deadline: 3 x 0.5 s
            try:
                trickle.sendall(b"x")
            except OSError:
                break
            time.sleep(0.1)
        assert trickle.recv(65536).startswith(b"HTTP/1.1 408 ")
        assert time.monotonic() - start < 3.0
        stalled.close()
        trickle.close()


def test_connections_beyond_the_cap_get_503_and_the_cap_frees(model: Any) -> None:
    with serving(model, max_connections=2, timeout=5) as server:
        idle = [socket.create_connection(address(server.url), timeout=5) for _ in range(2)]
        time.sleep(0.2)  # both accepted and waiting for their request line
        answer = raw(server.url, b"GET / HTTP/1.1\r\n\r\n")
        assert answer.startswith(b"HTTP/1.1 503 ") and b"too many connections" in answer
        for sock in idle:
            sock.close()
        deadline = time.monotonic() + 5
        while True:  # the handlers see the close and give their slots back
            answer = raw(server.url, b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n")
            if answer.startswith(b"HTTP/1.1 200 ") or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        assert answer.startswith(b"HTTP/1.1 200 ")


def test_the_command_reports_a_bad_checkpoint_and_a_busy_port(
    ckpt: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bogus = tmp_path / "best.npz"
    bogus.write_text("not a checkpoint")
    assert serve.main([str(bogus)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and len(err.splitlines()) == 1
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        assert serve.main([str(ckpt), "--port", str(port)]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"error: cannot listen on 127.0.0.1:{port}: ") and "\n" == err[-1]
    with pytest.raises(SystemExit):
        serve.main([str(ckpt), "--port", "70000"])


# ---- many clients at once -----------------------------------------------------------------

CLIENTS = 8
REQUESTS = 200


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS")


def payloads(model: Any, mnist: data.MnistData) -> list[tuple[bytes, str, Any]]:
    """(body, query, the answer expected) for drawn digits as the page sends them, small
    photos of digits and photos of numbers; answers as read in this process."""
    rng = np.random.default_rng(8)
    out: list[tuple[bytes, str, Any]] = []
    for i in range(10):
        out.append((as_page_sends(drawn_digit(mnist.test_images[i])), "", None))
    for d in range(6):
        out.append(
            (photograph(text_ink(str(d), "", 100), random_look(rng, (150, 200)), rng), "", None)
        )
    for sample in number_photos(mnist)[6:8]:
        small = io.BytesIO()
        Image.open(io.BytesIO(sample.image)).resize((320, 150), Image.BOX).save(small, "JPEG")
        out.append((small.getvalue(), "?number=1", None))
    expected = []
    for body, query, _ in out:
        gray = imaging.decode(body, "image", imaging.WORK_SIDE)
        if query:
            expected.append((body, query, predict.read_number(model, gray, "image").text))
        else:
            reading = predict.read_digit(model, gray, "image")
            expected.append((body, query, (int(reading.text), reading.probabilities[0])))
    return expected


@pytest.mark.slow
@pytest.mark.subprocess
def test_eight_clients_at_once_all_answered_right_memory_flat(
    ckpt: Path, model: Any, mnist: data.MnistData
) -> None:
    work = payloads(model, mnist)
    with served(ckpt, "--timeout", "1") as (url, proc):
        latencies: list[list[float]] = [[] for _ in range(CLIENTS)]
        wrong: list[Any] = []
        rss: dict[str, int] = {}
        warm = threading.Barrier(CLIENTS + 1)
        stop = threading.Event()

        def client(c: int) -> None:
            # a new connection after the barrier: a client that waited there longer than the
            # server's read timeout (1 s) found its kept-alive connection closed (broken pipe
            # under load in CI)
            with connect(url) as conn:
                run(c, conn, range(REQUESTS // 4))
            warm.wait(60)  # every client warm: the memory is read here
            warm.wait(60)
            with connect(url) as conn:
                run(c, conn, range(REQUESTS // 4, REQUESTS))

        def run(c: int, conn: http.client.HTTPConnection, ks: range) -> None:
            for k in ks:
                body, query, expected = work[(c * 7 + k) % len(work)]
                t = time.perf_counter()
                status, answer = post(conn, body, query)
                latencies[c].append(time.perf_counter() - t)
                got = answer.get("number") if query else answer.get("digit")
                want = expected if query else expected[0]
                if status != 200 or got != want:
                    wrong.append((c, k, status, answer))
                elif (
                    not query
                    and np.abs(np.subtract(answer["probabilities"], expected[1])).max() > 1e-5
                ):
                    wrong.append((c, k, "probabilities", answer))

        def nuisance() -> None:  # oversized bodies and stalled ones, all the while
            while not stop.is_set():
                answer = raw(url, b"POST /predict HTTP/1.1\r\nContent-Length: 99999999\r\n\r\n")
                assert answer.startswith(b"HTTP/1.1 413 ")
                with socket.create_connection(address(url), timeout=5) as sock:
                    sock.sendall(b"POST /predict HTTP/1.1\r\nContent-Length: 100\r\n\r\nabc")
                    assert sock.recv(65536).startswith(b"HTTP/1.1 408 ")  # after 1 s

        start = time.monotonic()
        threads = [threading.Thread(target=client, args=(c,)) for c in range(CLIENTS)]
        bad = threading.Thread(target=nuisance)
        for t in [*threads, bad]:
            t.start()
        warm.wait(60)
        rss["warm"] = rss_kib(proc.pid)
        warm.wait(60)
        for t in threads:
            t.join(120)
        rss["end"] = rss_kib(proc.pid)
        stop.set()
        bad.join(10)
        elapsed = time.monotonic() - start
    assert not wrong, wrong[:5]
    flat = sorted(x for per in latencies for x in per)
    assert len(flat) == CLIENTS * REQUESTS
    p50, p99 = flat[len(flat) // 2], flat[int(len(flat) * 0.99)]
    memory = f"RSS {rss['warm'] // 1024} -> {rss['end'] // 1024} MiB"
    print(f"\n{CLIENTS}x{REQUESTS} requests in {elapsed:.1f} s: p50 {1e3 * p50:.1f} ms, "
          f"p99 {1e3 * p99:.1f} ms, {memory}")  # fmt: skip
    assert rss["end"] - rss["warm"] < 20 * 1024, rss  # KiB: flat, not growing per request
    assert elapsed < 120 and p99 < 2.0
    if os.environ.get("LSTMCORE_LOAD_REPORT"):
        Path(os.environ["LSTMCORE_LOAD_REPORT"]).write_text(
            json.dumps({"p50_ms": 1e3 * p50, "p99_ms": 1e3 * p99, "seconds": elapsed, **rss})
        )
