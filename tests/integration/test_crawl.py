"""The crawl stage end to end: the real CLI process against the real sandbox process."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest

from pipelines.snapshots import SnapshotStore

pytestmark = pytest.mark.integration

REPO_ROOT = Path(__file__).resolve().parents[2]
FAST = ["--rate-limit", "0", "--timeout", "0.5", "--max-retries", "3", "--backoff-factor", "0.05"]


def run_crawl(
    sandbox: Any, data_dir: Path, *args: str, auth: str = "token", env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pipelines.crawl", "--progress", "log", *args],
        cwd=REPO_ROOT,
        env={**sandbox.env(data_dir, auth=auth), **(env or {})},
        capture_output=True,
        text=True,
        timeout=60,
    )


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("error:")]


def published(data_dir: Path) -> list[str]:
    return [info.snapshot_id for info in SnapshotStore(data_dir / "raw").list()]


def test_crawl_completes_through_faults_and_quarantines_bad_record(sandbox, tmp_path):
    sandbox.set_faults(
        {
            "scripted": [
                {"page": 2, "kind": "malformed", "variant": "vote_average", "index": 4},
                {"page": 3, "kind": "status", "status": 429, "times": 2, "retry_after": 1},
                {"page": 4, "kind": "slow", "delay_ms": 1500},  # > --timeout 0.5
                {"page": 5, "kind": "status", "status": 503},
                {"page": 6, "kind": "bad_json"},
                {"page": 7, "kind": "drop"},
            ]
        }
    )

    proc = run_crawl(sandbox, tmp_path, "--end-page", "8", *FAST)

    assert proc.returncode == 0, proc.stderr
    store = SnapshotStore(tmp_path / "raw")
    manifest = store.verify()
    assert manifest["kind"] == "tmdb-raw"
    assert manifest["pages"]["fetched"] == list(range(1, 9))
    assert manifest["counts"] == {
        "records_seen": 160,
        "movies": 159,
        "duplicates_merged": 0,
        "quarantined": 1,
        "genres": 19,
    }
    assert manifest["tmdb"] == {"total_pages": 100, "total_results": 2000}
    assert manifest["source"]["base_url"] == sandbox.base_url

    snapshot = store.resolve()
    quarantined = [json.loads(line) for line in (snapshot / "quarantine.jsonl").open()]
    assert len(quarantined) == 1
    assert quarantined[0]["page"] == 2
    assert quarantined[0]["index"] == 4
    assert "vote_average" in quarantined[0]["reason"]
    movies = pq.read_table(snapshot / "movies.parquet").to_pylist()
    assert len(movies) == 159
    assert quarantined[0]["record"]["id"] not in {m["id"] for m in movies}
    assert all(0 <= m["vote_average"] <= 10 for m in movies)
    genres = json.loads((snapshot / "genres.json").read_text())["genres"]
    assert {"id": 28, "name": "액션"} in genres  # default language ko-KR

    # the sandbox records a request when it answers: the timed-out slow answer to page 4 is
    # recorded once its 1.5 s sleep ends, which can be after the crawl finished
    deadline = time.monotonic() + 5
    while sum(sandbox.stats()["pages"]["4"].values()) < 2 and time.monotonic() < deadline:
        time.sleep(0.1)
    pages = sandbox.stats()["pages"]
    assert pages["3"] == {"429": 2, "200": 1}  # Retry-After honoured, then fetched
    assert pages["5"] == {"503": 1, "200": 1}
    assert pages["7"] == {"drop": 1, "200": 1}
    assert sum(pages["4"].values()) == 2  # the slow answer timed out and was retried
    assert sum(pages["6"].values()) == 2  # the broken body was fetched again
    assert "retry 1/3 of GET /3/movie/popular?page=3" in proc.stderr
    assert sandbox.base_url not in proc.stdout
    assert manifest["snapshot_id"] in proc.stdout
    assert not (tmp_path / "raw" / ".partial").exists()


def test_hostile_records_are_quarantined_and_never_reach_the_snapshot(sandbox, tmp_path):
    hostile = {"poster_url": 0, "poster_markup": 3, "long_title": 7, "long_overview": 11}
    sandbox.set_faults(
        {
            "scripted": [
                {"page": 2, "kind": "malformed", "variant": variant, "index": index}
                for variant, index in hostile.items()
            ]
        }
    )

    proc = run_crawl(sandbox, tmp_path, "--end-page", "3", *FAST)

    assert proc.returncode == 0, proc.stderr
    snapshot = SnapshotStore(tmp_path / "raw").resolve()
    quarantined = {
        entry["index"]: entry["reason"]
        for entry in map(json.loads, (snapshot / "quarantine.jsonl").open())
    }
    assert set(quarantined) == set(hostile.values())
    assert quarantined[0].startswith("poster_path: Value error, poster_path must be a TMDB")
    assert quarantined[3].startswith("poster_path")
    assert quarantined[7].startswith("title: String should have at most 300 characters")
    assert quarantined[11].startswith("overview: String should have at most 5000 characters")
    movies = pq.read_table(snapshot / "movies.parquet").to_pylist()
    assert len(movies) == 60 - len(hostile)
    posters = [m["poster_path"] for m in movies if m["poster_path"] is not None]
    assert posters and all(
        re.fullmatch(r"/[A-Za-z0-9_-]+\.(jpg|jpeg|png|svg|webp)", p) for p in posters
    )
    assert max(len(m["title"]) for m in movies) <= 300
    assert max(len(m["overview"] or "") for m in movies) <= 5000


def test_records_repeated_across_pages_are_merged_first_occurrence_wins(sandbox, tmp_path):
    # The list "moves" while we crawl: the tail of page N-1 shows up again on top of page N.
    sandbox.set_faults(
        {
            "scripted": [
                {"page": 2, "kind": "shift", "count": 3},
                {"page": 4, "kind": "shift", "count": 2},
            ]
        }
    )

    proc = run_crawl(sandbox, tmp_path, "--end-page", "4", *FAST)

    assert proc.returncode == 0, proc.stderr
    store = SnapshotStore(tmp_path / "raw")
    manifest = store.verify()
    assert manifest["counts"]["records_seen"] == 80
    assert manifest["counts"]["duplicates_merged"] == 5
    assert manifest["counts"]["movies"] == 75
    rows = pq.read_table(store.resolve() / "movies.parquet").to_pylist()
    ids = [r["id"] for r in rows]
    assert len(ids) == len(set(ids))
    # A repeated record keeps the page it was first seen on.
    per_page = [sum(r["page"] == p for r in rows) for p in (1, 2, 3, 4)]
    assert per_page == [20, 17, 20, 18]


@pytest.mark.parametrize("auth", ["token", "api_key"])
def test_bad_credential_fails_with_one_clear_line_and_publishes_nothing(sandbox, tmp_path, auth):
    wrong = "wrong-credential-0123456789"
    env = {"TMDB_ACCESS_TOKEN": wrong} if auth == "token" else {"TMDB_API_KEY": wrong}

    proc = run_crawl(sandbox, tmp_path, "--end-page", "3", *FAST, auth="none", env=env)

    assert proc.returncode == 6
    errors = error_lines(proc.stderr)
    assert len(errors) == 1
    assert "TMDB rejected the credential (HTTP 401" in errors[0]
    assert wrong not in proc.stderr + proc.stdout
    assert published(tmp_path) == []
    assert not (tmp_path / "raw" / "latest").exists()
    assert sandbox.stats()["by_status"] == {"401": 1}  # not retried


def test_missing_credential_is_a_clear_error(sandbox, tmp_path):
    proc = run_crawl(sandbox, tmp_path, "--end-page", "2", auth="none")

    assert proc.returncode == 6
    assert error_lines(proc.stderr) == [
        "error: no TMDB credential: set TMDB_ACCESS_TOKEN (preferred) or TMDB_API_KEY"
    ]
    assert sandbox.stats()["requests"] == 0


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--end-page", "501"], "--end-page 501 is outside 1..500"),
        (["--start-page", "0"], "--start-page 0 is outside 1..500"),
        (["--start-page", "5", "--end-page", "3"], "--start-page 5 is after --end-page 3"),
    ],
)
def test_invalid_page_range_is_a_clear_error(sandbox, tmp_path, args, message):
    proc = run_crawl(sandbox, tmp_path, *args)

    assert proc.returncode == 2
    errors = error_lines(proc.stderr)
    assert len(errors) == 1
    assert message in errors[0]
    assert sandbox.stats()["requests"] == 0
    assert not (tmp_path / "raw").exists()


def test_wrong_base_url_is_a_clear_permanent_error(sandbox, tmp_path):
    proc = run_crawl(
        sandbox,
        tmp_path,
        "--end-page",
        "2",
        env={"TMDB_BASE_URL": sandbox.base_url.removesuffix("/3")},
    )

    assert proc.returncode == 5
    errors = error_lines(proc.stderr)
    assert len(errors) == 1
    assert "HTTP 404" in errors[0]
    assert "check TMDB_BASE_URL" in errors[0]


def test_page_failing_after_retries_fails_the_run_and_rerun_resumes(sandbox, tmp_path):
    sandbox.set_faults({"scripted": [{"page": 3, "kind": "status", "status": 503, "times": 3}]})

    failed = run_crawl(sandbox, tmp_path, "--end-page", "4", *FAST[:-4], "--max-retries", "2")

    assert failed.returncode == 7
    errors = error_lines(failed.stderr)
    assert len(errors) == 1
    assert "page=3" in errors[0]
    assert "HTTP 503" in errors[0]
    assert published(tmp_path) == []
    assert sandbox.stats()["pages"]["3"] == {"503": 3}
    assert "4" not in sandbox.stats()["pages"]  # no gap: the crawl stopped at page 3

    sandbox.reset()
    rerun = run_crawl(sandbox, tmp_path, "--end-page", "4", *FAST)

    assert rerun.returncode == 0, rerun.stderr
    assert sorted(sandbox.stats()["pages"]) == ["3", "4"]  # pages 1-2 were kept
    manifest = SnapshotStore(tmp_path / "raw").verify()
    assert manifest["pages"]["resumed"] == 2
    assert manifest["counts"]["movies"] == 80


@pytest.mark.parametrize("auth", ["token", "api_key"])
def test_credential_never_appears_in_output_or_data_dir(sandbox, tmp_path, auth):
    secret = sandbox.token if auth == "token" else sandbox.api_key
    sandbox.set_faults(
        {
            "scripted": [
                {"page": 1, "kind": "drop"},
                {"page": 2, "kind": "status", "status": 429, "retry_after": 0},
                {"page": 2, "kind": "slow", "delay_ms": 1000},
                {"page": 3, "kind": "status", "status": 502, "times": None},
            ]
        }
    )
    outputs = []

    failed = run_crawl(sandbox, tmp_path, "--end-page", "3", *FAST, "--verbose", auth=auth)
    outputs += [failed.stdout, failed.stderr]
    assert failed.returncode == 7
    sandbox.reset()
    ok = run_crawl(sandbox, tmp_path, "--end-page", "3", *FAST, "--verbose", auth=auth)
    outputs += [ok.stdout, ok.stderr]
    assert ok.returncode == 0, ok.stderr

    unreachable = run_crawl(
        sandbox,
        tmp_path,
        *FAST,
        "--verbose",
        auth=auth,
        env={"TMDB_BASE_URL": "http://127.0.0.1:1/3"},  # refused: the error names the URL
    )
    outputs += [unreachable.stdout, unreachable.stderr]
    assert unreachable.returncode == 7
    assert "ConnectionError" in error_lines(unreachable.stderr)[0]

    assert "retry" in failed.stderr  # the retries were logged, so redaction was exercised
    for text in outputs:
        assert secret not in text
    files = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert files
    for file in files:
        assert secret.encode() not in file.read_bytes(), file


def test_kill_9_mid_crawl_keeps_latest_and_rerun_skips_kept_pages(sandbox, tmp_path):
    first = run_crawl(sandbox, tmp_path, "--end-page", "2", *FAST)
    assert first.returncode == 0, first.stderr
    store = SnapshotStore(tmp_path / "raw")
    previous = store.latest_id()
    sandbox.set_faults({"latency_ms": 150})

    proc = subprocess.Popen(
        [sys.executable, "-m", "pipelines.crawl", "--end-page", "12", "--rate-limit", "0"],
        cwd=REPO_ROOT,
        env=sandbox.env(tmp_path),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    partial_root = tmp_path / "raw" / ".partial"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and len(list(partial_root.glob("*/page-*.json"))) < 4:
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=10)
    kept = sorted(int(p.stem.split("-")[1]) for p in partial_root.glob("*/page-*.json"))

    assert 4 <= len(kept) < 12
    assert kept == list(range(1, len(kept) + 1))
    assert store.latest_id() == previous
    store.verify()
    assert published(tmp_path) == [previous]

    sandbox.reset()
    rerun = run_crawl(sandbox, tmp_path, "--end-page", "12", *FAST)

    assert rerun.returncode == 0, rerun.stderr
    requested = sorted(int(p) for p in sandbox.stats()["pages"])
    assert requested == [p for p in range(1, 13) if p not in kept]
    assert store.latest_id() != previous
    manifest = store.verify()
    assert manifest["pages"]["resumed"] == len(kept)
    assert manifest["counts"]["movies"] == 240
    assert not partial_root.exists()
    assert not [p for p in (tmp_path / "raw").iterdir() if p.name.startswith(".staging-")]


def test_raw_snapshot_fixture_is_a_verified_crawl(raw_data_dir, raw_snapshot_dir):
    # Downstream stages' tests build on this fixture; make sure it is what it says.
    manifest = SnapshotStore(raw_data_dir / "raw").verify()

    assert raw_snapshot_dir.name == manifest["snapshot_id"]
    assert manifest["counts"]["movies"] == 100
    assert pq.read_table(raw_snapshot_dir / "movies.parquet").num_rows == 100
    assert (raw_snapshot_dir / "genres.json").is_file()
