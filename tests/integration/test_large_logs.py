"""Real logs as users bring them, through the real CLIs: MovieLens' own files, ids beyond
int64, and a catalog too large for EASE in memory (refused with the bound that fits, or fitted
on the most-interacted items with ``--max-items``). The files are generated here, in the
formats MovieLens distributes (no MovieLens data is shipped)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pipelines.features import (
    FeatureSettings,
    LogFormat,
    build_features,
    detect_format,
    load_features,
)

pytestmark = pytest.mark.integration
REPO_ROOT = Path(__file__).resolve().parents[2]

# (user, item, rating, timestamp) rows, as every MovieLens release has them
ROWS = [(1, 50, 4, 881250949), (1, 172, 5, 881250950), (2, 50, 3, 881251000), (3, 7, 1, 1)]


def run_cli(module: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "DATA_DIR"}
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("error:")]


def movielens_file(directory: Path, fmt: LogFormat) -> Path:
    if fmt is LogFormat.ML_100K:  # u.data: tab-separated, no header
        path = directory / "u.data"
        path.write_text("".join(f"{u}\t{i}\t{r}\t{t}\n" for u, i, r, t in ROWS))
    elif fmt is LogFormat.ML_1M:  # ratings.dat: "::"-separated, no header
        path = directory / "ratings.dat"
        path.write_text("".join(f"{u}::{i}::{r}::{t}\n" for u, i, r, t in ROWS))
    else:  # ml-latest ratings.csv: header, half stars
        path = directory / "ratings.csv"
        path.write_text(
            "userId,movieId,rating,timestamp\n"
            + "".join(f"{u},{i},{r - 0.5},{t}\n" for u, i, r, t in ROWS)
        )
    return path


@pytest.mark.parametrize("fmt", [LogFormat.ML_100K, LogFormat.ML_1M, LogFormat.ML_LATEST])
def test_movielens_files_import_directly(tmp_path: Path, fmt: LogFormat) -> None:
    log = movielens_file(tmp_path, fmt)
    assert detect_format(log) is fmt
    data_dir = tmp_path / "data"

    build_features(FeatureSettings(data_dir=data_dir, interactions_file=log))

    snapshot = load_features(data_dir)
    got = snapshot.interactions
    assert got[["user_id", "content_id"]].to_numpy().tolist() == [[u, i] for u, i, _, _ in ROWS]
    half = 0.5 if fmt is LogFormat.ML_LATEST else 0.0
    assert got["rating"].tolist() == [r - half for _, _, r, _ in ROWS]
    assert got["timestamp"].tolist() == [pd.Timestamp(t, unit="s", tz="UTC") for *_, t in ROWS]
    assert snapshot.manifest["source"]["interactions_file"]["format"] == fmt.value
    assert sorted(snapshot.catalog["content_id"]) == [7, 50, 172]


def test_the_format_is_detected_from_the_bytes_or_named_with_format(tmp_path: Path) -> None:
    log = tmp_path / "export.tsv"  # a u.data under another name: detected by its content
    log.write_text("".join(f"{u}\t{i}\t{r}\t{t}\n" for u, i, r, t in ROWS))
    assert detect_format(log) is LogFormat.ML_100K
    named = run_cli("pipelines.features", "build", "--interactions", str(log),
                    "--format", "ml-100k", "--data-dir", str(tmp_path / "b"))  # fmt: skip
    assert named.returncode == 0, named.stderr
    assert len(load_features(tmp_path / "b").interactions) == len(ROWS)

    unknown = tmp_path / "ratings.bin"
    unknown.write_bytes(bytes(range(256)))
    proc = run_cli("pipelines.features", "build", "--interactions", str(unknown),
                   "--data-dir", str(tmp_path / "c"))  # fmt: skip
    assert proc.returncode == 2, proc.stderr
    assert "cannot tell its format" in proc.stderr and "--format (csv, parquet, ml-100k" in (
        proc.stderr
    )


def test_ids_beyond_int64_are_reported_as_the_file_gives_them(tmp_path: Path) -> None:
    log = tmp_path / "u.data"
    log.write_text("1\t50\t4\t881250949\n9223372036854775808\t50\t3\t881250950\n"
                   "2\t18446744073709551617\t3\t881250951\n")  # fmt: skip

    proc = run_cli("pipelines.features", "build", "--interactions", str(log),
                   "--data-dir", str(tmp_path / "data"))  # fmt: skip

    assert proc.returncode == 4, proc.stderr
    assert re.search(
        r"row +2  user_id +beyond the int64 range of ids, got '?9223372036854775808\b", proc.stderr
    )
    assert "content_id     beyond the int64 range of ids, got '18446744073709551617'" in proc.stderr
    assert "got -1" not in proc.stderr and "-9223372036854775808" not in proc.stderr


@pytest.fixture(scope="module")
def wide_log(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """250,000 films (EASE would need a 250 GB matrix), 300,000 rows of 30,000 users; the few
    thousand popular films carry most of the interactions."""
    rng = np.random.default_rng(3)
    n_items, n_users = 250_000, 30_000
    tail = np.arange(1, n_items + 1)  # every film at least once
    head = rng.zipf(1.4, 300_000 - n_items) % 3000 + 1
    frame = pd.DataFrame(
        {
            "user_id": np.concatenate([rng.integers(0, n_users, n_items), np.arange(len(head))])
            % n_users,
            "content_id": np.concatenate([tail, head]),
        }
    ).drop_duplicates()
    frame["rating"] = rng.integers(1, 6, len(frame)).astype(float)
    path = tmp_path_factory.mktemp("wide") / "wide.csv"
    frame.to_csv(path, index=False)
    return path


def test_an_ease_too_large_for_memory_is_refused_with_the_bound_that_fits(wide_log: Path) -> None:
    proc = run_cli("pipelines.evaluate", "--interactions", str(wide_log), "--models", "ease",
                   "--split", "random")  # fmt: skip

    assert proc.returncode == 13, proc.stderr[-2000:]
    lines = error_lines(proc.stderr)
    assert len(lines) == 1 and "Traceback" not in proc.stderr
    match = re.search(
        r"EASE on ([\d,]+) items needs ~([\d.]+) GB .* but ([\d.]+) GB is available; .*"
        r"--max-items ([\d,]+) keeps",
        lines[0],
    )
    assert match, lines[0]
    items, needed, available, bound = match.groups()
    assert int(items.replace(",", "")) > 150_000 and float(needed) > float(available)
    assert 0 < int(bound.replace(",", "")) < int(items.replace(",", ""))


def test_max_items_bounds_ease_and_says_what_it_dropped(wide_log: Path) -> None:
    proc = run_cli("pipelines.evaluate", "--interactions", str(wide_log), "--models", "ease",
                   "--split", "random", "--max-items", "2000")  # fmt: skip

    assert proc.returncode == 0, proc.stderr[-2000:]
    dropped = re.search(
        r"max_items 2000: kept the 2000 most-interacted of ([\d]+) items; dropped (\d+) of (\d+)",
        proc.stderr,
    )
    assert dropped, proc.stderr[-2000:]
    assert int(dropped.group(1)) > 150_000 and 0 < int(dropped.group(2)) < int(dropped.group(3))
    assert "ease" in proc.stdout and "ndcg@10" in proc.stdout  # the comparison table
