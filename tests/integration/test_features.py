"""Feature snapshots built from a real crawl of the sandbox, or from a real interaction log."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from pipelines.features import FeatureSettings, build_features, load_features
from pipelines.simulator import SimulatorParams
from pipelines.snapshots import SnapshotStore

pytestmark = pytest.mark.integration
REPO_ROOT = Path(__file__).resolve().parents[2]


def run_features(data_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "DATA_DIR"}
    return subprocess.run(
        [sys.executable, "-m", "pipelines.features", *args, "--data-dir", str(data_dir)]
        if args and args[0] in {"build", "list"}
        else [sys.executable, "-m", "pipelines.features", *args],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.fixture
def data_dir(raw_data_dir: Path, tmp_path: Path) -> Path:
    """A private copy of the session's crawled DATA_DIR (raw snapshot only)."""
    target = tmp_path / "data"
    shutil.copytree(raw_data_dir / "raw", target / "raw")
    return target


def test_build_from_crawl_publishes_catalog_interactions_plot_and_lineage(data_dir: Path) -> None:
    proc = run_features(data_dir, "build", "--users", "300", "--seed", "7")
    assert proc.returncode == 0, proc.stderr
    store = SnapshotStore(data_dir / "features")
    version = store.latest_id()
    assert version is not None and version in proc.stdout
    manifest = store.verify(version)
    raw_id = (data_dir / "raw" / "latest").read_text().strip()
    assert manifest["source"]["raw_snapshot"] == raw_id
    assert manifest["source"]["generator"] == {
        "mode": "default",
        "generator_version": 2,
        "seed": 7,
        "users": 300,
        "mean_items": 25.0,
        "days": 90,
    }
    assert set(manifest["files"]) == {
        "catalog.parquet",
        "interactions.parquet",
        "rating_vs_watch.png",
    }
    snapshot = load_features(data_dir)
    catalog, interactions = snapshot.catalog, snapshot.interactions
    raw_movies = pd.read_parquet(data_dir / "raw" / raw_id / "movies.parquet")
    assert len(catalog) == len(raw_movies) == manifest["row_counts"]["catalog"]
    assert set(interactions["content_id"]) <= set(catalog["content_id"])
    assert interactions["user_id"].nunique() == 300
    # genre names come from the crawl's genres.json, in the crawl's language
    assert all(isinstance(g, str) and g for names in catalog["genres"] for g in names)
    assert (store.resolve(version) / "rating_vs_watch.png").read_bytes()[:4] == b"\x89PNG"


def test_same_inputs_same_version_and_bytes(data_dir: Path, tmp_path: Path) -> None:
    other = tmp_path / "other"
    shutil.copytree(data_dir / "raw", other / "raw")
    params = SimulatorParams(seed=3, users=200)
    first = build_features(FeatureSettings(data_dir=data_dir, simulator=params))
    second = build_features(FeatureSettings(data_dir=other, simulator=params))
    assert first.version == second.version
    for name in ("catalog.parquet", "interactions.parquet", "rating_vs_watch.png", "manifest.json"):
        assert (first.path / name).read_bytes() == (second.path / name).read_bytes(), name
    # rebuilding in place changes nothing and only repoints latest
    again = build_features(FeatureSettings(data_dir=data_dir, simulator=params))
    assert again.version == first.version and not again.created
    different = build_features(
        FeatureSettings(data_dir=data_dir, simulator=SimulatorParams(seed=4, users=200))
    )
    assert different.version != first.version


def test_list_and_restore_move_latest_between_immutable_snapshots(data_dir: Path) -> None:
    a = build_features(
        FeatureSettings(data_dir=data_dir, simulator=SimulatorParams(seed=1, users=50))
    )
    b = build_features(
        FeatureSettings(data_dir=data_dir, simulator=SimulatorParams(seed=2, users=50))
    )
    listing = run_features(data_dir, "list")
    assert listing.returncode == 0
    assert a.version in listing.stdout and f"* {b.version}" in listing.stdout
    before = (a.path / "interactions.parquet").read_bytes()
    proc = run_features(data_dir, "restore", a.version, "--data-dir", str(data_dir))
    assert proc.returncode == 0, proc.stderr
    assert SnapshotStore(data_dir / "features").latest_id() == a.version
    assert (a.path / "interactions.parquet").read_bytes() == before
    missing = run_features(data_dir, "restore", "fs-doesnotexist", "--data-dir", str(data_dir))
    assert missing.returncode != 0 and "not found" in missing.stderr


def test_real_log_without_any_tmdb_snapshot(tmp_path: Path) -> None:
    log = tmp_path / "ratings.csv"
    log.write_text(
        "user_id,content_id,rating,timestamp\n"
        "1,550,4.5,881250949\n1,680,3.0,881250950\n2,550,5.0,881250951\n2,13,2.0,881250952\n"
    )
    data_dir = tmp_path / "data"
    proc = run_features(data_dir, "build", "--interactions", str(log))
    assert proc.returncode == 0, proc.stderr
    snapshot = load_features(data_dir)
    catalog, interactions, manifest = snapshot.catalog, snapshot.interactions, snapshot.manifest
    assert manifest["source"]["raw_snapshot"] is None
    assert manifest["source"]["interactions_file"]["name"] == "ratings.csv"
    assert sorted(catalog["content_id"]) == [13, 550, 680]
    assert catalog["title"].isna().all()  # kept with what is known: the id
    assert interactions["watch_seconds"].isna().all()
    assert interactions["timestamp"].iloc[0] == pd.Timestamp(881250949, unit="s", tz="UTC")


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (
            "user_id,content_id,rating\n1,10,4\n1,20,42\n",
            ["row        2", "in_range(0, 10)", "rating"],
        ),
        ("user_id,content_id,rating\n1,10,4\nx,20,3\n", ["row        2", "user_id", "'x'"]),
        ("user_id,content_id,rating\n1,10,4\n1,10,4\n", ["duplicate row"]),
        ("user_id,content_id,rating\n1,10,\n", ["needs watch_seconds or rating"]),
        ("user_id,rating\n1,4\n", ["missing required column(s) ['content_id']"]),
        ("user_id,content_id\n1,4\n", ["at least one of watch_seconds, rating"]),
        ("user_id,content_id,rating\n", ["no rows"]),
    ],
)
def test_invalid_logs_are_rejected_with_a_report_and_nothing_is_published(
    tmp_path: Path, content: str, expected: list[str]
) -> None:
    log = tmp_path / "log.csv"
    log.write_text(content)
    data_dir = tmp_path / "data"
    proc = run_features(data_dir, "build", "--interactions", str(log))
    assert proc.returncode == 4, proc.stderr
    assert "nothing was published" in proc.stderr or "error:" in proc.stderr
    for fragment in expected:
        assert fragment in proc.stderr
    assert SnapshotStore(data_dir / "features").list() == []
    assert not (data_dir / "features" / "latest").exists()


def test_without_a_raw_snapshot_the_simulator_says_what_to_do(tmp_path: Path) -> None:
    proc = run_features(tmp_path / "empty", "build")
    assert proc.returncode == 3
    assert "no snapshot" in proc.stderr and "run the stage first" in proc.stderr


def test_kill_9_mid_build_leaves_latest_intact_and_a_rerun_completes(data_dir: Path) -> None:
    old = build_features(FeatureSettings(data_dir=data_dir, simulator=SimulatorParams(users=20)))
    store = SnapshotStore(data_dir / "features")
    # a big simulated population keeps the writer busy long enough to be killed mid-way
    argv = [sys.executable, "-m", "pipelines.features", "build", "--data-dir", str(data_dir),
            "--users", "60000", "--mean-items", "40", "--seed", "99"]  # fmt: skip
    proc = subprocess.Popen(argv, cwd=REPO_ROOT, stderr=subprocess.PIPE, text=True)
    assert proc.stderr is not None
    deadline = time.monotonic() + 60
    for line in proc.stderr:  # kill while the simulator runs, before anything is published
        if "simulated" in line or time.monotonic() > deadline:
            break
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=10)
    assert store.latest_id() == old.version
    assert [i.snapshot_id for i in store.list()] == [old.version]
    rerun = subprocess.run(
        [*argv[:-6], "--users", "500", "--seed", "99"], cwd=REPO_ROOT, capture_output=True,
        text=True, timeout=120,
    )  # fmt: skip
    assert rerun.returncode == 0, rerun.stderr
    assert store.latest_id() not in (None, old.version)
    assert not [p for p in (data_dir / "features").iterdir() if p.name.startswith(".staging")]
    assert (
        json.loads((store.resolve() / "manifest.json").read_text())["row_counts"]["interactions"]
        > 0
    )
