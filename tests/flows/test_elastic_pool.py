"""The elastic thread pool: grows on demand up to its cap, starts tasks in
submission order, and ends threads that stay idle."""

from __future__ import annotations

import threading
import time

import pytest

from flows.elastic_pool import ElasticThreadPool


def _until(predicate, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.01)


@pytest.fixture
def pool():
    p = ElasticThreadPool(4, idle_seconds=0.2, name="t")
    yield p
    p.shutdown(wait=True, cancel_futures=True)


def _blocked(pool: ElasticThreadPool, gate: threading.Event, n: int, started: list) -> list:
    lock = threading.Lock()

    def task(i: int) -> int:
        with lock:
            started.append(i)
        gate.wait(10)
        return i

    return [pool.submit(task, i) for i in range(n)]


def test_threads_grow_on_demand_up_to_the_cap_and_the_rest_queue(pool):
    assert pool.threads == 0  # nothing started before there is work
    gate, started = threading.Event(), []
    futs = _blocked(pool, gate, 6, started)
    _until(lambda: len(started) == 4)
    assert pool.threads == 4 and pool.queued == 2
    gate.set()
    assert [f.result(10) for f in futs] == list(range(6))
    assert sorted(started) == list(range(6))


def test_an_idle_thread_is_reused_not_joined_by_a_new_one(pool):
    for i in range(5):
        assert pool.submit(lambda i=i: i).result(10) == i
        _until(lambda: pool.idle_threads == 1)
    assert pool.threads == 1


def test_tasks_start_in_submission_order_when_the_cap_is_reached():
    pool = ElasticThreadPool(1, idle_seconds=5, name="fifo")
    gate, busy, order = threading.Event(), threading.Event(), []
    first = pool.submit(lambda: (busy.set(), gate.wait(10)))
    assert busy.wait(10)  # the only thread is taken: everything after it queues
    rest = [pool.submit(order.append, i) for i in range(20)]
    assert pool.queued == 20
    gate.set()
    for f in [first, *rest]:
        f.result(10)
    assert order == list(range(20))
    pool.shutdown()


def test_idle_threads_end_and_the_pool_grows_again_afterwards(pool):
    gate, started = threading.Event(), []
    futs = _blocked(pool, gate, 3, started)
    _until(lambda: pool.threads == 3 and len(started) == 3)
    gate.set()
    for f in futs:
        f.result(10)
    _until(lambda: pool.threads == 0)
    assert not [t for t in threading.enumerate() if t.name.startswith("t-")]
    assert pool.submit(lambda: "again").result(10) == "again"


def test_errors_reach_the_future_and_a_shut_down_pool_refuses_work(pool):
    def boom() -> None:
        raise ValueError("step failed")

    with pytest.raises(ValueError, match="step failed"):
        pool.submit(boom).result(10)
    pool.shutdown(wait=True)
    with pytest.raises(RuntimeError, match="shut down"):
        pool.submit(lambda: None)


def test_bad_sizes_are_refused():
    with pytest.raises(ValueError, match="max_threads"):
        ElasticThreadPool(0)
    with pytest.raises(ValueError, match="idle_seconds"):
        ElasticThreadPool(1, idle_seconds=0)
