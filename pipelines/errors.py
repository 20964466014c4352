"""Domain errors of the batch stages.

Every error a user can cause or meet carries the process exit code the CLIs return for it,
so a CronJob's status (and a shell script) can tell a bad credential from a flaky network.
The mapping lives on the classes; `pipelines.cli.run` is the one place that applies it (to
every `contracts.errors.ProjectError`, the recommenders' errors included).
"""

from __future__ import annotations

import errno
import shutil
from pathlib import Path

from contracts.errors import ProjectError

# errno values that mean "this disk cannot take the write", whatever the file
DISK_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})
NOT_WRITABLE_ERRNOS = frozenset({errno.EROFS, errno.EACCES, errno.EPERM})


class PipelineError(ProjectError):
    """Base class: a failure with a message meant for the person running the stage."""

    exit_code: int = 1


class ConfigError(PipelineError):
    """Flags or environment are invalid (exit 2, like a usage error)."""

    exit_code = 2


class SnapshotNotFoundError(PipelineError):
    """A named or `latest` snapshot does not exist."""

    exit_code = 3


class SnapshotCorruptError(PipelineError):
    """A snapshot or its ``latest`` pointer is unreadable or does not match its manifest.

    Garbled or missing manifests, a manifest that does not cover every file of its directory
    (or lists none), files whose size or sha256 differ, a ``latest`` that is not a snapshot id.
    """

    exit_code = 3


class StorageError(PipelineError):
    """The disk is full or not writable (exit 12); nothing half-written is left behind.

    `from_os_error` builds the one line a user sees: what could not be written, and for a full
    disk how much space was needed (when known) and how much is free.
    """

    exit_code = 12

    @classmethod
    def from_os_error(
        cls, err: OSError, path: Path | str, needed: int | None = None, *, what: str = ""
    ) -> StorageError:
        """The error for an ``OSError`` met while writing ``path`` (``needed`` bytes, if known)."""
        path = Path(err.filename) if err.filename else Path(path)
        if err.errno in DISK_FULL_ERRNOS:
            parts = [] if needed is None else [f"{format_bytes(needed)} needed"]
            free = _free_bytes(path)
            if free is not None:
                parts.append(f"{format_bytes(free)} free")
            detail = f"disk full writing {path}" + (f" ({', '.join(parts)})" if parts else "")
        elif err.errno in NOT_WRITABLE_ERRNOS:
            detail = f"{path} is not writable ({err.strerror})"
        else:
            detail = f"cannot write {path}: {err.strerror or err}"
        return cls(detail + (f"; {what}" if what else ""))


def is_storage_failure(err: BaseException) -> bool:
    """Whether an exception is a write the disk refused (full, quota, read-only, no access)."""
    return isinstance(err, OSError) and err.errno in DISK_FULL_ERRNOS | NOT_WRITABLE_ERRNOS


def format_bytes(n: float) -> str:
    """``1536`` -> ``1.5 KB``: sizes in messages (decimal units, as ``df -H`` shows them)."""
    if n < 1000:
        return f"{n:.0f} B"
    for unit in ("KB", "MB", "GB"):
        n /= 1000
        if n < 1000:
            return f"{n:.1f} {unit}"
    return f"{n / 1000:.1f} TB"


def _free_bytes(path: Path) -> int | None:
    """Free bytes on the file system holding ``path`` (its nearest existing ancestor)."""
    for candidate in (path, *path.parents):
        try:
            return shutil.disk_usage(candidate).free
        except OSError:
            continue
    return None


class InputValidationError(PipelineError):
    """An input batch failed validation; nothing was published.

    `report` holds the human-readable table of failing rows and reasons.
    """

    exit_code = 4

    def __init__(self, message: str, report: str = "") -> None:
        super().__init__(message if not report else f"{message}\n{report}")
        self.report = report


class TMDBPermanentError(PipelineError):
    """TMDB answered with a status that retrying cannot fix (400, 401, 404)."""

    exit_code = 5


class TMDBAuthError(TMDBPermanentError):
    """The TMDB credential was rejected (401) or none was given."""

    exit_code = 6


class TMDBUnavailableError(PipelineError):
    """A page still failed after all retries (429/5xx/timeouts/connection errors)."""

    exit_code = 7


class TrackingUnavailableError(PipelineError):
    """The MLflow tracking server could not be reached after bounded retries."""

    exit_code = 8


class TrackingRejectedError(PipelineError):
    """The MLflow server answered and refused a call (a bad request, a missing version)."""

    exit_code = 11


class QualityGateError(PipelineError):
    """A newly trained version is worse than `champion` beyond the tolerance."""

    exit_code = 9


class RolloutError(PipelineError):
    """A canary, promote or rollback step could not be carried out."""

    exit_code = 10


class StackDownError(RolloutError):
    """The local stack (its controller) is not running: nothing can be observed or changed."""
