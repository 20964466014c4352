"""What every stage's CLI shares: logging set-up and turning domain errors into exit codes."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from typing import TypeVar

import typer

from contracts.errors import ProjectError

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
    """Call a stage; a `ProjectError` becomes one clear line on stderr and its exit code."""
    try:
        return fn()
    except ProjectError as err:
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(code=err.exit_code) from err
    except KeyboardInterrupt as err:
        typer.echo("interrupted: nothing was published", err=True)
        raise typer.Exit(code=130) from err
