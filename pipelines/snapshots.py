"""Immutable snapshots, published atomically, with a movable `latest` pointer.

Layout of a store (e.g. ``DATA_DIR/raw`` or ``DATA_DIR/features``)::

    <root>/
      <snapshot-id>/          one immutable snapshot: data files + manifest.json
      latest                  text file holding the id of the current snapshot
      .staging-<id>-<pid>/    work in progress; never read, removed when its writer is dead

A snapshot is written into a staging directory, its files are fsync'ed, a manifest with the
SHA-256 of every file is written last, and the directory is renamed into place (``rename`` is
atomic on POSIX). Only then is ``latest`` replaced, by writing a temporary file and
``os.replace``-ing it. A ``kill -9`` at any moment therefore leaves either the old state or the
new one, never a half-written snapshot behind ``latest``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from contracts.files import atomic_write_bytes, atomic_write_json, fsync_dir, pid_alive, sha256_file
from contracts.layout import LATEST, MANIFEST, read_pointer
from pipelines.errors import SnapshotCorruptError, SnapshotNotFoundError

log = logging.getLogger(__name__)

_STAGING_PREFIX = ".staging-"


def utc_now() -> datetime:
    return datetime.now(UTC)


def isoformat(ts: datetime) -> str:
    return ts.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@dataclass(frozen=True)
class SnapshotInfo:
    """One published snapshot as `list` shows it."""

    snapshot_id: str
    path: Path
    published_at: datetime
    is_latest: bool
    manifest: dict[str, Any]


class SnapshotStore:
    """A directory of immutable snapshots of one kind (raw crawls, feature sets, ...)."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    # -- reading -------------------------------------------------------------------------

    def latest_id(self) -> str | None:
        """The id `latest` points at, or None when nothing was published yet."""
        return read_pointer(self.root)

    def exists(self, snapshot_id: str) -> bool:
        return (self.root / snapshot_id / MANIFEST).is_file()

    def resolve(self, snapshot_id: str | None = None) -> Path:
        """Path of a named snapshot, or of `latest` when no name is given."""
        what = snapshot_id or self.latest_id()
        if what is None:
            raise SnapshotNotFoundError(
                f"no snapshot in {self.root} yet (nothing was published; run the stage first)"
            )
        if "/" in what or what.startswith("."):
            raise SnapshotNotFoundError(f"invalid snapshot id {what!r}")
        path = self.root / what
        if not (path / MANIFEST).is_file():
            known = ", ".join(info.snapshot_id for info in self.list()[-5:]) or "none"
            raise SnapshotNotFoundError(
                f"snapshot {what!r} not found in {self.root} (recent: {known})"
            )
        return path

    def read_manifest(self, snapshot_id: str | None = None) -> dict[str, Any]:
        return json.loads((self.resolve(snapshot_id) / MANIFEST).read_text())

    def verify(self, snapshot_id: str | None = None) -> dict[str, Any]:
        """Check every file against the manifest's checksums; return the manifest."""
        path = self.resolve(snapshot_id)
        manifest = json.loads((path / MANIFEST).read_text())
        for name, meta in manifest.get("files", {}).items():
            file = path / name
            if not file.is_file():
                raise SnapshotCorruptError(f"{file} is listed in the manifest but missing")
            actual = sha256_file(file)
            if actual != meta["sha256"]:
                raise SnapshotCorruptError(
                    f"{file}: sha256 {actual[:12]}… does not match manifest {meta['sha256'][:12]}…"
                )
        return manifest

    def list(self) -> list[SnapshotInfo]:
        """Published snapshots, oldest first."""
        if not self.root.is_dir():
            return []
        latest = self.latest_id()
        infos = []
        for child in self.root.iterdir():
            manifest_path = child / MANIFEST
            if child.name.startswith(".") or not manifest_path.is_file():
                continue
            infos.append(
                SnapshotInfo(
                    snapshot_id=child.name,
                    path=child,
                    published_at=datetime.fromtimestamp(manifest_path.stat().st_mtime, UTC),
                    is_latest=child.name == latest,
                    manifest=json.loads(manifest_path.read_text()),
                )
            )
        return sorted(infos, key=lambda i: (i.published_at, i.snapshot_id))

    # -- writing -------------------------------------------------------------------------

    def set_latest(self, snapshot_id: str) -> None:
        """Atomically point `latest` at an existing snapshot."""
        self.resolve(snapshot_id)
        atomic_write_bytes(self.root / LATEST, f"{snapshot_id}\n".encode())
        log.info("%s/latest -> %s", self.root, snapshot_id)

    def remove_dead_staging(self) -> None:
        """Delete staging directories whose writer process no longer runs (e.g. after kill -9)."""
        if not self.root.is_dir():
            return
        for child in self.root.iterdir():
            if not child.name.startswith(_STAGING_PREFIX):
                continue
            pid_text = child.name.rsplit("-", 1)[-1]
            if pid_text.isdigit() and not pid_alive(int(pid_text)):
                log.info("removing abandoned staging directory %s", child)
                shutil.rmtree(child, ignore_errors=True)

    @contextlib.contextmanager
    def staging(self, snapshot_id: str) -> Iterator[Path]:
        """A private directory to write a snapshot into; removed if the block raises."""
        self.root.mkdir(parents=True, exist_ok=True)
        self.remove_dead_staging()
        path = self.root / f"{_STAGING_PREFIX}{snapshot_id}-{os.getpid()}"
        shutil.rmtree(path, ignore_errors=True)
        path.mkdir()
        try:
            yield path
        except BaseException:
            shutil.rmtree(path, ignore_errors=True)
            raise

    def publish(
        self,
        staging_dir: Path,
        snapshot_id: str,
        manifest: dict[str, Any],
        *,
        move_latest: bool = True,
    ) -> Path:
        """Checksum, fsync and rename a staged snapshot into place, then move `latest`.

        The manifest gets a ``files`` entry (name -> sha256, bytes) for every file staged.
        Publishing an id that already exists is an error: snapshots are never overwritten.
        """
        final = self.root / snapshot_id
        if final.exists():
            raise FileExistsError(f"snapshot {snapshot_id} already exists; snapshots are immutable")
        files: dict[str, dict[str, Any]] = {}
        for file in sorted(p for p in staging_dir.rglob("*") if p.is_file()):
            rel = file.relative_to(staging_dir).as_posix()
            if rel == MANIFEST:
                continue
            with file.open("rb") as fh:
                os.fsync(fh.fileno())
            files[rel] = {"sha256": sha256_file(file), "bytes": file.stat().st_size}
        full = {**manifest, "snapshot_id": snapshot_id, "files": files}
        atomic_write_json(staging_dir / MANIFEST, full)
        fsync_dir(staging_dir)
        os.rename(staging_dir, final)
        fsync_dir(self.root)
        log.info("published %s", final)
        if move_latest:
            self.set_latest(snapshot_id)
        return final
