"""What every stage's CLI shares: logging set-up and turning domain errors into exit codes."""

from __future__ import annotations

import errno
import logging
import sys
from collections.abc import Callable
from typing import TypeVar

import typer

from contracts.errors import ProjectError
from pipelines.errors import DISK_FULL_ERRNOS, StorageError

T = TypeVar("T")

_FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"


def configure_logging(verbose: bool = False) -> None:
    """Configure root logging once, at a CLI entry point (never at import time)."""
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format=_FORMAT,
        stream=sys.stderr,
        force=True,
    )
    # urllib3 logs every retry at WARNING with the full URL; our client logs them itself.
    logging.getLogger("urllib3").setLevel(logging.ERROR)


def run(fn: Callable[[], T]) -> T:
    """Call a stage; a `ProjectError` becomes one clear line on stderr and its exit code.

    A full or read-only disk met outside the stages' own handling is `StorageError`'s line and
    exit code too, rather than a traceback.
    """
    try:
        return fn()
    except ProjectError as err:
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(code=err.exit_code) from err
    except OSError as err:
        if err.errno not in DISK_FULL_ERRNOS | {errno.EROFS}:
            raise
        storage = StorageError.from_os_error(err, err.filename or "the data directory")
        typer.echo(f"error: {storage}", err=True)
        raise typer.Exit(code=storage.exit_code) from err
    except KeyboardInterrupt as err:
        typer.echo("interrupted: nothing was published", err=True)
        raise typer.Exit(code=130) from err
