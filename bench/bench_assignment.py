"""Sticky assignment: users keep their arm, and raising the percent moves users one way only.

Two parts:

- the buckets alone (`contracts.assignment`): 100,000 user ids, the share on the canary at 10 %
  and 25 %, and how many moved each way between the two;
- through a real local stack (two trained versions, a canary of the second): 1,000 predict
  requests from 200 users (``X-User-Id``) at 10 %, then the canary raised to 25 % and 1,000 more;
  prints how many users kept their arm at each percent and how many moved, in which direction.
"""

from __future__ import annotations

import tempfile
import time
from collections import Counter
from pathlib import Path

import requests

from contracts.assignment import bucket, is_canary
from tests.support.stack import local_stack, serve_only, train_two_versions

USERS = [f"user-{i}" for i in range(200)]
REQUESTS = 1_000


def _buckets_alone() -> None:
    keys = [f"anon-{i:08d}" for i in range(100_000)]
    started = time.perf_counter()
    buckets = [bucket(k) for k in keys]
    seconds = time.perf_counter() - started
    at10 = [is_canary(b, 10) for b in buckets]
    at25 = [is_canary(b, 25) for b in buckets]
    into = sum(1 for a, b in zip(at10, at25, strict=True) if not a and b)
    back = sum(1 for a, b in zip(at10, at25, strict=True) if a and not b)
    print(f"bucket(): {len(keys) / seconds:,.0f} keys/s")
    print(f"buckets: canary share {sum(at10) / len(keys):.2%} at 10 %, "
          f"{sum(at25) / len(keys):.2%} at 25 % (100,000 ids)")  # fmt: skip
    print(f"buckets 10 -> 25 %: {into} users moved into the canary, {back} moved back")


def _arms(session: requests.Session, url: str) -> dict[str, set[tuple[str, str]]]:
    seen: dict[str, set[tuple[str, str]]] = {u: set() for u in USERS}
    for n in range(REQUESTS):
        user = USERS[n % len(USERS)]
        response = session.post(
            url, json={"instances": [{"user_id": 1, "k": 3}]}, headers={"X-User-Id": user}
        )
        response.raise_for_status()
        seen[user].add((response.headers["X-Canary-Arm"], response.headers["X-Revision"]))
    return seen


def _through_the_ingress() -> None:
    with tempfile.TemporaryDirectory() as tmp, local_stack(Path(tmp)) as stack:
        versions = train_two_versions(stack)
        serve_only(stack, versions["first"])
        with requests.Session() as session:
            arms = {}
            for percent in (10, 25):
                stack.run(
                    "pipelines.rollout", "canary", "--version", versions["second"],
                    "--percent", str(percent),
                )  # fmt: skip
                seen = _arms(session, stack.predict_url)
                kept = sum(1 for s in seen.values() if len(s) == 1)
                arms[percent] = {u: next(iter(s))[0] for u, s in seen.items() if len(s) == 1}
                on = Counter(arms[percent].values())
                expected = sum(is_canary(bucket(u), percent) for u in USERS)
                print(f"ingress at {percent} %: {kept} of {len(USERS)} users kept one arm and "
                      f"revision across {REQUESTS} requests ({kept / len(USERS):.0%}); "
                      f"canary {on['canary']}, stable {on['stable']} "
                      f"(buckets say canary {expected})")  # fmt: skip
        moved = Counter(
            f"{arms[10][u]} -> {arms[25][u]}"
            for u in USERS
            if u in arms[10] and u in arms[25] and arms[10][u] != arms[25][u]
        )
        print(f"ingress 10 -> 25 %: moved {dict(moved) or 'nobody'}")


def run() -> None:
    _buckets_alone()
    _through_the_ingress()
