from __future__ import annotations

import threading

import pytest

from navistore.record import (
    ABSENT,
    ANY,
    PRESENT,
    Clock,
    Record,
    holds,
    make_stamp,
    parse_stamp,
    stamp_seconds,
)


class FrozenWall:
    def __init__(self, t: float) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def test_stamp_format_is_16_hex_digits_dash_node_id():
    stamp = make_stamp(0x1A21B240DDE, 3, "node-1")
    assert stamp == "01a21b240dde0003-node-1"
    assert parse_stamp(stamp) == (0x1A21B240DDE, 3, "node-1")


@pytest.mark.parametrize(
    "bad", ["", "01a21b240dde0003", "01A21B240DDE0003-n", "01a21b240dde003-n", "01a21b240dde0003-N"]
)
def test_parse_stamp_rejects_malformed(bad):
    with pytest.raises(ValueError):
        parse_stamp(bad)


def test_stamps_order_by_time_then_counter_then_node():
    assert make_stamp(1, 0, "z") < make_stamp(2, 0, "a")
    assert make_stamp(2, 0, "z") < make_stamp(2, 1, "a")
    assert make_stamp(2, 1, "a") < make_stamp(2, 1, "b")


def test_clock_counts_within_one_millisecond_and_borrows_the_next_when_spent():
    wall = FrozenWall(1000.0)
    clock = Clock("n1", wall=wall)
    stamps = [clock.now() for _ in range(0x10002)]
    assert stamps == sorted(stamps) and len(set(stamps)) == len(stamps)
    assert parse_stamp(stamps[0]) == (1_000_000, 0, "n1")
    assert parse_stamp(stamps[0xFFFF]) == (1_000_000, 0xFFFF, "n1")
    assert parse_stamp(stamps[0x10000]) == (1_000_001, 0, "n1")


def test_clock_never_goes_back_when_the_wall_does():
    wall = FrozenWall(2000.0)
    clock = Clock("n1", wall=wall)
    first = clock.now()
    wall.t = 1000.0
    assert clock.now() > first


def test_clock_moves_past_an_observed_stamp_and_says_when_ahead_of_wall_time():
    wall = FrozenWall(1000.0)
    clock = Clock("n1", wall=wall)
    future = make_stamp(5_000_000, 7, "peer")
    assert clock.observe(future) is True
    after = clock.now()
    assert after > future
    assert parse_stamp(after)[:2] == (5_000_000, 8)
    assert clock.observe(make_stamp(1, 0, "old")) is True  # still ahead of the wall
    wall.t = 6000.0
    assert clock.observe(make_stamp(1, 0, "old")) is False


def test_clock_stamps_are_unique_across_threads():
    clock = Clock("n1")
    out: list[str] = []
    lock = threading.Lock()

    def work():
        mine = [clock.now() for _ in range(2000)]
        with lock:
            out.extend(mine)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(out)) == 8000


def test_stamp_seconds():
    assert stamp_seconds(make_stamp(1_500, 0, "a")) == 1.5


def test_record_liveness_and_etag():
    r = Record("k", b"v", stamp=make_stamp(1, 0, "a"))
    assert r.etag == '"000000000001' + '0000-a"'
    assert r.size == 1 and r.live()
    assert not Record("k", deleted=True).live()
    assert Record("k", expires_at=10.0).expired(now=10.0)
    assert not Record("k", expires_at=10.0).expired(now=9.9)
    assert Record("k", value=None, size=7).size == 7
    assert r.replace(value=b"abc").size == 3
    assert r.replace(stamp="s2", seq=4) == Record(
        r.key, r.value, r.content_type, "s2", r.deleted, r.expires_at, 4, r.size
    )
    with pytest.raises(TypeError, match="colour"):
        r.replace(colour="red")


def test_holds():
    live = Record("k", stamp="s1")
    assert holds(ANY, None) and holds(ANY, live)
    assert holds(ABSENT, None) and not holds(ABSENT, live)
    assert holds(PRESENT, live) and not holds(PRESENT, None)
    assert holds("s1", live) and not holds("s2", live) and not holds("s1", None)
