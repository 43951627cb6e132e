"""SharedCalls: callers that ask the same question at the same time share one answer.

Fifty watches on one prefix, woken by one commit, each looked at the change feed: fifty identical
reads of the store (three round trips each on PostgreSQL), where one would do. ``SharedCalls.call``
runs the function for the first caller; callers with the same arguments who arrive while it runs
wait, and share the next run, which starts once that one ends. Never the run in progress: it may
have read the store before the commit that woke them, and they must see that commit.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Hashable
from typing import Any


class _Run:
    __slots__ = ("done", "result", "failed")

    def __init__(self) -> None:
        self.done = threading.Event()
        self.result: Any = None
        self.failed = False


class SharedCalls:
    """Calls of ``function`` that share runs with callers who pass the same arguments. They share
    its result too: one object, which no caller may change."""

    def __init__(self, function: Callable[..., Any]) -> None:
        self._function = function
        self._lock = threading.Lock()
        # Per arguments: [the run in progress, the run that follows it (callers gather on it)].
        self._runs: dict[Hashable, list[_Run | None]] = {}

    def call(self, *args: Hashable) -> Any:
        """``function(*args)``, or the result of a run of it that started after this call did.
        A failed run is not shared: each caller that waited on it runs the function itself."""
        with self._lock:
            runs = self._runs.get(args)
            if runs is None:
                runs = self._runs[args] = [None, None]
            running, following = runs
            if following is None:
                run = _Run()
                if running is None:
                    runs[0] = run  # nobody is asking: ask now
                else:
                    runs[1] = run  # lead the next run, once this one ends
        if following is not None:  # the next run takes this caller along
            following.done.wait()
            return self._function(*args) if following.failed else following.result
        if running is not None:
            running.done.wait()  # and now ``run`` is the run in progress
        try:
            run.result = self._function(*args)
        except BaseException:
            run.failed = True
            raise
        finally:
            with self._lock:
                runs[0], runs[1] = runs[1], None  # the next run, if any, is in progress now
                if runs[0] is None:
                    del self._runs[args]
            run.done.set()
        return run.result
