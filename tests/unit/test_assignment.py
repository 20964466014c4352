"""Sticky assignment: nginx's MurmurHash2, the buckets, and the local ingress's choice of arm."""

from __future__ import annotations

from collections import Counter

import pytest

from contracts.assignment import bucket, is_canary, murmur_hash2
from localstack.controller import Revision, RevisionState, Routing
from localstack.ingress import assignment_key

# ngx_murmur_hash2 (nginx src/core/ngx_murmurhash.c) compiled with gcc and run on these strings;
# "héllo" has bytes >= 0x80 (sign extension in C), the pangram every tail length
VECTORS = {
    "": 0,
    "a": 2456313694,
    "ab": 446775395,
    "abc": 324500635,
    "abcd": 646393889,
    "42": 2042270456,
    "user-1": 21187135,
    "anon-3f2a9c1e-5b7d-4e8f-9a0b-1c2d3e4f5a6b": 1202947484,
    "héllo": 1319117202,
    "The quick brown fox jumps over the lazy dog": 556214736,
}


@pytest.mark.parametrize(("text", "expected"), VECTORS.items())
def test_murmur_hash2_is_nginx_s(text: str, expected: int) -> None:
    assert murmur_hash2(text.encode("utf-8")) == expected


def test_buckets_follow_split_clients_thresholds() -> None:
    # split_clients "P% a; * b;" sends a hash h to a iff h < P * 100 * 0xffffffff // 10000
    assert bucket("user-1") == 0  # 21187135 < 0xffffffff // 100
    assert bucket("a") == 57  # 2456313694 * 100 / 0xffffffff = 57.19
    assert bucket("") == 0


def test_buckets_are_stable_and_spread_over_0_to_99() -> None:
    keys = [f"user-{i}" for i in range(20_000)]
    counts = Counter(bucket(k) for k in keys)
    assert set(counts) == set(range(100))
    assert min(counts.values()) > 120 and max(counts.values()) < 290  # 200 expected each
    assert [bucket(k) for k in keys[:500]] == [bucket(k) for k in keys[:500]]


def test_is_canary_and_raising_the_percent_only_moves_users_into_the_canary() -> None:
    assert is_canary(9, 10) and not is_canary(10, 10)
    assert not any(is_canary(b, 0) for b in range(100))
    assert all(is_canary(b, 100) for b in range(100))
    keys = [f"anon-{i}" for i in range(5_000)]
    at = {p: {k for k in keys if is_canary(bucket(k), p)} for p in (10, 25, 50)}
    assert at[10] < at[25] < at[50]
    assert 0.07 < len(at[10]) / len(keys) < 0.13


def _revision(name: str, ready: bool = True) -> Revision:
    state = RevisionState.READY if ready else RevisionState.UNREADY
    return Revision(name, "h", "movie-recommender", name[-1], "pvc://x", state=state)


def _canary_routing(percent: int, canary_ready: bool = True) -> tuple[Routing, Revision, Revision]:
    stable, canary = _revision("stable-1"), _revision("canary-2", canary_ready)
    routing = Routing(
        traffic=[(stable, 100 - percent), (canary, percent)],
        tags={"latest": canary, "prev": stable},
    )
    return routing, stable, canary


def test_a_key_always_gets_its_arm_and_the_arm_header_names_it() -> None:
    routing, stable, canary = _canary_routing(25)
    for i in range(300):
        key = f"user-{i}"
        expected = canary if bucket(key) < 25 else stable
        assert {routing.choose("", key=key).name for _ in range(5)} == {expected.name}
        assert routing.arm_name(expected) == ("canary" if expected is canary else "stable")


def test_stickiness_never_fails_a_request_when_the_arm_is_down() -> None:
    routing, stable, _ = _canary_routing(50, canary_ready=False)
    canary_users = [f"u{i}" for i in range(200) if bucket(f"u{i}") < 50]
    assert {routing.choose("", key=k).name for k in canary_users} == {stable.name}
    routing, stable, canary = _canary_routing(50)
    assert routing.choose("", exclude={canary.name}, key=canary_users[0]) is stable


def test_without_a_canary_there_is_no_arm() -> None:
    only = _revision("only-1")
    routing = Routing(traffic=[(only, 100)], tags={"latest": only})
    assert routing.canary() is None and routing.arm_name(only) is None
    assert routing.choose("", key="user-1") is only
    rolled_back, stable, _ = _canary_routing(0)
    assert rolled_back.canary() is None
    assert {rolled_back.choose("", key=f"u{i}").name for i in range(100)} == {stable.name}


@pytest.mark.parametrize(
    ("header", "body", "key"),
    [
        ("anon-1", b'{"instances": [{"user_id": 7}]}', "anon-1"),
        (None, b'{"instances": [{"user_id": 7, "k": 5}]}', "7"),
        (None, b'{"instances": [{"history": [1, 2]}]}', None),
        (None, b'{"instances": [{"user_id": true}]}', None),
        (None, b'{"inputs": [{"name": "user_id", "data": [7]}]}', None),
        (None, b"not json", None),
        (None, b"", None),
        ("", b"[1]", None),
    ],
)
def test_the_assignment_key_of_a_request(header: str | None, body: bytes, key: str | None) -> None:
    assert assignment_key(header, body) == key
