"""navistore.turns: the writes the event loop serves in one turn wait for one flush together."""

from __future__ import annotations

import logging

import pytest

from navistore import turns
from navistore.turns import Turn


def test_requests_that_wait_go_on_only_after_the_turns_flush_which_runs_once():
    events: list[str] = []

    def flush() -> None:
        events.append("flush")

    def request(name: str):
        def run() -> None:
            events.append(f"{name} waits")
            assert turns.may_wait()
            turns.wait_for(flush)
            events.append(f"{name} goes on")

        return run

    turn = Turn()
    assert turn.serve(lambda: events.append("a read"), "r") is True  # never waits: done
    assert turn.serve(request("a"), "a") is False
    assert turn.serve(request("b"), "b") is False
    assert [tag for _, tag in turn.waiting] == ["a", "b"]
    assert events == ["a read", "a waits", "b waits"]
    waiting = turn.end()
    assert events[-1] == "flush" and events.count("flush") == 1
    assert [turn.go_on(served, tag) for served, tag in waiting] == [True, True]
    assert events[-2:] == ["a goes on", "b goes on"] and not turn.waiting


def test_a_request_that_waits_again_waits_for_the_next_end_and_each_flush_runs_once_a_turn():
    flushed: list[str] = []

    def first() -> None:
        flushed.append("first")

    def second() -> None:
        flushed.append("second")

    def twice() -> None:
        turns.wait_for(first)
        turns.wait_for(second)  # a write retried, or a second store

    turn = Turn()
    turn.serve(twice, "t")
    turn.serve(lambda: turns.wait_for(first), "once")
    # The same flush, asked for twice in a turn, runs once.
    waiting = turn.end()
    assert flushed == ["first"]
    assert [turn.go_on(served, tag) for served, tag in waiting] == [False, True]
    assert [tag for _, tag in turn.waiting] == ["t"]
    waiting = turn.end()
    assert flushed == ["first", "second"]
    assert [turn.go_on(served, tag) for served, tag in waiting] == [True]


def test_only_a_request_served_in_a_turn_may_wait():
    assert not turns.may_wait()
    with pytest.raises(RuntimeError, match="only a request the event loop serves"):
        turns.wait_for(lambda: None)


def test_a_flush_that_fails_is_logged_and_the_requests_still_go_on(caplog):
    def broken() -> None:
        raise ValueError("a bug in a store")

    went_on: list[bool] = []

    def request() -> None:
        turns.wait_for(broken)
        went_on.append(True)

    turn = Turn()
    turn.serve(request, "x")
    with caplog.at_level(logging.ERROR, logger="navistore.turns"):
        waiting = turn.end()
    assert "a flush at the end of the event loop's turn failed" in caplog.text
    assert [turn.go_on(served, tag) for served, tag in waiting] == [True]
    assert went_on == [True]


def test_an_error_in_a_request_reaches_the_loop():
    def failing() -> None:
        raise KeyError("boom")

    with pytest.raises(KeyError, match="boom"):
        Turn().serve(failing, "f")
