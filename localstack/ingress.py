"""Local twin of the cluster's ingress: Knative's routing plus the front end's nginx.

One process on 127.0.0.1:8080 that runs the `localstack.controller` (KServe's controller twin)
and **routes** ``/v1/models/<name>…`` to a revision by weighted random choice per request (Knative's
tag routing too: a ``Host`` starting with ``latest-`` or ``prev-`` pins that revision), and
serves the built front end with its runtime ``/config.json``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from pathlib import Path
from typing import Annotated

import aiohttp
import typer
from aiohttp import web

from contracts.settings import INGRESS_PORT, LOCAL_ROOT, LOOPBACK, MLFLOW_TRACKING_URI
from localstack.controller import Controller

log = logging.getLogger(__name__)

_HOP_HEADERS = {"host", "content-length", "connection", "keep-alive", "transfer-encoding"}


# -- HTTP ----------------------------------------------------------------------------------


def _json_error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


def _unavailable(controller: Controller, tried: set[str]) -> web.Response:
    """503 with what to do: nothing deployed yet, or every revision down right now."""
    if not controller.revisions:
        return _json_error(
            503,
            f"no ready revision of {controller.isvc_name}: deploy one with "
            "`python -m pipelines.rollout canary --version N` (see `make status`)",
        )
    response = _json_error(
        503,
        f"no revision of {controller.isvc_name} is ready right now"
        + (f" ({', '.join(sorted(tried))} refused the connection)" if tried else "")
        + "; the controller is restarting it — see `make status`",
    )
    response.headers["Retry-After"] = "1"
    return response


def build_app(controller: Controller, frontend_dist: Path, poster_base_url: str) -> web.Application:
    app = web.Application(client_max_size=8 * 1024 * 1024)
    session_key = web.AppKey("session", aiohttp.ClientSession)
    controller_task_key = web.AppKey("controller", asyncio.Task)

    async def on_startup(app: web.Application) -> None:
        app[session_key] = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=256, keepalive_timeout=30),
            timeout=aiohttp.ClientTimeout(total=60),
            auto_decompress=False,
        )
        app[controller_task_key] = asyncio.create_task(controller.run())

    async def on_cleanup(app: web.Application) -> None:
        app[controller_task_key].cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await app[controller_task_key]
        await app[session_key].close()
        controller.shutdown()

    async def proxy(request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"].split(":", 1)[0]
        if name != controller.isvc_name:
            return _json_error(404, f"Model with name {name} does not exist.")
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _HOP_HEADERS}
        body = await request.read()
        tried: set[str] = set()
        while True:
            revision = controller.routing.choose(request.host, exclude=tried)
            if revision is None:
                return _unavailable(controller, tried)
            try:
                async with request.app[session_key].request(
                    request.method, f"{revision.url}{request.path_qs}", data=body, headers=headers
                ) as upstream:
                    payload = await upstream.read()
                    out = {
                        k: v for k, v in upstream.headers.items() if k.lower() not in _HOP_HEADERS
                    }
                break
            except aiohttp.ServerTimeoutError as err:
                return _json_error(504, f"revision {revision.name} did not answer in time: {err}")
            except (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError):
                # the revision died before answering: a prediction is a pure function of the
                # request and the immutable artefact, so another ready revision can answer it
                controller.mark_unreachable(revision)
                tried.add(revision.name)
            except aiohttp.ClientError as err:
                return _json_error(502, f"revision {revision.name} did not answer: {err}")
        out["X-Revision"] = revision.name
        return web.Response(status=upstream.status, body=payload, headers=out)

    async def health(_: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def status(_: web.Request) -> web.Response:
        path = controller.layout.status_file
        body = json.loads(path.read_text()) if path.is_file() else {"status": None}
        return web.json_response(body)

    async def config(_: web.Request) -> web.Response:
        return web.json_response(
            {"posterBaseUrl": poster_base_url, "modelName": controller.isvc_name}
        )

    async def page(request: web.Request) -> web.StreamResponse:
        root = frontend_dist.resolve()
        rel = request.match_info.get("path", "") or "index.html"
        target = (root / rel).resolve()
        if not target.is_relative_to(root) or not target.is_file():
            target = root / "index.html"  # single-page app: unknown paths get the page
        if not target.is_file():
            return web.Response(
                status=503,
                text="The front end is not built yet: run `make frontend` (or `make demo`).\n",
            )
        return web.FileResponse(target)

    app.router.add_get("/healthz", health)
    app.router.add_get("/__local/status", status)
    app.router.add_get("/config.json", config)
    app.router.add_route("*", "/v1/models/{name}", proxy)
    app.router.add_route("*", "/v1/models/{name}/{rest:.*}", proxy)
    app.router.add_get("/", page)
    app.router.add_get("/{path:.*}", page)
    app.on_startup.append(on_startup)
    app.on_cleanup.append(on_cleanup)
    return app


def main(
    host: Annotated[str, typer.Option(help="Address to bind (loopback by default).")] = LOOPBACK,
    port: Annotated[int, typer.Option(help="Port of the ingress.")] = int(INGRESS_PORT.default),
    root: Annotated[
        Path, typer.Option(help="Local stack state directory.")
    ] = LOCAL_ROOT.default_path,
    mlflow_url: Annotated[str, typer.Option(help="MLflow server.")] = MLFLOW_TRACKING_URI.default,
    poster_base_url: Annotated[
        str, typer.Option(help="Poster image base URL the page is told to use.")
    ] = "https://image.tmdb.org/t/p",
    frontend_dist: Annotated[Path, typer.Option(help="Built front end.")] = Path("frontend/dist"),
) -> None:
    """Serve the page and the predict route; reconcile the local InferenceService."""
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)-7s %(name)s: %(message)s"
    )
    controller = Controller(root, mlflow_url)
    app = build_app(controller, frontend_dist, poster_base_url)
    web.run_app(app, host=host, port=port, print=None, access_log=None)


if __name__ == "__main__":  # run the imported module, so loggers keep their names
    from localstack.ingress import main as _main

    typer.run(_main)
