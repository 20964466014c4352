"""Stored state under faults, through the real CLIs: corruption is exit 3, a full disk exit 12.

- garbled manifests and ``latest`` pointers (random bytes, a directory in place of the file,
  an extra file the manifest does not cover, an empty file map);
- a disk that fills up: a real 2 MB tmpfs mounted for the test (root only; skipped, saying so,
  where mounting is not permitted), filled to a chosen number of free bytes;
- two identical ``features build`` processes at once;
- a rejected Parquet log, 12 times: the documented exit code every time (pyarrow used to abort
  the process at exit now and then, SIGABRT / exit 134, after printing the error).
"""

from __future__ import annotations

import concurrent.futures
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipelines.features import FeatureSettings, build_features
from pipelines.snapshots import SnapshotStore

pytestmark = pytest.mark.integration
REPO_ROOT = Path(__file__).resolve().parents[2]


def run_cli(
    module: str, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("DATA_DIR", "TMDB_"))}
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=REPO_ROOT,
        env={**base, **(env or {})},
        capture_output=True,
        text=True,
        timeout=120,
    )


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("error:")]


def write_log(path: Path, users: int = 60, items: int = 40, seed: int = 0) -> Path:
    """A small real-looking rating log (CSV, this project's columns)."""
    rng = np.random.default_rng(seed)
    draws = zip(rng.integers(1, users + 1, users * 8), rng.integers(1, items + 1, users * 8),
                strict=True)  # fmt: skip
    pairs = {(int(u), int(i)) for u, i in draws}
    frame = pd.DataFrame(sorted(pairs), columns=["user_id", "content_id"])
    frame["rating"] = rng.integers(1, 6, len(frame)).astype(float)
    frame["timestamp"] = 881_250_000 + np.arange(len(frame))
    frame.to_csv(path, index=False)
    return path


def leftovers(root: Path) -> list[str]:
    """Staging directories and temporary files anywhere under ``root``."""
    return sorted(
        str(p.relative_to(root))
        for p in root.rglob("*")
        if p.name.startswith(".staging-") or ".tmp-" in p.name
    )


@pytest.fixture
def features_dir(tmp_path: Path) -> tuple[Path, list[str]]:
    """A DATA_DIR with two feature snapshots built from two real logs; latest is the second."""
    data_dir = tmp_path / "data"
    logs = [write_log(tmp_path / f"{n}.csv", seed=n) for n in (1, 2)]
    versions = [
        build_features(FeatureSettings(data_dir=data_dir, interactions_file=log)).version
        for log in logs
    ]
    return data_dir, versions


# -- corruption ------------------------------------------------------------------------------


@pytest.mark.parametrize("garble", ["random bytes", "an empty file map"])
def test_a_garbled_manifest_is_exit_3_naming_it_and_list_shows_the_rest(features_dir, garble):
    data_dir, (good, bad) = features_dir
    manifest = data_dir / "features" / bad / "manifest.json"
    if garble == "random bytes":  # (a directory and the other garbles: tests/unit)
        manifest.write_bytes(os.urandom(512))
    else:
        doc = json.loads(manifest.read_text())
        manifest.write_text(json.dumps({**doc, "files": {}}))

    listing = run_cli("pipelines.features", "list", "--data-dir", str(data_dir))
    assert listing.returncode == 3, listing.stderr
    assert good in listing.stdout and f"* {bad}" in listing.stdout and "CORRUPT" in listing.stdout
    assert [line for line in error_lines(listing.stderr) if str(manifest) in line]
    assert "Traceback" not in listing.stderr

    evaluate = run_cli("pipelines.evaluate", "--data-dir", str(data_dir), "--models", "popularity")
    assert evaluate.returncode == 3, evaluate.stderr
    assert str(manifest) in error_lines(evaluate.stderr)[0]
    assert "Traceback" not in evaluate.stderr

    restore = run_cli("pipelines.features", "restore", good, "--data-dir", str(data_dir))
    assert restore.returncode == 0, restore.stderr
    assert SnapshotStore(data_dir / "features").latest_id() == good


def test_a_file_the_manifest_does_not_cover_is_corruption(features_dir):
    data_dir, (good, _) = features_dir
    planted = data_dir / "features" / good / "extra.parquet"
    planted.write_bytes(b"PAR1 not listed anywhere PAR1")

    proc = run_cli("pipelines.features", "restore", good, "--data-dir", str(data_dir))

    assert proc.returncode == 3, proc.stderr
    assert f"{planted} is in the snapshot but not in its manifest" in proc.stderr
    assert SnapshotStore(data_dir / "features").latest_id() != good


@pytest.mark.parametrize("garble", ["random bytes", "a directory"])
def test_a_garbled_latest_pointer_is_exit_3_and_restore_repairs_it(features_dir, garble):
    data_dir, (good, _) = features_dir
    pointer = data_dir / "features" / "latest"
    if garble == "random bytes":
        pointer.write_bytes(b"\x8f\xff\x00\x13" * 64)
    else:
        pointer.unlink()
        pointer.mkdir()

    evaluate = run_cli("pipelines.evaluate", "--data-dir", str(data_dir), "--models", "popularity")
    assert evaluate.returncode == 3, evaluate.stderr
    assert str(pointer) in error_lines(evaluate.stderr)[0] and "Traceback" not in evaluate.stderr
    listing = run_cli("pipelines.features", "list", "--data-dir", str(data_dir))
    assert listing.returncode == 3 and good in listing.stdout  # the snapshots are still listed

    restore = run_cli("pipelines.features", "restore", good, "--data-dir", str(data_dir))
    assert restore.returncode == 0, restore.stderr
    assert pointer.read_text() == f"{good}\n"


# -- a disk that fills up ----------------------------------------------------------------------


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A real 2 MB tmpfs, mounted for the test and unmounted after."""
    mount = tmp_path / "disk"
    mount.mkdir()
    if shutil.which("mount") is None or (hasattr(os, "geteuid") and os.geteuid() != 0):
        pytest.skip("mounting a tmpfs needs root and mount(8): cannot fill a disk here")
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount)],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        pytest.skip(f"mounting a tmpfs is not permitted here: {done.stderr.strip()}")
    try:
        yield mount
    finally:
        if subprocess.run(["umount", str(mount)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(mount)], capture_output=True)


def fill(disk: Path, leave: int) -> None:
    """Take all free space on ``disk`` but ``leave`` bytes."""
    (disk / "filler").write_bytes(b"\0" * (shutil.disk_usage(disk).free - leave))
    assert leave <= shutil.disk_usage(disk).free < leave + 4096


def test_features_build_on_a_full_disk_says_what_it_needs_and_leaves_nothing(small_disk, tmp_path):
    data_dir = small_disk / "data"
    first = build_features(
        FeatureSettings(data_dir=data_dir, interactions_file=write_log(tmp_path / "a.csv"))
    )
    big = write_log(tmp_path / "big.csv", users=3000, items=800, seed=5)  # ~24k rows
    fill(small_disk, leave=16 * 1024)

    proc = run_cli("pipelines.features", "build", "--interactions", str(big),
                   "--data-dir", str(data_dir))  # fmt: skip

    assert proc.returncode == 12, proc.stderr
    lines = error_lines(proc.stderr)
    assert len(lines) == 1 and "Traceback" not in proc.stderr
    assert "disk full: snapshot fs-" in lines[0] and str(data_dir / "features") in lines[0]
    assert " needed" in lines[0] or " needs " in lines[0]
    assert "free" in lines[0] and "nothing was published" in lines[0]
    assert leftovers(small_disk) == []
    store = SnapshotStore(data_dir / "features")
    assert store.latest_id() == first.version
    assert [i.snapshot_id for i in store.list()] == [first.version]


def test_moving_latest_on_a_full_disk_leaves_no_temporary_file(small_disk, tmp_path):
    data_dir = small_disk / "data"
    first = build_features(
        FeatureSettings(data_dir=data_dir, interactions_file=write_log(tmp_path / "a.csv", seed=1))
    )
    second = build_features(
        FeatureSettings(data_dir=data_dir, interactions_file=write_log(tmp_path / "b.csv", seed=2))
    )
    fill(small_disk, leave=0)

    proc = run_cli("pipelines.features", "restore", first.version, "--data-dir", str(data_dir))

    assert proc.returncode == 12, proc.stderr
    lines = error_lines(proc.stderr)
    assert len(lines) == 1 and "disk full writing" in lines[0] and "latest" in lines[0]
    assert (
        f"latest was left as it was, not moved to {first.version}" in lines[0]
        and "Traceback" not in proc.stderr
    )
    assert leftovers(small_disk) == []
    assert SnapshotStore(data_dir / "features").latest_id() == second.version


def test_crawl_on_a_full_disk_is_one_line_and_leaves_no_temporary_file(small_disk, sandbox):
    data_dir = small_disk / "data"
    fill(small_disk, leave=0)

    proc = run_cli(
        "pipelines.crawl",
        *("--progress", "log", "--end-page", "3", "--max-retries", "1"),
        env=sandbox.env(data_dir),
    )

    assert proc.returncode == 12, proc.stderr
    lines = error_lines(proc.stderr)
    assert len(lines) == 1 and "Traceback" not in proc.stderr
    assert "disk full writing" in lines[0] and "page-0001.json" in lines[0]
    assert " needed" in lines[0]
    assert leftovers(small_disk) == []
    assert not (data_dir / "raw" / "latest").exists()


# -- two identical builds at once ----------------------------------------------------------------


def test_two_identical_builds_at_once_both_succeed_with_one_snapshot(tmp_path):
    log = write_log(tmp_path / "log.csv", users=20_000, items=2_000, seed=9)  # ~160k rows
    data_dir = tmp_path / "data"
    argv = [sys.executable, "-m", "pipelines.features", "build", "--interactions", str(log),
            "--data-dir", str(data_dir)]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if k != "DATA_DIR"}
    pipes = {"stdout": subprocess.PIPE, "stderr": subprocess.PIPE, "text": True}
    procs = [subprocess.Popen(argv, cwd=REPO_ROOT, env=env, **pipes) for _ in range(2)]
    outcomes = [(p.wait(timeout=120), *p.communicate()) for p in procs]

    assert [code for code, _, _ in outcomes] == [0, 0], [err for _, _, err in outcomes]
    store = SnapshotStore(data_dir / "features")
    version = store.latest_id()
    assert version and all(version in out for _, out, _ in outcomes)
    states = sorted("published" if " published:" in out else "exists" for _, out, _ in outcomes)
    assert states == ["exists", "published"], [out for _, out, _ in outcomes]
    assert [i.snapshot_id for i in store.list()] == [version]
    assert store.verify(version) and leftovers(data_dir) == []


# -- a rejected Parquet log, many times ----------------------------------------------------------


def test_a_rejected_parquet_log_exits_4_every_time(tmp_path):
    log = tmp_path / "log.parquet"
    pq.write_table(
        pa.table({"user_id": ["a", "b", "c"], "content_id": [1, 2, 3], "rating": [4.0, 3.0, 5.0]}),
        log,
    )

    def once(n: int) -> tuple[int, str]:
        proc = run_cli("pipelines.features", "build", "--interactions", str(log),
                       "--data-dir", str(tmp_path / f"data-{n}"))  # fmt: skip
        return proc.returncode, proc.stderr

    runs = 12  # before the fix 1 run in 30 aborted; after it 100 of 100 exited 4
    with concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool:
        results: list[tuple[int, Any]] = list(pool.map(once, range(runs)))

    codes = [code for code, _ in results]
    assert codes == [4] * runs, [(c, e[-300:]) for c, e in results if c != 4]
    assert all("not an integer id, got 'a'" in err for _, err in results)
