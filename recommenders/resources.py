"""What a fit may use of the machine: memory it can still allocate, BLAS threads.

Standard library only on top of scipy (the recommenders ship in the predictor image, where no
fit ever runs, and must not grow dependencies for it):

- `available_memory`: bytes this process can still allocate without swapping — Linux's
  ``MemAvailable`` (what ``psutil.virtual_memory().available`` reports), capped by the memory
  cgroup's limit minus its working set (a pod's ``resources.limits.memory``);
- `single_threaded_blas`: scipy's OpenBLAS limited to one thread for a block. OpenBLAS 0.3.30's
  *threaded* Cholesky (``?potrf``, as bundled with scipy 1.17) writes past its per-thread work
  buffer when the matrix is large — measured on this project's 2-core machine: float32
  ``spotrf`` is killed by SIGSEGV (in ``sgemm_oncopy``, called from the threaded driver's
  ``inner_thread``) at 38,000 and 46,557 rows, not at 36,000, and never single-threaded (the
  single-threaded driver's blocking is independent of n). It is a buffer overrun in the
  threaded path, not 32-bit index arithmetic: 46,340² < 2³¹ < 46,341² changes nothing.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

_PROC_MEMINFO = Path("/proc/meminfo")
_PROC_MAPS = Path("/proc/self/maps")
_PROC_CGROUP = Path("/proc/self/cgroup")
_CGROUP_ROOT = Path("/sys/fs/cgroup")
# OpenBLAS thread-count symbols: plain, scipy's and numpy's bundled builds (as threadpoolctl)
_OPENBLAS_PREFIXES = ("", "scipy_")
_OPENBLAS_SUFFIXES = ("", "64_")


def available_memory() -> int | None:
    """Bytes this process can still allocate without swapping, or None when unknowable.

    The smaller of the kernel's ``MemAvailable`` and the memory cgroup's headroom (limit minus
    usage, reclaimable page cache not counted), so a container is judged by its own limit.
    """
    values = [v for v in (_meminfo_available(), _cgroup_headroom()) if v is not None]
    return min(values) if values else None


def _meminfo_available() -> int | None:
    try:
        for line in _PROC_MEMINFO.read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:  # no /proc (not Linux): free pages, a lower bound of what is available
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def _read_int(path: Path) -> int | None:
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None  # "max" (v2) means no limit


def _stat(path: Path, key: str) -> int:
    try:
        for line in path.read_text().splitlines():
            name, _, value = line.partition(" ")
            if name == key:
                return int(value)
    except (OSError, ValueError):
        pass
    return 0


def _cgroup_dir(mount: Path, rel: str) -> Path:
    """This process's cgroup directory; the mount itself when the path is the host's (a
    container without a cgroup namespace sees its own cgroup at the root of the mount)."""
    own = mount / rel
    return own if own.is_dir() else mount


def _cgroup_headroom() -> int | None:
    """Limit minus working set of this process's memory cgroup (v2, else v1), None if unlimited."""
    try:
        lines = _PROC_CGROUP.read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        _, controllers, rel = line.split(":", 2)
        rel = rel.lstrip("/")
        if controllers == "":  # cgroup v2: memory.max, memory.current
            base = _cgroup_dir(_CGROUP_ROOT, rel)
            limit, usage = _read_int(base / "memory.max"), _read_int(base / "memory.current")
            cache = _stat(base / "memory.stat", "inactive_file")
        elif "memory" in controllers.split(","):  # cgroup v1
            base = _cgroup_dir(_CGROUP_ROOT / "memory", rel)
            limit = _read_int(base / "memory.limit_in_bytes")
            usage = _read_int(base / "memory.usage_in_bytes")
            cache = _stat(base / "memory.stat", "total_inactive_file")
        else:
            continue
        if limit is None or usage is None or limit >= 1 << 60:  # v1 writes "no limit" as ~2⁶³
            return None
        return max(0, limit - max(0, usage - cache))
    return None


@dataclass(frozen=True)
class _OpenBLAS:
    """One loaded OpenBLAS library's thread-count functions (ctypes function pointers)."""

    path: str
    get: Any
    set: Any


def _loaded_openblas() -> list[_OpenBLAS]:
    """The OpenBLAS libraries mapped into this process (scipy's among them once it is used)."""
    try:
        maps = _PROC_MAPS.read_text()
    except OSError:
        return []
    paths = dict.fromkeys(
        line.split(maxsplit=5)[-1]
        for line in maps.splitlines()
        if "openblas" in line.rsplit("/", 1)[-1].lower() and ".so" in line
    )
    found = []
    for path in paths:
        try:
            lib = ctypes.CDLL(path, mode=getattr(os, "RTLD_NOLOAD", 0) | ctypes.RTLD_GLOBAL)
        except OSError:
            continue
        for prefix in _OPENBLAS_PREFIXES:
            for suffix in _OPENBLAS_SUFFIXES:
                get = getattr(lib, f"{prefix}openblas_get_num_threads{suffix}", None)
                set_ = getattr(lib, f"{prefix}openblas_set_num_threads{suffix}", None)
                if get is not None and set_ is not None:
                    get.restype = ctypes.c_int
                    set_.argtypes = [ctypes.c_int]
                    found.append(_OpenBLAS(path, get, set_))
                    break
            else:
                continue
            break
    return found


def scipy_uses_openblas() -> bool:
    """Whether scipy's LAPACK is OpenBLAS (the one whose threaded Cholesky needs a guard)."""
    import scipy

    try:
        config = scipy.show_config(mode="dicts")
        name = str(config["Build Dependencies"]["lapack"]["name"])
    except (KeyError, TypeError, ValueError):
        return True  # unknown: assume the common case, which the guard makes safe
    return "openblas" in name.lower()


@contextlib.contextmanager
def single_threaded_blas() -> Iterator[bool]:
    """Run the block with every loaded OpenBLAS at one thread; yields whether that was possible.

    The previous thread counts are restored afterwards. Yields False (and changes nothing) when
    no OpenBLAS thread control could be found, unless ``OPENBLAS_NUM_THREADS=1`` already holds.
    """
    import scipy.linalg.lapack  # noqa: F401 - maps scipy's OpenBLAS into the process

    libs = _loaded_openblas()
    if not libs:
        yield os.environ.get("OPENBLAS_NUM_THREADS") == "1"
        return
    previous = [(lib, int(lib.get())) for lib in libs]
    for lib, _ in previous:
        lib.set(1)
    try:
        yield True
    finally:
        for lib, threads in previous:
            lib.set(threads)
