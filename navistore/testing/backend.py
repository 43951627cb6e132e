"""``BackendSuite``: the Store contract (DESIGN section 3), through the public API only."""

from __future__ import annotations

import inspect
import itertools
import json
import os
import threading
import time

import pytest

from navistore.errors import PreconditionFailed, StaleStamp
from navistore.record import ABSENT, ANY, PRESENT, Check, Record, make_stamp
from navistore.store import listing_entry, scan_page
from navistore.testing._plugin import SuiteFixtures, requires
from navistore.testing.statemachine import run_state_machine

MIB = 1024 * 1024
_BASE_MS = 1_700_000_000_000


class Stamps:
    """Increasing stamps for a test: ``next()``; ``at(n)`` for a chosen order."""

    def __init__(self, node: str = "suite") -> None:
        self.node = node
        self._counter = itertools.count(1)

    def next(self, node: str | None = None) -> str:
        return make_stamp(_BASE_MS + next(self._counter), 0, node or self.node)

    @staticmethod
    def at(n: int, node: str = "suite") -> str:
        return make_stamp(_BASE_MS + n, 0, node)


def record(key: str, value: bytes = b"v", stamp: str = "", **fields) -> Record:
    return Record(key=key, value=value, stamp=stamp, **fields)


def keys_of(records: list[Record]) -> list[str]:
    return [r.key for r in records]


class BackendSuite(SuiteFixtures):
    """Adopt with a subclass that overrides ``make_store_url``.

    ``hypothesis_examples`` sets the state machine's examples for this backend (a slow backend
    may lower it); the ``--navistore-examples`` option and ``NAVISTORE_SUITE_EXAMPLES`` override it.
    """

    hypothesis_examples: int | None = None

    @pytest.fixture
    def stamps(self) -> Stamps:
        return Stamps()

    # -- get and commit ---------------------------------------------------------------------

    def test_get_of_a_missing_key_is_none(self, store):
        assert store.get("missing") is None

    def test_a_new_store_is_empty(self, store):
        assert store.last_seq() == 0
        assert store.changes(0, 100) == []
        assert store.scan("", "", 100) == []

    def test_commit_then_get(self, store, stamps):
        s = stamps.next()
        stored, previous = store.commit(record("k", b"value", s, content_type="text/plain"), ANY)
        assert previous is None
        assert (stored.key, stored.value, stored.stamp) == ("k", b"value", s)
        assert stored.seq > 0
        got = store.get("k")
        assert (got.key, got.value, got.content_type, got.stamp) == ("k", b"value", "text/plain", s)
        assert got.seq == stored.seq and not got.deleted and got.size == 5

    def test_commit_returns_the_previous_live_record(self, store, stamps):
        first, _ = store.commit(record("k", b"1", stamps.next()), ANY)
        second, previous = store.commit(record("k", b"2", stamps.next()), ANY)
        assert previous.value == b"1" and previous.stamp == first.stamp
        _, previous = store.commit(record("k", stamp=stamps.next(), deleted=True), ANY)
        assert previous.stamp == second.stamp
        _, previous = store.commit(record("k", b"3", stamps.next()), ANY)
        assert previous is None  # a tombstone is not a live record

    def test_a_deleted_key_reads_as_absent(self, store, stamps):
        store.commit(record("k", b"v", stamps.next()), ANY)
        store.commit(record("k", b"", stamps.next(), deleted=True), PRESENT)
        assert store.get("k") is None

    @requires("ttl")
    def test_an_expired_record_reads_as_absent(self, store, stamps):
        store.commit(record("old", b"v", stamps.next(), expires_at=time.time() - 1), ANY)
        store.commit(record("new", b"v", stamps.next(), expires_at=time.time() + 3600), ANY)
        assert store.get("old") is None
        assert store.get("new").expires_at > time.time()
        assert keys_of(store.scan("", "", 10)) == ["new"]

    # -- binary safety and keys -------------------------------------------------------------

    def test_every_byte_value_survives(self, store, stamps):
        value = bytes(range(256)) * 3
        store.commit(record("bin", value, stamps.next()), ANY)
        assert store.get("bin").value == value

    @pytest.mark.parametrize(
        "value",
        [b"", b"\x00", b"a\x00b", b"trailing\x00", b" spaced ", b"\xff\xfe", b"\r\n"],
        ids=["empty", "nul", "inner-nul", "trailing-nul", "spaces", "ff-fe", "crlf"],
    )
    def test_awkward_values_survive(self, store, stamps, value):
        store.commit(record("k", value, stamps.next()), ANY)
        got = store.get("k")
        assert got.value == value and got.size == len(value)

    def test_a_value_at_the_default_size_limit_survives(self, store, stamps):
        value = bytes(i % 251 for i in range(MIB))
        store.commit(record("big", value, stamps.next()), ANY)
        assert store.get("big").value == value

    @pytest.mark.parametrize(
        "key",
        [
            "a",
            "k" * 1024,
            "é" * 512,
            "日本/語/キー",
            "\U0001f600",
            "sp ace",
            "per%cent",
            "q?#&=+",
            "a/",
        ],
        ids=[
            "ascii",
            "1024-bytes",
            "1024-bytes-utf8",
            "cjk",
            "emoji",
            "space",
            "percent",
            "query-chars",
            "trailing-slash",
        ],
    )
    def test_keys_survive_exactly(self, store, stamps, key):
        store.commit(record(key, key.encode(), stamps.next()), ANY)
        assert store.get(key).key == key
        assert keys_of(store.scan("", "", 10)) == [key]

    def test_keys_are_not_unicode_normalised(self, store, stamps):
        composed, decomposed = "\u00e9", "e\u0301"
        store.commit(record(composed, b"1", stamps.next()), ANY)
        store.commit(record(decomposed, b"2", stamps.next()), ANY)
        assert store.get(composed).value == b"1" and store.get(decomposed).value == b"2"

    def test_keys_are_case_sensitive(self, store, stamps):
        store.commit(record("Key", b"1", stamps.next()), ANY)
        store.commit(record("key", b"2", stamps.next()), ANY)
        assert store.get("Key").value == b"1" and store.get("key").value == b"2"

    def test_scan_orders_keys_bytewise_as_utf8(self, store, stamps):
        keys = ["b", "a", "B", "a ", "a/", "aa", "é", "ê", "\uff5e", "\U0001f600", "日", "z", "~"]
        for key in keys:
            store.commit(record(key, b"v", stamps.next()), ANY)
        expected = sorted(keys, key=lambda k: k.encode("utf-8"))
        assert keys_of(store.scan("", "", 100)) == expected

    # -- scan and pagination ----------------------------------------------------------------

    def _fill(self, store, stamps, keys):
        for key in keys:
            store.commit(record(key, key.encode(), stamps.next()), ANY)

    def test_scan_by_prefix(self, store, stamps):
        self._fill(store, stamps, ["a", "a/1", "a/2", "ab", "b/1", "é1", "ê1"])
        assert keys_of(store.scan("a/", "", 100)) == ["a/1", "a/2"]
        assert keys_of(store.scan("a", "", 100)) == ["a", "a/1", "a/2", "ab"]
        assert keys_of(store.scan("é", "", 100)) == ["é1"]
        assert store.scan("c", "", 100) == []

    def test_scan_pages_with_after_and_limit(self, store, stamps):
        keys = [f"k{i:02d}" for i in range(10)]
        self._fill(store, stamps, keys)
        seen, after = [], ""
        while page := store.scan("k", after, 3):
            assert len(page) <= 3
            seen += keys_of(page)
            after = page[-1].key
        assert seen == keys
        assert keys_of(store.scan("", "k04", 2)) == ["k05", "k06"]
        assert keys_of(store.scan("", "k045", 1)) == ["k05"]  # after need not be a key
        assert store.scan("", "k09", 5) == []
        assert keys_of(store.scan("k0", "a", 1)) == ["k00"]  # after before the prefix
        assert len(store.scan("", "", 1)) == 1

    def test_scan_skips_tombstones(self, store, stamps):
        self._fill(store, stamps, ["a", "b", "c"])
        store.commit(record("b", b"", stamps.next(), deleted=True), PRESENT)
        assert keys_of(store.scan("", "", 10)) == ["a", "c"]
        assert keys_of(store.scan("", "a", 1)) == ["c"]

    def test_scan_without_values(self, store, stamps):
        store.commit(record("k", b"12345", stamps.next(), content_type="text/x"), ANY)
        (listed,) = store.scan("", "", 10, values=False)
        assert listed.value is None
        assert (listed.size, listed.content_type, listed.key) == (5, "text/x", "k")
        (full,) = store.scan("", "", 10, values=True)
        assert full.value == b"12345"

    # -- scan_listing (optional) ------------------------------------------------------------

    @staticmethod
    def _check_scan_listing(store, prefix: str, after: str, limit: int) -> None:
        """``scan_listing`` must give the page ``scan`` gives, as listing entries, and ``next``
        exactly when more keys follow (compared after decoding: JSON spellings may differ;
        ``expires_at`` to the millisecond)."""

        def rounded(entries: list[dict]) -> list[dict]:
            return [
                {**e, "expires_at": None if e["expires_at"] is None else round(e["expires_at"], 3)}
                for e in entries
            ]

        text, next_key = store.scan_listing(prefix, after, limit)
        records, expected_next = scan_page(store, prefix, after, limit)
        expected = [listing_entry(r) for r in records]
        assert rounded(json.loads(text)) == rounded(expected), (prefix, after, limit)
        assert next_key == expected_next, (prefix, after, limit)

    def _scan_listing_or_skip(self, store):
        if not callable(getattr(store, "scan_listing", None)):
            pytest.skip("the backend has no scan_listing (an optional method)")

    def test_scan_listing_agrees_with_scan(self, store, stamps):
        self._scan_listing_or_skip(store)
        keys = ["a", "a/1", "a/2", "a/3", "ab", "b", "é", "x\x00y", "\U0001f600", 'q"\\\n']
        for i, key in enumerate(keys):
            content_type = 'text/plain; charset="utf-8"' if i % 2 else "application/x-é"
            store.commit(record(key, b"\x00v" * i, stamps.next(), content_type=content_type), ANY)
        store.commit(record("a/2", b"", stamps.next(), deleted=True), PRESENT)
        for prefix, after, limit in [
            ("", "", 100),
            ("", "", 1),
            ("", "", 3),
            ("", "a/1", 2),  # the page ends on the tombstone's neighbour
            ("a", "", 2),
            ("a/", "", 1),
            ("a/", "a/1", 1),
            ("a/", "a/3", 5),
            ("é", "", 1),
            ("zz", "", 5),
            ("", "\U0001f600", 100),
        ]:
            self._check_scan_listing(store, prefix, after, limit)

    def test_scan_listing_pages_through_every_key(self, store, stamps):
        self._scan_listing_or_skip(store)
        keys = [f"k/{i:03d}" for i in range(25)]
        self._fill(store, stamps, keys)
        seen, after = [], ""
        while True:
            text, after = store.scan_listing("k/", after or "", 7)
            seen += [entry["key"] for entry in json.loads(text)]
            if after is None:
                break
        assert seen == keys

    @requires("ttl")
    def test_scan_listing_skips_expired_keys_and_shows_expiry(self, store, stamps):
        self._scan_listing_or_skip(store)
        soon = time.time() + 3600
        store.commit(record("t/expired", b"v", stamps.next(), expires_at=time.time() - 1), ANY)
        store.commit(record("t/later", b"v", stamps.next(), expires_at=soon), ANY)
        store.commit(record("t/plain", b"v", stamps.next()), ANY)
        store.commit(record("t/zexpired", b"v", stamps.next(), expires_at=time.time() - 1), ANY)
        text, next_key = store.scan_listing("t/", "", 2)
        entries = json.loads(text)
        assert [e["key"] for e in entries] == ["t/later", "t/plain"]
        assert entries[0]["expires_at"] == pytest.approx(soon, abs=0.001)
        assert next_key is None  # only an expired key follows
        self._check_scan_listing(store, "t/", "", 1)

    # -- preconditions ----------------------------------------------------------------------

    def test_expect_absent(self, store, stamps):
        store.commit(record("k", b"1", stamps.next()), ABSENT)
        with pytest.raises(PreconditionFailed) as failed:
            store.commit(record("k", b"2", stamps.next()), ABSENT)
        assert failed.value.current.value == b"1"
        store.commit(record("k", b"", stamps.next(), deleted=True), PRESENT)
        store.commit(record("k", b"3", stamps.next()), ABSENT)  # a tombstone is absent
        assert store.get("k").value == b"3"

    @requires("ttl")
    def test_an_expired_record_is_absent_to_preconditions(self, store, stamps):
        store.commit(record("k", b"1", stamps.next(), expires_at=time.time() - 1), ANY)
        with pytest.raises(PreconditionFailed):
            store.commit(record("k", b"2", stamps.next()), PRESENT)
        store.commit(record("k", b"2", stamps.next()), ABSENT)
        assert store.get("k").value == b"2"

    def test_expect_present(self, store, stamps):
        with pytest.raises(PreconditionFailed) as failed:
            store.commit(record("k", b"1", stamps.next()), PRESENT)
        assert failed.value.current is None
        store.commit(record("k", b"1", stamps.next()), ANY)
        store.commit(record("k", b"2", stamps.next()), PRESENT)
        store.commit(record("k", b"", stamps.next(), deleted=True), PRESENT)
        with pytest.raises(PreconditionFailed):
            store.commit(record("k", b"", stamps.next(), deleted=True), PRESENT)

    def test_expect_a_stamp(self, store, stamps):
        first, _ = store.commit(record("k", b"1", stamps.next()), ANY)
        second, _ = store.commit(record("k", b"2", stamps.next()), first.stamp)
        with pytest.raises(PreconditionFailed) as failed:
            store.commit(record("k", b"3", stamps.next()), first.stamp)
        assert failed.value.current.stamp == second.stamp
        store.commit(record("k", b"", stamps.next(), deleted=True), second.stamp)
        with pytest.raises(PreconditionFailed):
            store.commit(record("k", b"4", stamps.next()), second.stamp)  # deleted since
        with pytest.raises(PreconditionFailed):
            store.commit(record("other", b"4", stamps.next()), second.stamp)  # never existed

    def test_a_failed_precondition_changes_nothing(self, store, stamps):
        store.commit(record("k", b"1", stamps.next()), ANY)
        before = store.last_seq()
        for expect in (ABSENT, Stamps.at(0, "nobody")):
            with pytest.raises(PreconditionFailed):
                store.commit(record("k", b"2", stamps.next()), expect)
        assert store.get("k").value == b"1" and store.last_seq() == before
        assert len(store.changes(0, 100)) == 1

    def test_commit_refuses_a_stamp_not_newer_than_the_stored_one(self, store, stamps):
        store.commit(record("k", b"1", Stamps.at(50)), ANY)
        before = store.last_seq()
        for stale in (Stamps.at(50), Stamps.at(49), Stamps.at(49, "zzz")):
            with pytest.raises(StaleStamp) as refused:
                store.commit(record("k", b"2", stale), ANY)
            assert refused.value.stored == Stamps.at(50)
        store.commit(record("k", b"", Stamps.at(60), deleted=True), ANY)
        with pytest.raises(StaleStamp):
            store.commit(record("k", b"3", Stamps.at(55)), ANY)  # tombstones count too
        assert store.last_seq() == before + 1
        store.commit(record("k", b"4", Stamps.at(61)), ANY)
        assert store.get("k").value == b"4"

    # -- commit_many ------------------------------------------------------------------------

    @requires("batch")
    def test_commit_many_commits_in_order(self, store, stamps):
        results = store.commit_many(
            [
                (record("a", b"1", stamps.next()), ABSENT),
                (record("b", b"1", stamps.next()), ANY),
                (record("a", b"2", stamps.next()), PRESENT),
            ]
        )
        assert [r.key for r, _ in results] == ["a", "b", "a"]
        seqs = [r.seq for r, _ in results]
        assert seqs == sorted(seqs) and len(set(seqs)) == 3
        assert results[2][1].value == b"1"
        assert store.get("a").value == b"2"
        assert store.commit_many([]) == []

    @requires("batch")
    def test_commit_many_is_all_or_nothing(self, store, stamps):
        store.commit(record("exists", b"1", stamps.next()), ANY)
        before = store.last_seq()
        with pytest.raises(PreconditionFailed) as failed:
            store.commit_many(
                [
                    (record("new", b"1", stamps.next()), ABSENT),
                    (record("exists", b"2", stamps.next()), ANY),
                    (record("exists", b"3", stamps.next()), ABSENT),
                ]
            )
        assert failed.value.index == 2
        assert store.get("new") is None and store.get("exists").value == b"1"
        assert store.last_seq() == before

    # -- checks (commit_many items that write nothing) --------------------------------------

    @requires("batch", "checks")
    def test_a_check_holds_its_key_to_a_condition_and_writes_nothing(self, store, stamps):
        guard, _ = store.commit(record("guard", b"v1", stamps.next()), ANY)
        before = store.last_seq()
        # A Check carries no stamp a store may compare (Node stamps it; the store ignores it).
        results = store.commit_many(
            [
                (Check("guard"), guard.stamp),
                (Check("guard"), PRESENT),
                (Check("absent"), ABSENT),
                (record("w", b"1", stamps.next()), ANY),
            ]
        )
        assert [type(r) for r, _ in results] == [Check, Check, Check, Record]
        assert [(live.key, live.stamp, live.value) for _, live in results[:2]] == [
            ("guard", guard.stamp, b"v1"),
            ("guard", guard.stamp, b"v1"),
        ]
        assert results[2][1] is None
        assert store.last_seq() == before + 1  # only the write took a seq
        assert keys_of(store.changes(before)) == ["w"]
        assert store.get("guard").stamp == guard.stamp and store.get("absent") is None

    @requires("batch", "checks")
    def test_a_check_that_fails_fails_the_whole_call(self, store, stamps):
        guard, _ = store.commit(record("guard", b"v1", stamps.next()), ANY)
        store.commit(record("gone", b"v", stamps.next()), ANY)
        store.commit(record("gone", b"", stamps.next(), deleted=True), ANY)
        before = store.last_seq()
        for key, expect in [
            ("guard", Stamps.at(1, "another")),  # another version
            ("guard", ABSENT),
            ("absent", PRESENT),
            ("absent", guard.stamp),
            ("gone", PRESENT),  # a tombstone is absent
        ]:
            with pytest.raises(PreconditionFailed) as failed:
                store.commit_many([(record("w", b"1", stamps.next()), ANY), (Check(key), expect)])
            assert failed.value.index == 1, (key, expect)
        assert store.get("w") is None and store.last_seq() == before

    @requires("batch", "checks")
    def test_a_check_sees_the_items_before_it(self, store, stamps):
        store.commit(record("old", b"v", stamps.next()), ANY)
        results = store.commit_many(
            [
                (record("new", b"n", stamps.next()), ABSENT),
                (Check("new"), PRESENT),
                (record("old", b"", stamps.next(), deleted=True), PRESENT),
                (Check("old"), ABSENT),
            ]
        )
        assert results[1][1] is not None and results[1][1].value == b"n"
        assert results[3][1] is None
        with pytest.raises(PreconditionFailed) as failed:
            store.commit_many([(record("x", b"1", stamps.next()), ANY), (Check("x"), ABSENT)])
        assert failed.value.index == 1

    @requires("batch", "checks", "concurrent")
    def test_a_check_that_holds_commits_before_the_write_that_breaks_it(self, store, stamps):
        # A writer checks "guard" and writes its own key while another thread rewrites "guard":
        # either the check held and its write took a seq before the rewrite, or it failed and
        # wrote nothing. A check read outside the commit's atomic step lets both happen.
        for n in range(40):
            guard, _ = store.commit(record("guard", b"%d" % n, stamps.next()), ANY)
            checked: list = []
            mine, theirs = (
                record(f"w/{n}", b"1", stamps.next()),
                record("guard", b"x", stamps.next()),
            )

            def check(mine=mine, guard=guard, checked=checked):
                try:
                    checked.append(store.commit_many([(Check("guard"), guard.stamp), (mine, ANY)]))
                except PreconditionFailed:
                    checked.append(None)

            thread = threading.Thread(target=check)
            thread.start()
            rewritten, _ = store.commit(theirs, ANY)
            thread.join()
            if checked[0] is None:
                assert store.get(f"w/{n}") is None
            else:
                assert checked[0][1][0].seq < rewritten.seq
        assert store.get("guard").value == b"x"

    # -- merge ------------------------------------------------------------------------------

    def test_merge_stores_a_newer_record_and_ignores_older_and_equal(self, store):
        merged = store.merge(record("k", b"new", Stamps.at(20, "b")))
        assert merged is not None and merged.seq > 0
        assert store.merge(record("k", b"old", Stamps.at(10, "c"))) is None
        assert store.merge(record("k", b"same", Stamps.at(20, "b"))) is None
        assert store.get("k").value == b"new"
        assert (
            store.merge(record("k", b"tie", Stamps.at(20, "c"))) is not None
        )  # node id breaks ties
        assert store.get("k").value == b"tie"

    def test_merge_is_idempotent(self, store):
        r = record("k", b"v", Stamps.at(5, "p"))
        assert store.merge(r) is not None
        seq = store.last_seq()
        for _ in range(3):
            assert store.merge(r) is None
        assert store.last_seq() == seq
        assert len(store.changes(0, 100)) == 1

    def test_merged_tombstones_win_and_lose_by_the_same_rule(self, store):
        store.merge(record("k", b"v", Stamps.at(10, "p")))
        assert store.merge(record("k", b"", Stamps.at(5, "p"), deleted=True)) is None
        assert store.get("k").value == b"v"
        assert store.merge(record("k", b"", Stamps.at(15, "p"), deleted=True)) is not None
        assert store.get("k") is None
        assert (
            store.merge(record("k", b"late", Stamps.at(12, "q"))) is None
        )  # older than the delete
        assert store.get("k") is None
        assert store.merge(record("k", b"newer", Stamps.at(16, "q"))) is not None
        assert store.get("k").value == b"newer"

    def test_a_merged_tombstone_for_an_unknown_key_is_kept(self, store):
        stored = store.merge(record("never-seen", b"", Stamps.at(5, "p"), deleted=True))
        assert stored is not None and stored.deleted
        (change,) = store.changes(0, 10)
        assert change.key == "never-seen" and change.deleted
        assert store.merge(record("never-seen", b"v", Stamps.at(4, "p"))) is None

    def test_merge_beats_a_local_write_only_with_a_newer_stamp(self, store):
        store.commit(record("k", b"local", Stamps.at(10)), ANY)
        assert store.merge(record("k", b"peer", Stamps.at(9, "zz"))) is None
        assert store.merge(record("k", b"peer", Stamps.at(11, "a"))) is not None
        assert store.get("k").value == b"peer"

    @requires("ttl")
    def test_an_expired_record_still_counts_for_merge(self, store):
        store.merge(record("k", b"v", Stamps.at(10, "p"), expires_at=time.time() - 1))
        assert store.merge(record("k", b"older", Stamps.at(9, "p"))) is None
        assert store.get("k") is None
        assert store.merge(record("k", b"newer", Stamps.at(11, "p"))) is not None
        assert store.get("k").value == b"newer"

    # -- the change feed --------------------------------------------------------------------

    def test_changes_come_in_seq_order_with_tombstones(self, store, stamps):
        store.commit(record("a", b"1", stamps.next()), ANY)
        store.commit(record("b", b"1", stamps.next()), ANY)
        store.commit(record("a", b"", stamps.next(), deleted=True), PRESENT)
        store.merge(record("c", b"1", stamps.next("peer")))
        feed = store.changes(0, 100)
        seqs = [r.seq for r in feed]
        assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
        assert [(r.key, r.deleted) for r in feed][-2:] == [("a", True), ("c", False)]
        assert feed[-1].seq == store.last_seq()

    def test_changes_keep_the_newest_version_of_each_key(self, store, stamps):
        first, _ = store.commit(record("k", b"1", stamps.next()), ANY)
        last, _ = store.commit(record("k", b"2", stamps.next()), ANY)
        feed = store.changes(0, 100)
        newest = [r for r in feed if r.key == "k"][-1]
        assert (newest.stamp, newest.seq, newest.value) == (last.stamp, last.seq, b"2")
        after_first = store.changes(first.seq, 100)
        assert [r.stamp for r in after_first] == [last.stamp]

    def test_changes_since_limit_and_prefix(self, store, stamps):
        for key in ["a/1", "b/1", "a/2", "b/2", "a/3"]:
            store.commit(record(key, b"v", stamps.next()), ANY)
        feed = store.changes(0, 100)
        assert keys_of(store.changes(0, 2)) == keys_of(feed[:2])
        assert keys_of(store.changes(feed[1].seq, 100)) == keys_of(feed[2:])
        assert keys_of(store.changes(0, 100, "a/")) == ["a/1", "a/2", "a/3"]
        assert keys_of(store.changes(feed[0].seq, 1, "a/")) == ["a/2"]
        assert store.changes(store.last_seq(), 100) == []
        assert store.changes(store.last_seq() + 100, 100) == []

    def test_changes_without_values_if_the_store_offers_it(self, store, stamps):
        if "values" not in inspect.signature(store.changes).parameters:
            pytest.skip("changes takes no values keyword (optional: see navistore.store)")
        store.commit(record("a", bytes(range(256)), stamps.next()), ANY)
        store.commit(record("b", b"", stamps.next()), ANY)
        store.commit(record("c", b"gone", stamps.next()), ANY)
        store.commit(record("c", b"", stamps.next(), deleted=True), PRESENT)
        full, sized = store.changes(0, 100), store.changes(0, 100, values=False)
        assert [r.value for r in sized] == [None, None, None]
        assert [r.size for r in sized] == [256, 0, 0]
        assert [r._replace(value=None) for r in full] == sized
        assert store.changes(full[0].seq, 1, "", values=False) == sized[1:2]
        assert store.changes(0, 100, "b", values=False) == sized[1:2]

    def test_last_seq_counts_commits_and_merges_but_not_failures(self, store, stamps):
        assert store.last_seq() == 0
        a, _ = store.commit(record("a", b"1", stamps.next()), ANY)
        assert store.last_seq() == a.seq
        with pytest.raises(PreconditionFailed):
            store.commit(record("a", b"2", stamps.next()), ABSENT)
        assert store.last_seq() == a.seq
        merged = store.merge(record("b", b"1", stamps.next("peer")))
        assert store.last_seq() == merged.seq > a.seq
        store.merge(record("b", b"0", Stamps.at(0, "peer")))  # loses
        assert store.last_seq() == merged.seq

    # -- meta -------------------------------------------------------------------------------

    def test_meta(self, store):
        assert store.meta_get("navistore-suite.missing") is None
        store.meta_set("navistore-suite.a", "1")
        store.meta_set("navistore-suite.a", "2")
        store.meta_set("navistore-suite.ü", "ß")
        assert store.meta_get("navistore-suite.a") == "2"
        assert store.meta_get("navistore-suite.ü") == "ß"

    # -- purge ------------------------------------------------------------------------------

    @requires("ttl")
    def test_purge_turns_expired_records_into_tombstones_with_the_same_stamp(self, store, stamps):
        expiring, _ = store.commit(
            record("exp", b"v", stamps.next(), expires_at=time.time() - 1), ANY
        )
        store.commit(record("live", b"v", stamps.next(), expires_at=time.time() + 3600), ANY)
        before = store.last_seq()
        assert store.purge(time.time(), 0, "") == 1
        (change,) = store.changes(before, 10)
        assert (change.key, change.deleted, change.stamp) == ("exp", True, expiring.stamp)
        assert change.seq > before
        assert store.get("live") is not None
        assert (
            store.merge(record("exp", b"v", expiring.stamp)) is None
        )  # same stamp: no resurrection

    @requires("ttl")
    def test_next_expiry_is_the_soonest_expiry_not_yet_deleted(self, store, stamps):
        """Optional (``next_expiry``): what the Node purges next without having seen the write."""
        if not callable(getattr(store, "next_expiry", None)):
            pytest.skip("the backend has no next_expiry (an optional method)")
        assert store.next_expiry() is None
        now = time.time()
        store.commit(record("plain", b"v", stamps.next()), ANY)
        assert store.next_expiry() is None
        store.commit(record("later", b"v", stamps.next(), expires_at=now + 3600), ANY)
        store.commit(record("sooner", b"v", stamps.next(), expires_at=now + 60), ANY)
        store.commit(record("due", b"v", stamps.next(), expires_at=now - 1), ANY)
        assert store.next_expiry() == pytest.approx(now - 1, abs=0.001)  # due, not yet purged
        store.purge(time.time(), 0, "")
        assert store.next_expiry() == pytest.approx(now + 60, abs=0.001)
        store.commit(record("sooner", b"", stamps.next(), deleted=True), PRESENT)
        assert store.next_expiry() == pytest.approx(now + 3600, abs=0.001)
        store.commit(record("later", b"v", stamps.next()), ANY)  # rewritten without a TTL
        assert store.next_expiry() is None

    def test_disk_bytes_grows_with_what_the_store_holds(self, store, stamps):
        """Optional (``disk_bytes``): what the store takes on disk, for the operator's metric."""
        if not callable(getattr(store, "disk_bytes", None)):
            pytest.skip("the backend has no disk_bytes (an optional method)")
        before = store.disk_bytes()
        assert isinstance(before, int) and before >= 0
        for n in range(32):  # 2 MiB that no compression shrinks
            store.commit(record(f"disk/{n}", os.urandom(64 * 1024), stamps.next()), ANY)
        assert store.disk_bytes() >= before + 1024 * 1024

    def test_purge_drops_only_old_tombstones_up_to_the_seq(self, store):
        for n, key in enumerate(["a", "b", "c"], start=1):
            store.commit(record(key, b"v", Stamps.at(n)), ANY)
        for n, key in enumerate(["a", "b", "c"], start=10):
            store.commit(record(key, b"", Stamps.at(n), deleted=True), PRESENT)
        seq_a, seq_b, seq_c = (r.seq for r in store.changes(0, 10))
        store.commit(record("live", b"v", Stamps.at(1)), ANY)
        # c is too young by stamp; a and b are old enough, but the seq bound keeps b.
        assert store.purge(time.time(), seq_a, Stamps.at(12)) == 1
        assert keys_of(store.changes(0, 10)) == ["b", "c", "live"]
        assert store.purge(time.time(), seq_c, Stamps.at(100)) == 2
        assert keys_of(store.changes(0, 10)) == ["live"]
        assert store.get("live") is not None

    def test_a_seq_is_never_reused_after_a_purge(self, store, stamps):
        store.commit(record("k", b"v", stamps.next()), ANY)
        tomb, _ = store.commit(record("k", b"", stamps.next(), deleted=True), PRESENT)
        store.purge(time.time(), tomb.seq, Stamps.at(10**9))
        assert store.changes(0, 10) == []
        assert store.last_seq() == tomb.seq
        again, _ = store.commit(record("k", b"v", stamps.next()), ANY)
        assert again.seq > tomb.seq

    # -- concurrency ------------------------------------------------------------------------

    @requires("concurrent")
    def test_racing_conditional_commits_let_exactly_one_win(self, store, stamps):
        base, _ = store.commit(record("k", b"0", stamps.next()), ANY)
        racers = 8
        barrier = threading.Barrier(racers)
        outcomes: list[str] = []
        lock = threading.Lock()
        racing_stamps = [stamps.next() for _ in range(racers)]

        def race(i: int) -> None:
            barrier.wait()
            try:
                store.commit(record("k", str(i).encode(), racing_stamps[i]), base.stamp)
                outcome = "won"
            except (PreconditionFailed, StaleStamp):
                outcome = "lost"
            with lock:
                outcomes.append(outcome)

        threads = [threading.Thread(target=race, args=(i,)) for i in range(racers)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert sorted(outcomes) == ["lost"] * (racers - 1) + ["won"]

    @requires("concurrent")
    def test_if_match_increments_from_threads_lose_no_update(self, store):
        from navistore.record import Clock

        clock = Clock("suite")
        store.commit(record("counter", b"0", clock.now()), ABSENT)
        per_thread, threads_count = 15, 6

        def increment() -> None:
            done = 0
            while done < per_thread:
                current = store.get("counter")
                new = record("counter", str(int(current.value) + 1).encode(), clock.now())
                try:
                    store.commit(new, current.stamp)
                    done += 1
                except (PreconditionFailed, StaleStamp):
                    pass

        threads = [threading.Thread(target=increment) for _ in range(threads_count)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert store.get("counter").value == str(per_thread * threads_count).encode()

    @requires("concurrent")
    def test_racing_writers_fail_only_where_their_own_check_fails(self, store):
        """16 writers at once (a group commit may put them in one transaction): those whose
        precondition fails get PreconditionFailed, every other one commits, seqs stay unique,
        and the failed ones leave nothing behind."""
        from navistore.record import Clock

        clock = Clock("suite")
        store.commit(record("taken", b"x", clock.now()), ANY)
        barrier = threading.Barrier(16)
        outcomes: dict[tuple[int, int], object] = {}

        def write(i: int) -> None:
            key, expect = (f"free/{i}", ANY) if i % 4 else ("taken", ABSENT)
            barrier.wait()
            for round_ in range(20):
                try:
                    stored, _ = store.commit(
                        record(key, f"{i}-{round_}".encode(), clock.now()), expect
                    )
                    outcomes[(i, round_)] = stored.seq
                except PreconditionFailed:
                    outcomes[(i, round_)] = "refused"

        threads = [threading.Thread(target=write, args=(i,)) for i in range(16)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        seqs = [v for v in outcomes.values() if v != "refused"]
        refused = [k for k, v in outcomes.items() if v == "refused"]
        assert len(refused) == 4 * 20 and all(i % 4 == 0 for i, _ in refused)
        assert len(seqs) == 12 * 20 == len(set(seqs))
        assert store.get("taken").value == b"x"
        assert store.last_seq() == 1 + len(seqs)
        for i in range(1, 16):
            if i % 4:
                assert store.get(f"free/{i}").value == f"{i}-19".encode()

    # -- persistence ------------------------------------------------------------------------

    @requires("persistent")
    def test_everything_survives_close_and_reopen(self, open_store, make_store_url, stamps):
        url = make_store_url()
        store = open_store(url)
        store.commit(record("kept", b"\x00bin\xff", stamps.next(), content_type="a/b"), ANY)
        store.commit(record("gone", b"v", stamps.next()), ANY)
        store.commit(record("gone", b"", stamps.next(), deleted=True), PRESENT)
        store.meta_set("navistore-suite.m", "meta")
        feed, last = store.changes(0, 100), store.last_seq()
        store.close()
        again = open_store(url)
        kept = again.get("kept")
        assert (kept.value, kept.content_type) == (b"\x00bin\xff", "a/b")
        assert again.get("gone") is None
        assert again.meta_get("navistore-suite.m") == "meta"
        assert again.last_seq() == last
        assert [(r.key, r.seq, r.deleted) for r in again.changes(0, 100)] == [
            (r.key, r.seq, r.deleted) for r in feed
        ]
        new, _ = again.commit(record("new", b"v", stamps.next()), ANY)
        assert new.seq > last

    # -- shared stores ----------------------------------------------------------------------

    @requires("shared", "concurrent")
    def test_two_stores_on_one_url_keep_the_feed_gap_free(self, open_store, make_store_url):
        """Writers on two stores (two nodes) and a reader tailing the feed: the reader never
        skips a record that commits late, and seqs are unique across both stores."""
        url = make_store_url()
        first, second = open_store(url), open_store(url)
        stamps = {name: Stamps(name) for name in ("a", "b")}
        done = threading.Event()
        seen: dict[int, str] = {}
        committed: list[int] = []
        lock = threading.Lock()

        def write(store, name: str) -> None:
            for i in range(60):
                stored, _ = store.commit(record(f"{name}/{i}", b"v", stamps[name].next()), ANY)
                with lock:
                    committed.append(stored.seq)

        def tail() -> None:
            since = 0
            while not done.is_set() or since < max(committed, default=0):
                for change in first.changes(since, 50):
                    seen[change.seq] = change.key
                    since = change.seq

        pairs = ((first, "a"), (second, "b"))
        writers = [threading.Thread(target=write, args=pair) for pair in pairs]
        reader = threading.Thread(target=tail)
        reader.start()
        for t in writers:
            t.start()
        for t in writers:
            t.join()
        done.set()
        reader.join(timeout=30)
        assert len(set(committed)) == 120
        assert sorted(seen) == sorted(committed)
        assert first.last_seq() == second.last_seq() == max(committed)
        assert second.get("a/0").value == b"v" and first.get("b/59").value == b"v"

    # -- random sequences against a model ---------------------------------------------------

    def test_random_operation_sequences_match_a_dict_model(
        self, open_store, make_store_url, request
    ):
        run_state_machine(
            lambda: open_store(make_store_url()), request.config, self.hypothesis_examples
        )
