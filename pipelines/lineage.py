"""Where an artefact came from: the code version every stage records next to its output."""

from __future__ import annotations

import os
import subprocess
from importlib import metadata
from pathlib import Path

_REPO = Path(__file__).resolve().parents[1]


def git_sha() -> str:
    """$GIT_SHA (images are built with it) or the checkout's HEAD; "unknown" outside both."""
    if sha := os.environ.get("GIT_SHA"):
        return sha
    try:
        out = subprocess.run(
            ["git", "-C", str(_REPO), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return out.stdout.strip() or "unknown"


def code_version() -> dict[str, str | None]:
    """Package version and git sha, as manifests record them."""
    try:
        package = metadata.version("movie-mlops")
    except metadata.PackageNotFoundError:
        package = None
    return {"package": package, "git_sha": git_sha()}
