"""The handler threads: reused when idle, never starved by a runaway handler."""

from __future__ import annotations

import threading

from support.waits import wait_for

from qworker.worker.threads import CachedThreads


def test_an_idle_thread_is_reused() -> None:
    pool = CachedThreads()
    names: list[int] = []
    for _ in range(5):
        done = threading.Event()
        pool.submit(lambda done=done: (names.append(threading.get_ident()), done.set()))
        assert done.wait(5)
        wait_for(lambda: pool._idle, 5, "the thread to become idle")
    assert len(set(names)) == 1


def test_a_stuck_handler_does_not_starve_the_next_job() -> None:
    pool = CachedThreads()
    release, ran = threading.Event(), threading.Event()
    pool.submit(lambda: release.wait(30) and None)
    pool.submit(ran.set)
    try:
        assert ran.wait(5), "the second job waited behind the stuck one"
    finally:
        release.set()


def test_idle_threads_exit_after_the_idle_time() -> None:
    pool = CachedThreads(idle_seconds=0.2)
    before = threading.active_count()
    done = threading.Event()
    pool.submit(done.set)
    assert done.wait(5)
    wait_for(lambda: threading.active_count() <= before and not pool._idle, 5, "the thread to exit")
    # A job submitted after the exit still runs, on a new thread.
    again = threading.Event()
    pool.submit(again.set)
    assert again.wait(5)
