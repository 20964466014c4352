"""SnapshotStore: atomic publish, the `latest` pointer, verification, immutability, cleanup."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest

from pipelines.errors import SnapshotCorruptError, SnapshotNotFoundError
from pipelines.snapshots import SnapshotStore


def publish(store: SnapshotStore, snapshot_id: str, content: str = "x", **kwargs) -> None:
    with store.staging(snapshot_id) as staging:
        (staging / "data.txt").write_text(content)
        (staging / "sub").mkdir()
        (staging / "sub" / "more.json").write_text(json.dumps({"id": snapshot_id}))
        store.publish(staging, snapshot_id, {"kind": "test"}, **kwargs)


def test_publish_writes_files_manifest_and_moves_latest(tmp_path):
    store = SnapshotStore(tmp_path)

    publish(store, "snap-1", "hello")

    assert store.latest_id() == "snap-1"
    manifest = store.read_manifest()
    assert manifest["kind"] == "test"
    assert manifest["snapshot_id"] == "snap-1"
    assert set(manifest["files"]) == {"data.txt", "sub/more.json"}
    assert manifest["files"]["data.txt"]["bytes"] == 5
    assert (store.resolve() / "data.txt").read_text() == "hello"
    assert store.verify()["snapshot_id"] == "snap-1"


def test_latest_follows_the_newest_publish_and_list_shows_all(tmp_path):
    store = SnapshotStore(tmp_path)
    publish(store, "snap-1")
    publish(store, "snap-2")

    infos = store.list()

    assert [i.snapshot_id for i in infos] == ["snap-1", "snap-2"]
    assert [i.is_latest for i in infos] == [False, True]
    assert store.latest_id() == "snap-2"


def test_publish_without_moving_latest_and_set_latest_back(tmp_path):
    store = SnapshotStore(tmp_path)
    publish(store, "snap-1")
    publish(store, "snap-2", move_latest=False)

    assert store.latest_id() == "snap-1"
    store.set_latest("snap-2")
    assert store.latest_id() == "snap-2"
    with pytest.raises(SnapshotNotFoundError):
        store.set_latest("missing")
    assert store.latest_id() == "snap-2"


def test_snapshots_are_immutable(tmp_path):
    store = SnapshotStore(tmp_path)
    publish(store, "snap-1", "first")

    with pytest.raises(FileExistsError, match="immutable"):
        publish(store, "snap-1", "second")

    assert (store.resolve("snap-1") / "data.txt").read_text() == "first"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".staging-")]


def test_verify_detects_a_changed_or_missing_file(tmp_path):
    store = SnapshotStore(tmp_path)
    publish(store, "snap-1", "original")
    path = store.resolve("snap-1")

    (path / "data.txt").write_text("tampered")
    with pytest.raises(SnapshotCorruptError, match="does not match"):
        store.verify("snap-1")
    (path / "data.txt").unlink()
    with pytest.raises(SnapshotCorruptError, match="missing"):
        store.verify("snap-1")


def test_nothing_published_yet_is_a_clear_error(tmp_path):
    store = SnapshotStore(tmp_path / "empty")

    assert store.latest_id() is None
    assert store.list() == []
    with pytest.raises(SnapshotNotFoundError, match="nothing was published"):
        store.resolve()
    with pytest.raises(SnapshotNotFoundError, match="invalid snapshot id"):
        store.resolve("../etc")


def test_failed_write_leaves_no_staging_and_no_snapshot(tmp_path):
    store = SnapshotStore(tmp_path)
    publish(store, "snap-1")

    def failing_writer() -> None:
        with store.staging("snap-2") as staging:
            (staging / "data.txt").write_text("half")
            raise RuntimeError("writer failed")

    with pytest.raises(RuntimeError, match="writer failed"):
        failing_writer()

    assert store.latest_id() == "snap-1"
    assert [i.snapshot_id for i in store.list()] == ["snap-1"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".staging-")]


def test_staging_of_a_dead_writer_is_removed_and_never_listed(tmp_path):
    store = SnapshotStore(tmp_path)
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    )
    dead_pid = int(dead.stdout)
    abandoned = tmp_path / f".staging-snap-0-{dead_pid}"
    abandoned.mkdir(parents=True)
    (abandoned / "manifest.json").write_text("{}")
    alive = tmp_path / ".staging-snap-x-1"  # pid 1 is alive: someone else is writing
    alive.mkdir()

    assert store.list() == []
    publish(store, "snap-1")

    assert not abandoned.exists()
    assert alive.exists()
    assert [i.snapshot_id for i in store.list()] == ["snap-1"]


# -- corruption: every garbled piece of stored state is SnapshotCorruptError naming the file ----

GARBLES = {
    "random bytes": lambda p: p.write_bytes(bytes(range(256)) * 4),
    "not JSON": lambda p: p.write_text("{'files': oops"),
    "a JSON list": lambda p: p.write_text("[1, 2, 3]"),
    "an empty file map": lambda p: p.write_text('{"kind": "test", "files": {}}'),
    "a bad file entry": lambda p: p.write_text('{"files": {"data.txt": {"sha256": "x"}}}'),
    "a directory": lambda p: (p.unlink(), p.mkdir()),
    "missing": lambda p: p.unlink(),
}


@pytest.mark.parametrize("garble", sorted(GARBLES))
def test_a_garbled_manifest_is_corrupt_and_list_shows_it_among_the_rest(tmp_path, garble):
    store = SnapshotStore(tmp_path)
    publish(store, "snap-1")
    publish(store, "snap-2")
    publish(store, "snap-3")
    manifest = tmp_path / "snap-2" / "manifest.json"
    GARBLES[garble](manifest)

    with pytest.raises(SnapshotCorruptError, match=re.escape(str(manifest))):
        store.verify("snap-2")
    with pytest.raises(SnapshotCorruptError, match=re.escape(str(manifest))):
        store.read_manifest("snap-2")
    infos = {info.snapshot_id: info for info in store.list()}
    assert sorted(infos) == ["snap-1", "snap-2", "snap-3"]
    assert infos["snap-2"].problem and str(manifest) in infos["snap-2"].problem
    assert infos["snap-1"].problem is None and infos["snap-3"].is_latest
    assert store.verify("snap-3")["snapshot_id"] == "snap-3"


def test_a_manifest_must_cover_every_file_of_its_snapshot(tmp_path):
    store = SnapshotStore(tmp_path)
    publish(store, "snap-1")
    extra = tmp_path / "snap-1" / "sub" / "planted.bin"
    extra.write_bytes(b"not in the manifest")

    with pytest.raises(
        SnapshotCorruptError, match=re.escape(f"{extra} is in the snapshot but not in")
    ):
        store.verify("snap-1")
    assert store.list()[0].problem is not None
    extra.unlink()
    (tmp_path / "snap-1" / "data.txt").write_text("x but longer")  # size differs: list sees it
    assert "bytes, the manifest records 1" in (store.list()[0].problem or "")


@pytest.mark.parametrize(
    "garble",
    ["random bytes", "a directory", "a path", "two lines", "empty"],
)
def test_a_garbled_latest_pointer_is_corrupt_and_restore_rewrites_it(tmp_path, garble):
    store = SnapshotStore(tmp_path)
    publish(store, "snap-1")
    pointer = tmp_path / "latest"
    if garble == "random bytes":
        pointer.write_bytes(b"\xff\xfe\x00garbage\x81")
    elif garble == "a directory":
        pointer.unlink()
        (pointer / "inner").mkdir(parents=True)
    elif garble == "a path":
        pointer.write_text("../../etc\n")
    elif garble == "two lines":
        pointer.write_text("snap-1\nsnap-2\n")
    else:
        pointer.write_text("\n")  # an empty pointer is "nothing published yet"
        assert store.latest_id() is None
        return

    with pytest.raises(SnapshotCorruptError, match=re.escape(str(pointer))):
        store.latest_id()
    with pytest.raises(SnapshotCorruptError, match=re.escape(str(pointer))):
        store.resolve()
    assert [i.snapshot_id for i in store.list()] == ["snap-1"]  # still lists the snapshots
    store.set_latest("snap-1")
    assert store.latest_id() == "snap-1"
    assert pointer.is_file()


# -- two writers of the same content ---------------------------------------------------------


def test_two_writers_of_identical_content_both_succeed_and_one_snapshot_remains(tmp_path):
    first, second = SnapshotStore(tmp_path), SnapshotStore(tmp_path)
    with first.staging("fs-1") as a, second.staging("fs-1-other") as b:
        for staged in (a, b):
            (staged / "data.txt").write_text("same bytes")
        won = first.publish(a, "fs-1", {"kind": "test"})
        lost = second.publish(b, "fs-1", {"kind": "test"})

    assert won.created and not lost.created and won.path == lost.path
    assert [i.snapshot_id for i in first.list()] == ["fs-1"]
    assert first.latest_id() == "fs-1" and first.verify("fs-1")
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".staging-")]
