"""`python -m tmdb_sandbox`: serve the TMDB sandbox until SIGTERM / Ctrl-C.

Prints one line on stdout once it accepts connections, so scripts can read the URL::

    TMDB sandbox listening on http://127.0.0.1:PORT/3

The control API (``/__sandbox/faults``, ``/reset``, ``/stats``) takes a token of its own,
``--control-token`` / ``SANDBOX_CONTROL_TOKEN``; without one a random token is generated and
written to ``--control-token-file`` (created 0600) or, without that either, printed on a
second stdout line ``control token: ...``.
"""

from __future__ import annotations

import logging
import os
import secrets
import signal
import sys
import threading
from pathlib import Path
from types import FrameType
from typing import Annotated

import typer
from pydantic import ValidationError

from tmdb_sandbox.catalog import generate
from tmdb_sandbox.faults import Faults, parse_fault_spec
from tmdb_sandbox.server import Credentials, make_server

DEFAULT_TOKEN = "sandbox-token"
DEFAULT_API_KEY = "sandbox-api-key"

log = logging.getLogger("tmdb_sandbox")
app = typer.Typer(add_completion=False, help=__doc__.split("\n\n")[0])


@app.command()
def serve(
    host: Annotated[
        str, typer.Option(envvar="SANDBOX_HOST", help="Address to bind.")
    ] = "127.0.0.1",
    port: Annotated[
        int, typer.Option(envvar="SANDBOX_PORT", min=0, max=65535, help="0 picks a free port.")
    ] = 8000,
    movies: Annotated[int, typer.Option(min=0, help="Catalog size.")] = 8000,
    seed: Annotated[int, typer.Option(help="Catalog seed (same seed, same catalog).")] = 7,
    token: Annotated[
        str, typer.Option(envvar="SANDBOX_TOKEN", help="Accepted `Authorization: Bearer` token.")
    ] = DEFAULT_TOKEN,
    api_key: Annotated[
        str, typer.Option(envvar="SANDBOX_API_KEY", help="Accepted `api_key` query parameter.")
    ] = DEFAULT_API_KEY,
    control_token: Annotated[
        str,
        typer.Option(
            envvar="SANDBOX_CONTROL_TOKEN",
            help="Bearer token of the /__sandbox control API (default: a random one).",
            show_default=False,
        ),
    ] = "",
    control_token_file: Annotated[
        Path | None,
        typer.Option(dir_okay=False, help="Write the control token here (mode 0600)."),
    ] = None,
    fault: Annotated[
        list[str] | None,
        typer.Option(
            help="Scripted page fault PAGE:KIND[xTIMES][:k=v,...], repeatable, e.g. "
            "3:429x2:retry_after=1, 5:503, 7:slow:delay_ms=3000, 2:malformed:variant=missing_title,"
            " 4:shift:count=3, 6:bad_json, 8:drop."
        ),
    ] = None,
    faults_file: Annotated[
        Path | None, typer.Option(exists=True, dir_okay=False, help="Faults as JSON (see README).")
    ] = None,
    rate_429: Annotated[float, typer.Option(min=0, max=1, help="Share of random 429s.")] = 0.0,
    rate_5xx: Annotated[float, typer.Option(min=0, max=1, help="Share of random 5xx.")] = 0.0,
    slow_rate: Annotated[float, typer.Option(min=0, max=1, help="Share of slow answers.")] = 0.0,
    slow_ms: Annotated[int, typer.Option(min=0, help="Delay of a slow answer.")] = 2000,
    latency_ms: Annotated[int, typer.Option(min=0, help="Delay added to every page.")] = 0,
    fault_seed: Annotated[int, typer.Option(help="Seed of the random faults.")] = 0,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log every request.")] = False,
) -> None:
    """Serve TMDB's /3/movie/popular and /3/genre/movie/list over a generated catalog."""
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        base = Faults.model_validate_json(faults_file.read_text()) if faults_file else Faults()
        faults = Faults.model_validate(
            {
                **base.model_dump(),
                "scripted": [*base.scripted, *(parse_fault_spec(s) for s in fault or [])],
                "rate_429": rate_429 or base.rate_429,
                "rate_5xx": rate_5xx or base.rate_5xx,
                "slow_rate": slow_rate or base.slow_rate,
                "slow_ms": slow_ms,
                "latency_ms": latency_ms or base.latency_ms,
                "seed": fault_seed or base.seed,
            }
        )
    except (ValidationError, ValueError) as err:
        typer.echo(f"error: invalid faults: {err}", err=True)
        raise typer.Exit(code=2) from err

    control = control_token or secrets.token_urlsafe(24)
    if control in (token, api_key):
        typer.echo("error: the control token must differ from the TMDB token and api key", err=True)
        raise typer.Exit(code=2)
    if control_token_file is not None:
        _write_private(control_token_file, control)
    server = make_server(
        host,
        port,
        generate(movies, seed),
        Credentials(token, api_key),
        faults,
        control_token=control,
    )

    def _stop(signum: int, _frame: FrameType | None) -> None:
        log.info("signal %d: shutting down", signum)
        # shutdown() waits for serve_forever() to return, so it must not run on its thread.
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    typer.echo(f"TMDB sandbox listening on {server.base_url}")
    if not control_token and control_token_file is None:
        typer.echo(f"control token: {control}")
    try:
        server.serve_forever(poll_interval=0.2)
    finally:
        server.server_close()
    log.info("stopped")


def _write_private(path: Path, secret: str) -> None:
    """Write ``secret`` to ``path``, readable by this user only (replacing an older file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.unlink(missing_ok=True)  # a file someone else made, or 0644, is not reused
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(secret + "\n")


if __name__ == "__main__":
    app()
