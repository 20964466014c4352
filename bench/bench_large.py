"""Large logs: the split with re-watched pairs, EASE's memory estimate and refusal, --max-items.

Prints ``<figure>: <value> <unit>`` lines:

- a 7,000,000-row log over 50,000 films and 200,000 users with 10 re-watched (user, film)
  pairs: the duplicate merge and the whole per-user split; the former per-pair merge (a Python
  call per group) timed on a 200,000-row slice of the same log, for comparison;
- EASE's memory estimate for that log's 50,000 films against the memory available here, and a
  real refusal: a fit on 100,000 films (a 40 GB matrix) refused before allocating, how long
  the refusal took and its message;
- ``EASE(max_items=10_000)`` on the 7M-row log: fit time, peak RSS, interactions dropped.

``BENCH_LAPACK_BOUNDARY=1`` adds the (slow: ~30 min, ~9 GB) boundary measurement: OpenBLAS's
threaded ``spotrf`` on 36,000 and 38,000 rows in child processes (the second is killed by
SIGSEGV on this 2-core machine), then a real EASE fit on 46,557 films, which factorises with
one BLAS thread and completes.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import time

import numpy as np
import pandas as pd

from bench.bench_train import PeakRSS
from pipelines.evaluate import SplitProtocol, _merge_duplicates, split_holdout
from recommenders import EASE
from recommenders.ease import fit_memory_bytes
from recommenders.errors import ModelTooLargeError
from recommenders.resources import available_memory

ROWS, ITEMS, USERS, REWATCHED = 7_000_000, 50_000, 200_000, 10


def _log(rows: int, items: int, users: int, rewatched: int, seed: int = 0) -> pd.DataFrame:
    """Distinct (user, film) rows with Zipf popularity, plus ``rewatched`` repeated pairs."""
    rng = np.random.default_rng(seed)
    user = rng.integers(0, users, int(rows * 1.6))
    item = rng.zipf(1.2, user.size) % items + 1
    item[:items] = np.arange(1, items + 1)  # every film at least once
    frame = pd.DataFrame({"user_id": user, "content_id": item}).drop_duplicates().head(rows)
    frame = pd.concat([frame, frame.head(rewatched)], ignore_index=True)
    n = len(frame)
    frame["watch_seconds"] = rng.uniform(0, 7200, n)
    frame["rating"] = np.where(rng.random(n) < 0.5, rng.integers(1, 11, n), np.nan)
    frame["timestamp"] = pd.to_datetime(1_700_000_000 + rng.integers(0, 9e6, n), unit="s", utc=True)
    return frame


def _per_pair_merge(frame: pd.DataFrame) -> pd.DataFrame:
    agg = {"watch_seconds": lambda s: s.sum(min_count=1), "rating": "max", "timestamp": "max"}
    return frame.groupby(["user_id", "content_id"], as_index=False, sort=True).agg(agg)


def _split(frame: pd.DataFrame) -> None:
    started = time.perf_counter()
    merged = _merge_duplicates(frame)
    merge_s = time.perf_counter() - started
    print(f"duplicate merge, {len(frame):,} rows ({REWATCHED} re-watched pairs): {merge_s:.2f} s")
    sample = frame.head(200_000)
    started = time.perf_counter()
    _per_pair_merge(sample)
    old_s = time.perf_counter() - started
    started = time.perf_counter()
    _merge_duplicates(sample)
    new_s = time.perf_counter() - started
    print(
        f"per-pair merge (former), 200,000 rows: {old_s:.2f} s (vectorised: {new_s:.3f} s, "
        f"{old_s / new_s:.0f}x; scaled to {len(frame):,} rows: ~"
        f"{old_s * len(frame) / 200_000 / 60:.0f} min)"
    )
    started = time.perf_counter()
    train, test, used = split_holdout(frame, seed=0, protocol=SplitProtocol.TIME)
    print(
        f"split_holdout ({used.value}), {len(frame):,} rows: "
        f"{time.perf_counter() - started:.1f} s ({len(train):,} train, {len(test):,} test)"
    )
    assert len(train) + len(test) == len(merged)


def _memory(frame: pd.DataFrame) -> None:
    items = frame["content_id"].nunique()
    needed, available = fit_memory_bytes(items, 200), available_memory()
    verdict = "fits" if available is None or needed <= available else "refused"
    print(
        f"EASE memory estimate, {items:,} films: {needed / 1e9:.1f} GB needed, "
        f"{(available or 0) / 1e9:.1f} GB available -> {verdict}"
    )
    wide = pd.DataFrame(
        {
            "user_id": np.arange(1_000_000) % 50_000,
            "content_id": np.arange(1_000_000) % 100_000 + 1,
            "rating": 4.0,
        }
    )
    started = time.perf_counter()
    try:
        EASE().fit(wide)
    except ModelTooLargeError as err:
        print(
            f"EASE refusal, 100,000 films / 1M rows: {time.perf_counter() - started:.2f} s: {err}"
        )
    else:
        print("EASE refusal, 100,000 films: not refused (this machine has the memory)")


def _bounded(frame: pd.DataFrame) -> None:
    with PeakRSS() as rss:
        started = time.perf_counter()
        model = EASE(max_items=10_000).fit(frame)
        fit_s = time.perf_counter() - started
    print(
        f"EASE max_items=10,000 on {len(frame):,} rows: fit {fit_s:.1f} s, peak RSS "
        f"{rss.peak / 2**20:.0f} MB, {model.n_items:,} films, {model.seen.nnz:,} interactions "
        f"kept"
    )


_SPOTRF = """
import sys, numpy as np, scipy.linalg.lapack as lapack
n = int(sys.argv[1]); a = np.zeros((n, n), dtype=np.float32, order="F")
a[np.arange(n), np.arange(n)] = 2.0
lapack.spotrf(a, lower=0, overwrite_a=1, clean=0)
"""


def _lapack_boundary() -> None:
    for n in (36_000, 38_000):
        # the factorisation's first panel is where the crash happens: 60 s tell crash from not
        try:
            proc = subprocess.run([sys.executable, "-c", _SPOTRF, str(n)], timeout=60, check=False)
            outcome = f"exit {proc.returncode}" + (" (SIGSEGV)" if proc.returncode == -11 else "")
        except subprocess.TimeoutExpired:
            outcome = "running after 60 s (no crash)"
        print(f"threaded OpenBLAS spotrf, {n:,} rows: {outcome}")
    rng = np.random.default_rng(0)
    n_items, n_rows = 46_557, 900_000
    items = np.concatenate([np.arange(n_items), rng.zipf(1.3, n_rows - n_items) % n_items]) + 1
    frame = pd.DataFrame(
        {"user_id": rng.integers(0, 45_000, n_rows), "content_id": items, "rating": 4.0}
    ).drop_duplicates(["user_id", "content_id"])
    with PeakRSS() as rss:
        started = time.perf_counter()
        model = EASE().fit(frame)
    print(
        f"EASE on {model.n_items:,} films (1 BLAS thread above 16,384): "
        f"{time.perf_counter() - started:.0f} s, peak RSS {rss.peak / 1e9:.1f} GB"
    )


def run() -> None:
    logging.getLogger("recommenders").setLevel(logging.WARNING)
    started = time.perf_counter()
    frame = _log(ROWS, ITEMS, USERS, REWATCHED)
    print(
        f"log: {len(frame):,} rows, {frame['content_id'].nunique():,} films, "
        f"{frame['user_id'].nunique():,} users ({time.perf_counter() - started:.1f} s)"
    )
    _split(frame)
    _memory(frame)
    _bounded(frame)
    if os.environ.get("BENCH_LAPACK_BOUNDARY") == "1":
        _lapack_boundary()
