"""SharedCalls: callers with the same arguments share a run that started after they asked."""

from __future__ import annotations

import threading
import time

import pytest

from navistore.shared import SharedCalls


class Gated:
    """A function whose runs wait for a gate; it counts its runs and answers the run's number."""

    def __init__(self) -> None:
        self.runs = 0
        self.started = threading.Semaphore(0)
        self.gate = threading.Event()
        self.lock = threading.Lock()

    def __call__(self, *args):
        with self.lock:
            self.runs += 1
            number = self.runs
        self.started.release()
        assert self.gate.wait(10)
        return (number, args)


def call_in_threads(shared, count, *args):
    answers = [None] * count

    def call(i):
        answers[i] = shared.call(*args)

    threads = [threading.Thread(target=call, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    return threads, answers


def test_callers_that_arrive_during_a_run_share_the_next_run_not_that_one():
    function = Gated()
    shared = SharedCalls(function)
    first, first_answer = call_in_threads(shared, 1, "p")
    assert function.started.acquire(timeout=5)  # run 1 is in progress
    later, later_answers = call_in_threads(shared, 10, "p")
    time.sleep(0.5)  # the ten are waiting (they only have to start and ask)
    function.gate.set()
    for thread in first + later:
        thread.join(timeout=5)
    assert first_answer == [(1, ("p",))]
    # Run 1 may have read before whatever woke the ten: they get run 2, all of them.
    assert later_answers == [(2, ("p",))] * 10
    assert function.runs == 2
    assert shared._runs == {}


def test_callers_with_other_arguments_do_not_share():
    function = Gated()
    shared = SharedCalls(function)
    threads, answers = call_in_threads(shared, 1, "a")
    more, more_answers = call_in_threads(shared, 1, "b")
    assert function.started.acquire(timeout=5) and function.started.acquire(timeout=5)
    function.gate.set()
    for thread in threads + more:
        thread.join(timeout=5)
    assert {answers[0][1], more_answers[0][1]} == {("a",), ("b",)} and function.runs == 2


def test_a_failed_run_is_not_shared():
    calls = []
    started, gate = threading.Event(), threading.Event()

    def look(arg):
        calls.append(arg)
        if len(calls) <= 2:  # runs 1 and 2 fail
            started.set()
            assert gate.wait(10)
            raise RuntimeError(f"run {len(calls)} failed")
        return "answer"

    shared = SharedCalls(look)
    errors = []

    def call():
        try:
            results.append(shared.call("k"))
        except RuntimeError as exc:
            errors.append(str(exc))

    results: list[str] = []
    threads = [threading.Thread(target=call) for _ in range(4)]
    threads[0].start()
    assert started.wait(5)
    for thread in threads[1:]:
        thread.start()
    time.sleep(0.5)
    gate.set()
    for thread in threads:
        thread.join(timeout=5)
    # The two callers whose runs failed get their errors; the two who waited on the second run
    # ran the function themselves rather than take its error or wait for nothing.
    assert sorted(errors) == ["run 1 failed", "run 2 failed"]
    assert results == ["answer", "answer"] and len(calls) == 4
    assert shared._runs == {}


def test_a_lone_caller_just_calls():
    shared = SharedCalls(lambda a, b: a + b)
    assert shared.call(2, 3) == 5 and shared._runs == {}
    with pytest.raises(ZeroDivisionError):
        SharedCalls(lambda: 1 / 0).call()
