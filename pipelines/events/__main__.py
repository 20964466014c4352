"""`python -m pipelines.events serve` — the event sink (see `pipelines.events.sink`)."""

from __future__ import annotations

import gc
import logging
import sys
from pathlib import Path
from typing import Annotated

import typer
import uvloop
from aiohttp import web

from contracts.settings import DATA_DIR, EVENTS_PORT, LOOPBACK, MAX_REQUEST_BYTES
from pipelines.events import store
from pipelines.events.sink import SinkSettings, build_app

app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__)


@app.command()
def serve(
    host: Annotated[str, typer.Option(help="Address to bind (loopback by default).")] = LOOPBACK,
    port: Annotated[int, typer.Option(envvar=EVENTS_PORT.name, help="Port of the sink.")] = int(
        EVENTS_PORT.default
    ),
    data_dir: Annotated[
        Path,
        typer.Option(envvar=DATA_DIR.name, help="Events are written under DATA_DIR/events/."),
    ] = DATA_DIR.default_path,
    max_request_bytes: Annotated[
        int, typer.Option(envvar=MAX_REQUEST_BYTES.name, min=1, help="Largest body (else 413).")
    ] = int(MAX_REQUEST_BYTES.default),
    max_buffered: Annotated[
        int, typer.Option(min=1, help="Events held in memory at most (then 429).")
    ] = SinkSettings.max_buffered,
    flush_rows: Annotated[
        int, typer.Option(min=1, help="Write a kind's buffer when it holds this many events.")
    ] = SinkSettings.flush_rows,
    flush_seconds: Annotated[
        float, typer.Option(min=0.05, help="Write every buffer at least this often.")
    ] = SinkSettings.flush_seconds,
    feedback_rate: Annotated[
        float, typer.Option(min=0.01, help="Feedback requests per second per client.")
    ] = SinkSettings.feedback_rate,
    feedback_burst: Annotated[
        int, typer.Option(min=1, help="Feedback requests a client may send at once.")
    ] = SinkSettings.feedback_burst,
) -> None:
    """Accept KServe payload-logger CloudEvents and page feedback; write Parquet part files."""
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    settings = SinkSettings(
        data_dir=data_dir,
        max_request_bytes=max_request_bytes,
        max_buffered=max_buffered,
        flush_rows=flush_rows,
        flush_seconds=flush_seconds,
        feedback_rate=feedback_rate,
        feedback_burst=feedback_burst,
    )
    sink = build_app(settings)
    # The one-event-per-POST path (KServe's) is mostly the event loop's and the HTTP layer's own
    # cost: uvloop's is lower, and the garbage collector need not rescan the ~60k objects of the
    # imports (pydantic, pyarrow, aiohttp) at each full collection (`python -m bench events`).
    # A batch makes thousands of short-lived objects: collecting the youngest generation every
    # 20,000 allocations instead of 700 takes a tenth off the sink's CPU per event.
    store.prime()
    gc.collect()
    gc.freeze()
    gc.set_threshold(20_000, 20, 20)
    loop = uvloop.new_event_loop()
    web.run_app(sink, host=host, port=port, print=None, access_log=None, loop=loop)


@app.callback()
def _main() -> None:
    """The event sink of the prediction log and the page's feedback."""


if __name__ == "__main__":  # run the imported module, so loggers keep their names
    from pipelines.events.__main__ import app as _app

    _app(prog_name="python -m pipelines.events")
