"""The core's persistent worker pool: fork, concurrent callers, thread-count changes, idling."""

from __future__ import annotations

import multiprocessing
import os
import threading
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import lstmcore
from helpers import make_problem, rel_err
from lstmcore import ops, reference


@pytest.fixture(autouse=True)
def restore_threads() -> Any:
    yield
    lstmcore.set_num_threads(lstmcore._default_threads())


def run(p: Any) -> list[np.ndarray]:
    y, h_n, c_n, ctx = ops.lstm_forward(*p.inputs())
    return [y, h_n, c_n, *ops.lstm_backward(ctx, *p.grads())]


def check(out: list[np.ndarray], p: Any, tol: float = 1e-5) -> None:
    r_y, r_h, r_c, r_ctx = reference.lstm_forward(*p.inputs())
    ref = [r_y, r_h, r_c, *reference.lstm_backward(r_ctx, *p.grads())]
    for a, b in zip(out, ref, strict=True):
        assert rel_err(a, b) <= tol


# shapes that take each schedule at 2 threads: rows in one block per thread (no barrier),
# hidden-unit blocks split (one barrier per step: B=4, H=256; B=1, H=128 from 1e5 flops a
# step), one thread (too little work to share), and rows in chunks taken in turn (B=300, more
# rows than one chunk at every thread count up to 2)
SHAPES = [(6, 64, 5, 40), (5, 4, 7, 256), (6, 1, 28, 128), (4, 1, 3, 16), (5, 300, 6, 16)]


def _child(conn: Any, seed: int) -> None:
    try:
        p = make_problem(np.random.default_rng(seed), 5, 4, 7, 256, dtype=np.float32)
        conn.send([a for a in run(p)])
    except BaseException as e:  # report, never hang the parent
        conn.send(repr(e))
    finally:
        conn.close()


def test_fork_child_gets_a_fresh_working_pool() -> None:
    lstmcore.set_num_threads(2)
    p = make_problem(np.random.default_rng(5), 5, 4, 7, 256, dtype=np.float32)
    parent = run(p)  # the pool's workers exist in the parent now
    ctx = multiprocessing.get_context("fork")
    recv, send = ctx.Pipe(duplex=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # fork with threads (3.12+)
        proc = ctx.Process(target=_child, args=(send, 5))
        proc.start()
    send.close()
    assert recv.poll(60), "the fork child did not answer in 60 s (a pool left locked?)"
    got = recv.recv()
    proc.join(30)
    assert not isinstance(got, str), got
    for a, b in zip(got, parent, strict=True):
        np.testing.assert_array_equal(a, b)
    assert proc.exitcode == 0


def test_concurrent_calls_from_python_threads_are_each_correct() -> None:
    lstmcore.set_num_threads(2)
    problems = [
        make_problem(np.random.default_rng(s), *SHAPES[s % len(SHAPES)], dtype=np.float32)
        for s in range(6)
    ]
    expected = [run(p) for p in problems]
    errors: list[str] = []

    def worker(k: int) -> None:
        try:
            for _ in range(5):
                got = run(problems[k])
                for a, b in zip(got, expected[k], strict=True):
                    if not np.array_equal(a, b):
                        errors.append(f"problem {k}: result differs")
        except BaseException as e:
            errors.append(repr(e))

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(len(problems))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not any(t.is_alive() for t in threads), "a caller hung"
    assert errors == []


@pytest.mark.parametrize("shape", SHAPES)
def test_thread_count_changes_between_calls(shape: tuple[int, int, int, int]) -> None:
    p = make_problem(np.random.default_rng(1), *shape, dtype=np.float32)
    results = {}
    for n in [1, 2, 3, 1, 2, 4]:
        lstmcore.set_num_threads(n)
        out = run(p)
        check(out, p)
        if n in results:  # same thread count, same bits
            for a, b in zip(out, results[n], strict=True):
                np.testing.assert_array_equal(a, b)
        results[n] = out
    # the recurrence computes every element the same way whatever the split: y, h_n, c_n
    # (forward) and dh0, dc0 (backward) are bit-identical across thread counts
    for n in results:
        for k in [0, 1, 2, 4, 5]:
            np.testing.assert_array_equal(results[n][k], results[1][k])


def _pool_cpu_seconds() -> float:
    """CPU time used so far by the core's workers (threads named lstmcore-pool)."""
    ticks = 0
    for task in Path("/proc/self/task").iterdir():
        try:
            if (task / "comm").read_text().strip() != "lstmcore-pool":
                continue
            fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:  # the thread ended meanwhile
            continue
        ticks += int(fields[11]) + int(fields[12])  # utime, stime
    return ticks / os.sysconf("SC_CLK_TCK")


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="needs Linux /proc")
def test_idle_workers_sleep_after_a_call() -> None:
    lstmcore.set_num_threads(2)
    p = make_problem(np.random.default_rng(2), 5, 64, 5, 40, dtype=np.float32)
    run(p)
    start = _pool_cpu_seconds()
    time.sleep(0.5)
    busy = _pool_cpu_seconds() - start
    # workers spin for at most ~0.1 ms after a job, then sleep in the kernel (other libraries'
    # pools, e.g. numpy's BLAS after the reference ran, are not counted)
    assert busy <= 0.02, f"the core's workers used {busy:.3f} s of CPU while idle"


def test_the_callers_floating_point_mode_is_left_as_it_was(rng: np.random.Generator) -> None:
    """The core flushes denormals while it computes (pool.h: DenormalsAreZero); the caller's
    thread must get its own mode back, or NumPy's arithmetic after a call would change."""
    tiny = np.float32(1e-38) * np.float32(0.01)  # a denormal result: nonzero in IEEE mode
    assert tiny != 0
    x = rng.standard_normal((5, 3, 4), dtype=np.float32)
    w_ih = rng.standard_normal((8, 4), dtype=np.float32)
    w_hh = rng.standard_normal((8, 2), dtype=np.float32)
    *_, ctx = ops.lstm_forward(x, None, None, w_ih, w_hh, np.zeros(8, np.float32))
    ops.lstm_backward(ctx, None, None, None)
    assert np.float32(1e-38) * np.float32(0.01) == tiny
