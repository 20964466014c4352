"""Crawl throughput against the local TMDB sandbox (no rate limit, no faults)."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from pipelines.crawl import CrawlSettings, ProgressMode, crawl

PAGES = 200
_ROOT = Path(__file__).resolve().parents[1]


def start_sandbox(token: str, movies: int = PAGES * 20) -> tuple[subprocess.Popen[str], str]:
    """A sandbox subprocess on a free loopback port; returns it and its base URL."""
    process = subprocess.Popen(
        [sys.executable, "-m", "tmdb_sandbox", "--port", "0", "--movies", str(movies)],
        cwd=_ROOT,
        env={**os.environ, "SANDBOX_TOKEN": token},
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    assert process.stdout is not None
    line = process.stdout.readline()  # blocks until the sandbox listens (or exits)
    if "listening on " not in line:
        process.kill()
        raise RuntimeError(f"tmdb_sandbox did not start (exit {process.wait()})")
    return process, line.strip().rsplit("listening on ", 1)[1]


def run() -> None:
    token = "bench-token"
    process, base_url = start_sandbox(token)
    try:
        with tempfile.TemporaryDirectory(prefix="bench-crawl-") as data_dir:
            settings = CrawlSettings(
                data_dir=Path(data_dir),
                base_url=base_url,
                access_token=token,
                end_page=PAGES,
                rate_limit=0,
                timeout=10,
                progress=ProgressMode.LOG,
            )
            started = time.perf_counter()
            result = crawl(settings)
            elapsed = time.perf_counter() - started
    finally:
        process.terminate()
        process.wait(timeout=10)
    print(f"crawl throughput: {result.pages / elapsed:.1f} pages/s")
    print(f"crawl throughput: {result.records_seen / elapsed:.0f} records/s")
    print(f"crawl wall time ({result.pages} pages, incl. publish): {elapsed:.2f} s")


if __name__ == "__main__":
    run()
