"""A Hypothesis state machine that drives a Store and a dict model with the same operations."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule, run_state_machine_as_test

from navistore.errors import PreconditionFailed
from navistore.record import ABSENT, ANY, PRESENT, Record, make_stamp
from navistore.store import Store
from navistore.testing._plugin import hypothesis_examples

KEYS = ["a", "a/b", "a/c", "b", "é", "ê", "日本", "\U0001f600", "\uff5e", "z" * 20]
PREFIXES = ["", "a", "a/", "é", "日", "\U0001f600", "z"]
NODES = ["m", "p", "q"]
_BASE_MS = 1_700_000_000_000

keys = st.sampled_from(KEYS)
values = st.binary(max_size=24)
expects = st.sampled_from(["any", "absent", "present", "current", "wrong"])


def _order(key: str) -> bytes:
    return key.encode("utf-8")


def build_machine(open_store: Callable[[], Store]) -> type[RuleBasedStateMachine]:
    class StoreMachine(RuleBasedStateMachine):
        """The model: key -> (value, stamp, deleted); the store must agree after every step."""

        def __init__(self) -> None:
            super().__init__()
            self.store = open_store()
            self.model: dict[str, tuple[bytes, str, bool]] = {}
            self.clock_ms = 0
            self.last_seq = 0

        def _stamp(self, offset: int = 1, node: str = "m") -> str:
            return make_stamp(_BASE_MS + self.clock_ms + offset, 0, node)

        def _local_stamp(self) -> str:
            # Like the Node's clock: past every stamp seen, so a local write is never stale.
            newest = max((s for _, s, _ in self.model.values()), default="")
            self.clock_ms += 1
            stamp = self._stamp(0)
            while stamp <= newest:
                self.clock_ms += 1
                stamp = self._stamp(0)
            return stamp

        def _live(self, key: str) -> tuple[bytes, str, bool] | None:
            entry = self.model.get(key)
            return entry if entry is not None and not entry[2] else None

        def _expect(self, kind: str, key: str):
            live = self._live(key)
            if kind == "any":
                return ANY, True
            if kind == "absent":
                return ABSENT, live is None
            if kind == "present":
                return PRESENT, live is not None
            if kind == "current":
                stamp = live[1] if live else self._stamp(-(10**6), "x")
                return stamp, live is not None
            return self._stamp(-(10**6), "x"), False

        def _advance_seq(self, seq: int) -> None:
            assert seq > self.last_seq, f"seq {seq} is not above the previous {self.last_seq}"
            self.last_seq = seq

        @rule(key=keys, value=values, kind=expects)
        def commit(self, key, value, kind):
            expect, ok = self._expect(kind, key)
            stamp = self._local_stamp()
            if not ok:
                with pytest.raises(PreconditionFailed):
                    self.store.commit(Record(key, value, stamp=stamp), expect)
                return
            stored, previous = self.store.commit(Record(key, value, stamp=stamp), expect)
            live = self._live(key)
            assert (previous.stamp if previous else None) == (live[1] if live else None)
            self._advance_seq(stored.seq)
            self.model[key] = (value, stamp, False)

        @rule(key=keys, kind=st.sampled_from(["present", "current", "wrong"]))
        def delete(self, key, kind):
            expect, ok = self._expect(kind, key)
            tombstone = Record(key, b"", stamp=self._local_stamp(), deleted=True)
            if not ok:
                with pytest.raises(PreconditionFailed):
                    self.store.commit(tombstone, expect)
                return
            stored, _ = self.store.commit(tombstone, expect)
            self._advance_seq(stored.seq)
            self.model[key] = (b"", tombstone.stamp, True)

        @rule(
            key=keys,
            value=values,
            offset=st.integers(-3, 3),
            node=st.sampled_from(NODES),
            deleted=st.booleans(),
        )
        def merge(self, key, value, offset, node, deleted):
            stamp = self._stamp(offset, node)
            incoming = Record(key, b"" if deleted else value, stamp=stamp, deleted=deleted)
            stored = self.store.merge(incoming)
            current = self.model.get(key)
            wins = current is None or stamp > current[1]
            assert (stored is not None) == wins, f"merge of {stamp} over {current}"
            if wins:
                self._advance_seq(stored.seq)
                self.model[key] = (incoming.value, stamp, deleted)

        @rule(
            prefix=st.sampled_from(PREFIXES),
            after=st.sampled_from(["", *KEYS]),
            limit=st.integers(1, 12),
        )
        def scan(self, prefix, after, limit):
            expected = sorted(
                (
                    k
                    for k in self.model
                    if self._live(k) and k.startswith(prefix) and _order(k) > _order(after)
                ),
                key=_order,
            )[:limit]
            assert [r.key for r in self.store.scan(prefix, after, limit)] == expected

        @rule(since_back=st.integers(0, 5))
        def changes(self, since_back):
            feed = self.store.changes(0, 1000)
            seqs = [r.seq for r in feed]
            assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
            newest = {r.key: r for r in feed}  # the last occurrence of each key
            assert set(newest) == set(self.model)
            for key, (_, stamp, deleted) in self.model.items():
                assert (newest[key].stamp, newest[key].deleted) == (stamp, deleted), key
            since = max(0, self.last_seq - since_back)
            assert all(r.seq > since for r in self.store.changes(since, 1000))

        @invariant()
        def last_seq_matches(self):
            assert self.store.last_seq() == self.last_seq

        @invariant()
        def every_key_reads_as_modelled(self):
            for key in KEYS:
                got = self.store.get(key)
                live = self._live(key)
                if live is None:
                    assert got is None, f"{key!r} should be absent, the store has {got}"
                else:
                    assert got is not None, f"{key!r} is missing"
                    assert (got.value, got.stamp) == (live[0], live[1]), key

        def teardown(self) -> None:
            self.store.close()

    return StoreMachine


def run_state_machine(
    open_store: Callable[[], Store], config: pytest.Config, default: int | None = None
) -> None:
    """Run the machine for the configured number of examples, each on a fresh store."""
    machine = build_machine(open_store)
    run_state_machine_as_test(
        machine,
        settings=settings(
            max_examples=hypothesis_examples(config, default),
            stateful_step_count=40,
            deadline=None,
            derandomize=False,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
            database=None,
        ),
    )
