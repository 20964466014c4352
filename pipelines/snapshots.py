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

Reading trusts nothing on disk: a garbled manifest or ``latest`` (random bytes, a directory in
its place), a manifest that lists no files or does not cover every file of its directory, and a
file whose size or sha256 differs are all `SnapshotCorruptError` (exit 3) naming the file;
`list` shows such a snapshot as corrupt and lists the others. A write the disk refuses (full,
read-only) is `StorageError` (exit 12): the staging directory and temporary files are removed
and ``latest`` is left as it was. Two writers publishing the same id with identical files both
succeed (content-derived ids, e.g. two identical ``features build`` at once); the same id with
different files is refused, as snapshots are immutable.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import re
import shutil
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from contracts.files import atomic_write_bytes, atomic_write_json, fsync_dir, pid_alive, sha256_file
from contracts.layout import LATEST, MANIFEST, read_pointer
from pipelines.errors import (
    SnapshotCorruptError,
    SnapshotNotFoundError,
    StorageError,
    format_bytes,
    is_storage_failure,
)

log = logging.getLogger(__name__)

_STAGING_PREFIX = ".staging-"
# what a snapshot id (and so the content of `latest`) may look like: one safe path component
_SNAPSHOT_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
_SHA256 = re.compile(r"[0-9a-f]{64}")


def _is_id(value: str) -> bool:
    """One safe path component that is not the pointer's own name."""
    return bool(_SNAPSHOT_ID.fullmatch(value)) and value != LATEST


def utc_now() -> datetime:
    return datetime.now(UTC)


def isoformat(ts: datetime) -> str:
    return ts.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@dataclass(frozen=True)
class SnapshotInfo:
    """One published snapshot as `list` shows it; ``problem`` says why it is corrupt, if it is."""

    snapshot_id: str
    path: Path
    published_at: datetime
    is_latest: bool
    manifest: dict[str, Any]
    problem: str | None = None


@dataclass(frozen=True)
class Published:
    """What `SnapshotStore.publish` did: ``created`` is False when an identical snapshot of the
    same id was already there (another writer published the same content first)."""

    path: Path
    created: bool


def _reason(err: BaseException) -> str:
    """A short human reason for a read failure (no traceback, no repr noise)."""
    if isinstance(err, IsADirectoryError):
        return "a directory, not a file"
    if isinstance(err, UnicodeDecodeError):
        return "not text (undecodable bytes)"
    if isinstance(err, json.JSONDecodeError):
        return f"not valid JSON ({err.msg} at line {err.lineno} column {err.colno})"
    if isinstance(err, OSError):
        return err.strerror or str(err)
    return str(err)


def _check_manifest(doc: Any, file: Path) -> dict[str, Any]:
    """The manifest, if it has the shape every reader relies on; else `SnapshotCorruptError`."""
    if not isinstance(doc, dict):
        raise SnapshotCorruptError(f"{file} is not a manifest (a JSON {type(doc).__name__})")
    files = doc.get("files")
    if not isinstance(files, dict) or not files:
        raise SnapshotCorruptError(f"{file} lists no files: an empty snapshot cannot be verified")
    for name, meta in files.items():
        if (
            not isinstance(name, str)
            or name.startswith("/")
            or ".." in name.split("/")
            or not isinstance(meta, dict)
            or not isinstance(meta.get("sha256"), str)
            or not _SHA256.fullmatch(meta["sha256"])
            or not isinstance(meta.get("bytes"), int)
        ):
            raise SnapshotCorruptError(f"{file}: entry {name!r} is not a file name, sha256, bytes")
    return doc


class SnapshotStore:
    """A directory of immutable snapshots of one kind (raw crawls, feature sets, ...)."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    # -- reading -------------------------------------------------------------------------

    def latest_id(self) -> str | None:
        """The id `latest` points at, or None when nothing was published yet.

        A pointer that cannot be read as one snapshot id (a directory, random bytes, a path) is
        `SnapshotCorruptError`; ``restore VERSION`` rewrites it.
        """
        pointer = self.root / LATEST
        try:
            value = read_pointer(self.root)
        except (OSError, UnicodeDecodeError) as err:
            raise SnapshotCorruptError(
                f"{pointer} is unreadable ({_reason(err)}); `restore VERSION` rewrites it"
            ) from err
        if value is not None and not _is_id(value):
            raise SnapshotCorruptError(
                f"{pointer} does not hold a snapshot id (it holds {value[:40]!r}); "
                "`restore VERSION` rewrites it"
            )
        return value

    def exists(self, snapshot_id: str) -> bool:
        """Whether a snapshot directory of that id was published (corrupt or not)."""
        return _is_id(snapshot_id) and (self.root / snapshot_id).is_dir()

    def resolve(self, snapshot_id: str | None = None) -> Path:
        """Path of a named snapshot, or of `latest` when no name is given."""
        what = snapshot_id or self.latest_id()
        if what is None:
            raise SnapshotNotFoundError(
                f"no snapshot in {self.root} yet (nothing was published; run the stage first)"
            )
        if not _is_id(what):
            raise SnapshotNotFoundError(f"invalid snapshot id {what!r}")
        path = self.root / what
        if not path.is_dir():
            known = ", ".join(info.snapshot_id for info in self.list()[-5:]) or "none"
            where = f"{self.root}/latest names it, but it is" if snapshot_id is None else "it is"
            raise SnapshotNotFoundError(
                f"snapshot {what!r} not found in {self.root} ({where} not there; recent: {known})"
            )
        return path

    def _manifest(self, path: Path) -> dict[str, Any]:
        file = path / MANIFEST
        try:
            doc = json.loads(file.read_bytes())
        except FileNotFoundError as err:
            raise SnapshotCorruptError(f"{file} is missing") from err
        except (OSError, ValueError) as err:  # a directory, unreadable, undecodable, not JSON
            raise SnapshotCorruptError(f"{file} is unreadable: {_reason(err)}") from err
        return _check_manifest(doc, file)

    def read_manifest(self, snapshot_id: str | None = None) -> dict[str, Any]:
        """The manifest of a snapshot (checked for shape, not against the files)."""
        return self._manifest(self.resolve(snapshot_id))

    def _check_files(self, path: Path, manifest: dict[str, Any], *, hashes: bool) -> None:
        """Every file listed and present, nothing unlisted, sizes (and sha256s) as recorded."""
        listed: dict[str, dict[str, Any]] = manifest["files"]
        present = sorted(
            p.relative_to(path).as_posix()
            for p in path.rglob("*")
            if not p.is_dir() and p.relative_to(path).as_posix() != MANIFEST
        )
        extra = [name for name in present if name not in listed]
        if extra:
            raise SnapshotCorruptError(
                f"{path / extra[0]} is in the snapshot but not in its manifest"
                + (f" (and {len(extra) - 1} more)" if len(extra) > 1 else "")
            )
        for name, meta in listed.items():
            file = path / name
            if not file.is_file():
                raise SnapshotCorruptError(f"{file} is listed in the manifest but missing")
            size = file.stat().st_size
            if size != meta["bytes"]:
                raise SnapshotCorruptError(
                    f"{file}: {size} bytes, the manifest records {meta['bytes']}"
                )
            if hashes:
                actual = sha256_file(file)
                if actual != meta["sha256"]:
                    raise SnapshotCorruptError(
                        f"{file}: sha256 {actual[:12]}… does not match manifest "
                        f"{meta['sha256'][:12]}…"
                    )

    def verify(self, snapshot_id: str | None = None) -> dict[str, Any]:
        """Check every file against the manifest's checksums; return the manifest."""
        path = self.resolve(snapshot_id)
        manifest = self._manifest(path)
        self._check_files(path, manifest, hashes=True)
        return manifest

    def list(self) -> list[SnapshotInfo]:
        """Published snapshots, oldest first; a corrupt one is listed with its ``problem``.

        Each is checked cheaply (manifest shape, the set of files, their sizes), not hashed:
        `verify` does that.
        """
        if not self.root.is_dir():
            return []
        try:
            latest = self.latest_id()
        except SnapshotCorruptError:
            latest = None  # shown by the caller via `latest_id`; the snapshots are still listed
        infos = []
        for child in self.root.iterdir():
            if child.name.startswith(".") or child.name == LATEST or not child.is_dir():
                continue
            manifest: dict[str, Any] = {}
            problem = None
            try:
                manifest = self._manifest(child)
                self._check_files(child, manifest, hashes=False)
            except SnapshotCorruptError as err:
                problem = str(err)
            stamp = child / MANIFEST if (child / MANIFEST).is_file() else child
            infos.append(
                SnapshotInfo(
                    snapshot_id=child.name,
                    path=child,
                    published_at=datetime.fromtimestamp(stamp.stat().st_mtime, UTC),
                    is_latest=child.name == latest,
                    manifest=manifest,
                    problem=problem,
                )
            )
        return sorted(infos, key=lambda i: (i.published_at, i.snapshot_id))

    # -- writing -------------------------------------------------------------------------

    def set_latest(self, snapshot_id: str) -> None:
        """Atomically point `latest` at an existing snapshot.

        A directory standing where the pointer belongs (never written by this store) is removed
        first, so `restore` repairs that corruption too.
        """
        self.resolve(snapshot_id)
        pointer = self.root / LATEST
        if pointer.is_dir() and not pointer.is_symlink():
            log.warning(
                "removing the directory %s, which stands where the pointer belongs", pointer
            )
            shutil.rmtree(pointer)
        try:
            atomic_write_bytes(pointer, f"{snapshot_id}\n".encode())
        except OSError as err:
            if is_storage_failure(err):
                raise StorageError.from_os_error(
                    err, pointer, what=f"latest was left as it was, not moved to {snapshot_id}"
                ) from err
            raise
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
        """A private directory to write a snapshot into; removed if the block raises.

        A write the disk refuses inside the block becomes `StorageError` (exit 12).
        """
        path = self.root / f"{_STAGING_PREFIX}{snapshot_id}-{os.getpid()}"
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            self.remove_dead_staging()
            shutil.rmtree(path, ignore_errors=True)
            path.mkdir()
            yield path
        except BaseException as err:
            shutil.rmtree(path, ignore_errors=True)
            if is_storage_failure(err):
                raise StorageError.from_os_error(err, path, what="nothing was published") from err
            raise

    def write_files(self, staging_dir: Path, files: Mapping[str, bytes]) -> None:
        """Write serialised files into a staging directory, once they are known to fit.

        Serialising first means a full disk is reported with the space needed and free before
        anything is written; a write refused anyway (another writer took the space) is still
        `StorageError` naming the file.
        """
        needed = sum(len(data) for data in files.values())
        free = shutil.disk_usage(staging_dir).free
        snapshot = staging_dir.name.removeprefix(_STAGING_PREFIX).rsplit("-", 1)[0]
        if needed > free:
            raise StorageError(
                f"disk full: snapshot {snapshot} needs {format_bytes(needed)} in {self.root}, "
                f"{format_bytes(free)} free; nothing was published"
            )
        for name, data in files.items():
            target = staging_dir / name
            try:
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(data)
            except OSError as err:
                if is_storage_failure(err):
                    raise StorageError.from_os_error(
                        err, target, needed, what="nothing was published"
                    ) from err
                raise

    def publish(
        self,
        staging_dir: Path,
        snapshot_id: str,
        manifest: dict[str, Any],
        *,
        move_latest: bool = True,
    ) -> Published:
        """Checksum, fsync and rename a staged snapshot into place, then move `latest`.

        The manifest gets a ``files`` entry (name -> sha256, bytes) for every file staged.
        Snapshots are never overwritten: when the id already exists with the very same files
        (another writer published the same content first) the staged copy is dropped and the
        result says ``created=False``; with different files it is an error.
        """
        if not _is_id(snapshot_id):
            raise ValueError(f"invalid snapshot id {snapshot_id!r}")
        final = self.root / snapshot_id
        files: dict[str, dict[str, Any]] = {}
        try:
            for file in sorted(p for p in staging_dir.rglob("*") if p.is_file()):
                rel = file.relative_to(staging_dir).as_posix()
                if rel == MANIFEST:
                    continue
                with file.open("rb") as fh:
                    os.fsync(fh.fileno())
                files[rel] = {"sha256": sha256_file(file), "bytes": file.stat().st_size}
            if not files:
                raise ValueError(f"nothing was staged in {staging_dir}: a snapshot needs files")
            if final.exists():
                return self._adopt(final, staging_dir, files, move_latest)
            full = {**manifest, "snapshot_id": snapshot_id, "files": files}
            atomic_write_json(staging_dir / MANIFEST, full)
            fsync_dir(staging_dir)
            try:
                os.rename(staging_dir, final)
            except OSError as err:
                if err.errno in (errno.EEXIST, errno.ENOTEMPTY):  # lost a race to publish it
                    return self._adopt(final, staging_dir, files, move_latest)
                raise
            fsync_dir(self.root)
        except OSError as err:
            if is_storage_failure(err):
                raise StorageError.from_os_error(
                    err, staging_dir / MANIFEST, what="nothing was published"
                ) from err
            raise
        log.info("published %s", final)
        if move_latest:
            self.set_latest(snapshot_id)
        return Published(final, created=True)

    def _adopt(
        self,
        final: Path,
        staging_dir: Path,
        files: dict[str, dict[str, Any]],
        move_latest: bool,
    ) -> Published:
        """Keep an already published snapshot when its files are exactly the ones staged."""
        existing = self._manifest(final)
        if existing["files"] != files:
            raise FileExistsError(
                f"snapshot {final.name} already exists with different files; "
                "snapshots are immutable"
            )
        shutil.rmtree(staging_dir, ignore_errors=True)
        log.info("snapshot %s is already published with identical files; keeping it", final.name)
        if move_latest:
            self.set_latest(final.name)
        return Published(final, created=False)
