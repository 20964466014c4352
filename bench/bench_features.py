"""Feature-snapshot build time and peak memory at 1,000,000 interactions.

Two paths, each as its own `python -m pipelines.features build` process so that time and peak
RSS (ru_maxrss of the child) are the stage's own:

* a real log: a 1M-row Parquet interaction file (read, type-checked, validated, written);
* the simulator: 10,000 crawled movies x 29,000 users x ~34 films each (log-normal activity),
  generated, validated and written, from a raw snapshot crawled from the sandbox beforehand.
"""

from __future__ import annotations

import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from bench.bench_crawl import start_sandbox
from pipelines.crawl import CrawlSettings, ProgressMode, crawl

ROWS = 1_000_000
_ROOT = Path(__file__).resolve().parents[1]


def _real_log(path: Path) -> None:
    rng = np.random.default_rng(0)
    users = rng.integers(1, 50_001, size=ROWS * 2)
    items = rng.zipf(1.1, size=users.size) % 10_000 + 1
    frame = pd.DataFrame({"user_id": users, "content_id": items})
    frame = frame.drop_duplicates().head(ROWS)
    frame["watch_seconds"] = rng.uniform(0, 7200, size=len(frame)).round(1)
    frame["rating"] = np.where(
        rng.random(len(frame)) < 0.3, rng.integers(1, 11, len(frame)), np.nan
    )
    frame["timestamp"] = pd.to_datetime(
        1_700_000_000 + rng.integers(0, 9e6, len(frame)), unit="s", utc=True
    )
    frame.to_parquet(path, index=False)


def _timed_build(data_dir: Path, *args: str) -> tuple[float, float, str]:
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    started = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "pipelines.features", "build", "--data-dir", str(data_dir), *args],
        cwd=_ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    elapsed = time.perf_counter() - started
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr[-2000:])
    peak_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    if peak_kib <= before:  # ru_maxrss is a max over all children so far: run this one first
        print("  (peak RSS below an earlier child's; figure not attributable)")
    return elapsed, peak_kib / 1024, proc.stdout.strip()


def run() -> None:
    with tempfile.TemporaryDirectory(prefix="bench-features-") as tmp:
        tmp_path = Path(tmp)
        log = tmp_path / "interactions.parquet"
        _real_log(log)
        seconds, peak_mb, out = _timed_build(tmp_path / "real", "--interactions", str(log))
        print(f"features from a 1M-row log: {seconds:.1f} s, peak RSS {peak_mb:.0f} MB")
        print(f"  {out.split(' -> ')[0]}")

        token = "bench-token"
        sandbox, base_url = start_sandbox(token, movies=10_000)
        try:
            crawl(
                CrawlSettings(
                    data_dir=tmp_path / "sim",
                    base_url=base_url,
                    access_token=token,
                    end_page=500,
                    rate_limit=0,
                    progress=ProgressMode.LOG,
                )
            )
        finally:
            sandbox.terminate()
            sandbox.wait(timeout=10)
        os.environ.pop("DATA_DIR", None)
        seconds, peak_mb, out = _timed_build(
            tmp_path / "sim", "--users", "29000", "--mean-items", "25"
        )
        print(f"features simulated at ~1M interactions: {seconds:.1f} s, peak RSS {peak_mb:.0f} MB")
        print(f"  {out.split(' -> ')[0]}")


if __name__ == "__main__":
    run()
