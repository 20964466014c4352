"""Training and in-process scoring of the best recommender at catalog scale, plus ML-100k quality.

Prints ``<figure>: <value> <unit>`` lines:

- synthetic interactions: 1,000,000 distinct (user, item) rows, ~50k users x 10k items, with
  genre tastes and Zipf popularity (`recommenders.synthetic`);
- ``fit time`` and ``peak rss`` of fitting `BEST_MODEL` (RSS sampled every 5 ms by a thread with
  psutil; ``ru_maxrss`` of the process is printed too and includes data generation);
- ``artefact``: size on disk of the saved artefact (``arrays.npz`` and all files);
- ``top-10 single user``: median and p99 of 5,000 `recommend` calls (1,000 random known users,
  5 rounds), and of an anonymous 5-item history;
- ``top-10 batch of 1000 users``: median of 7 `recommend_many` calls;
- the ML-100k comparison table (random 75/25 per-user split, every rating an interaction) when
  ``scripts/fetch_ml100k.sh`` has put the dataset in ``.local/datasets/ml-100k``.
"""

from __future__ import annotations

import os
import resource
import statistics
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import psutil

from pipelines.evaluate import SplitProtocol, evaluate_models
from recommenders import BEST_MODEL, MODELS, save
from recommenders.synthetic import synthetic_interactions

N_USERS, N_ITEMS, N_ROWS = 50_000, 10_000, 1_000_000
ML100K = Path(os.environ.get("ML100K_DIR", ".local/datasets/ml-100k")) / "interactions.csv"


class PeakRSS:
    """Samples this process's RSS in a background thread; `peak` is the maximum seen."""

    def __init__(self, interval: float = 0.005) -> None:
        self._process = psutil.Process()
        self._interval = interval
        self._stop = threading.Event()
        self.peak = self._process.memory_info().rss
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self._process.memory_info().rss)
            time.sleep(self._interval)

    def __enter__(self) -> PeakRSS:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._process.memory_info().rss)


def _scale() -> None:
    started = time.perf_counter()
    interactions, catalog = synthetic_interactions(N_USERS, N_ITEMS, N_ROWS, n_genres=40, seed=0)
    print(
        f"synthetic data: {len(interactions)} rows, {interactions['user_id'].nunique()} users, "
        f"{interactions['content_id'].nunique()} items ({time.perf_counter() - started:.1f} s)"
    )
    baseline = psutil.Process().memory_info().rss
    with PeakRSS() as rss:
        started = time.perf_counter()
        model = MODELS[BEST_MODEL]().fit(interactions, catalog)
        fit_seconds = time.perf_counter() - started
    print(f"model: {BEST_MODEL} {MODELS[BEST_MODEL]().params()}")
    print(f"fit time: {fit_seconds:.2f} s")
    print(f"peak rss: {rss.peak / 2**20:.0f} MB")
    print(f"peak rss above pre-fit baseline: {(rss.peak - baseline) / 2**20:.0f} MB")
    print(f"process ru_maxrss: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB")

    with tempfile.TemporaryDirectory(prefix="bench-train-") as tmp:
        save(model, tmp)
        files = {p.name: p.stat().st_size for p in Path(tmp).iterdir()}
    print(
        f"artefact: {sum(files.values()) / 1e6:.1f} MB on disk "
        f"(arrays.npz {files['arrays.npz'] / 1e6:.1f} MB)"
    )

    rng = np.random.default_rng(0)
    users = rng.choice(model.known_users, 1000, replace=False).tolist()
    for user in users[:50]:  # warm caches
        model.recommend(user_id=user)
    single = [t for _ in range(5) for t in _timings(lambda u: model.recommend(user_id=u), users)]
    print(
        f"top-10 single user: median {statistics.median(single) * 1e3:.3f} ms, "
        f"p99 {np.percentile(single, 99) * 1e3:.3f} ms ({len(single)} calls)"
    )
    history = interactions["content_id"].iloc[:5].tolist()
    anon = _timings(lambda h: model.recommend(history=h), [history] * 1000)
    print(
        f"top-10 anonymous 5-item history: median {statistics.median(anon) * 1e3:.3f} ms, "
        f"p99 {np.percentile(anon, 99) * 1e3:.3f} ms"
    )
    batch = []
    for _ in range(7):
        started = time.perf_counter()
        model.recommend_many(users, k=10)
        batch.append(time.perf_counter() - started)
    print(
        f"top-10 batch of 1000 users: median {statistics.median(batch) * 1e3:.1f} ms, "
        f"max {max(batch) * 1e3:.1f} ms (7 calls)"
    )


def _ml100k() -> None:
    if not ML100K.is_file():
        print(f"ml-100k: skipped ({ML100K} not found; run scripts/fetch_ml100k.sh)")
        return
    ratings = pd.read_csv(ML100K)
    results = evaluate_models(
        ratings,
        None,
        models=[
            "popularity",
            "movie_predictor",
            ("ease", {"weighting": "binary", "lambda_": 500.0}),
            ("ease", {"neighbours": 100}),
            "ease",
            ("ease", {"neighbours": 300}),
            ("ease", {"neighbours": 10**6}),  # no pruning: the dense solution
        ],
        k=10,
        seed=0,
        protocol=SplitProtocol.RANDOM,
    )
    base = results.loc[results["model"] == "popularity", "ndcg@10"].iloc[0]
    print("ml-100k (random per-user 75/25, seed 0, all ratings relevant, k=10):")
    print(f"  {'model':<42} {'P@10':>7} {'R@10':>7} {'NDCG@10':>8} {'MAP@10':>7} {'cov':>6}")
    for _, row in results.iterrows():
        params = row["params"]
        label = row["model"]
        if row["model"] == "ease":
            n = params["neighbours"]
            kept = "dense" if n >= 10**6 else f"N={n}"
            label = f"ease ({params['weighting']}, λ={params['lambda_']:g}, {kept})"
        print(
            f"  {label:<42} {row['precision@10']:7.4f} {row['recall@10']:7.4f} "
            f"{row['ndcg@10']:8.4f} {row['map@10']:7.4f} {row['coverage']:6.3f}"
            f"  ({row['ndcg@10'] / base:.2f}x popularity NDCG, fit {row['fit_seconds']:.1f} s)"
        )


def _timings(call: Callable[[Any], object], args: list[Any]) -> list[float]:
    """Seconds each ``call(arg)`` took, one entry per argument."""
    out = []
    for arg in args:
        started = time.perf_counter()
        call(arg)
        out.append(time.perf_counter() - started)
    return out


def run() -> None:
    _scale()
    _ml100k()
