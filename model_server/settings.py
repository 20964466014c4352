"""Flags and environment -> one frozen `Settings`.

The parser extends KServe's own (``kserve.model_server.parser``, as KServe's custom-predictor
examples do), so every KServe flag keeps its meaning; this server changes some defaults so that
several instances can run side by side on one machine and the logs stay readable:

=========================== ============================== =====================================
flag                        default                        meaning
=========================== ============================== =====================================
``--model_name``            ``$MODEL_NAME`` or             name in the URL paths and metrics
                            ``movie-recommender``
``--model_dir``             ``/mnt/models``                the artefact directory (where KServe
                                                           mounts STORAGE_URI)
``--model_uri``             —                              ``models:/<name>/<version>`` or
                                                           ``models:/<name>@<alias>``, fetched
                                                           from ``$MLFLOW_TRACKING_URI``
``--model_version``         ``$MODEL_VERSION``             version reported in ``X-Model-Version``
``--host``                  ``$MODEL_SERVER_HOST`` or      address the HTTP and gRPC servers bind
                            ``127.0.0.1``                  (KServe itself binds 0.0.0.0 and
                                                           [::]); a container in a cluster must
                                                           pass ``0.0.0.0``
``--http_port``             ``8080`` (KServe)              HTTP port (V1 and V2 REST)
``--enable_grpc``           ``false`` (KServe: true)       also serve V2 gRPC on ``--grpc_port``
``--grpc_port``             ``8081`` (KServe)              gRPC port
``--enable_latency_logging````false`` (KServe: true)       a log line per request with timings
``--access_log``            ``errors``                     uvicorn access lines: ``errors``
                                                           (status >= 400 only), ``all``, ``off``
``--model_cache_dir``       ``$MODEL_CACHE_DIR`` or        where ``--model_uri`` downloads go;
                            ``<tmp>/movie-mlops-models-    created 0700, refused if another user
                            <uid>``                        owns it or others may write to it
``--max_request_bytes``     ``$MAX_REQUEST_BYTES`` or      a larger body is refused with 413
                            ``1048576`` (1 MiB)            before it is read (gRPC: the largest
                                                           message received)
``--request_read_timeout``  ``10`` seconds                 a client still sending its request
                                                           (headers or body) after this is
                                                           answered 408 and disconnected
``--limit_concurrency``     ``64``                         connections + requests in progress;
                                                           past it a request is answered 503
``--fault_error_rate``      ``$MODEL_SERVER_FAULT_``       TESTS/DEMOS ONLY: share (0..1) of
                            ``ERROR_RATE`` or ``0``        inference requests answered 500
``--fault_latency_ms``      ``$MODEL_SERVER_FAULT_``       TESTS/DEMOS ONLY: delay added to every
                            ``LATENCY_MS`` or ``0``        inference request (`model_server.faults`)
=========================== ============================== =====================================

The limits (`model_server.limits`) bound what one client can cost: without them a stream of
50 MB bodies took the predictor from 296 MB to 1,011 MB, past the dev overlay's 512 Mi limit.

The served version is ``--model_version`` / ``$MODEL_VERSION`` if given, else the registered
version of ``--model_uri``, else what the artefact says about itself
(`model_server.model.artifact_version`: ``trained_on.model_version``, ``run-<run_id>``, or a
hash of its checksums). ``--workers`` must stay 1: the model is loaded in this process.

gRPC is off unless asked for: the local stack starts one server per revision on a free HTTP
port, where one fixed ``--grpc_port`` would collide, and in the cluster KServe exposes one port
per predictor (HTTP here, which carries V1 and V2 REST).
"""

from __future__ import annotations

import argparse
import os
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

from contracts.settings import (
    FAULT_ERROR_RATE,
    FAULT_LATENCY_MS,
    MAX_REQUEST_BYTES,
    MLFLOW_TRACKING_URI,
    MODEL_DIGEST,
    MODEL_NAME,
    MODEL_SERVER_HOST,
    MODEL_VERSION,
)
from model_server.limits import DEFAULT_LIMIT_CONCURRENCY, DEFAULT_READ_TIMEOUT_S

DEFAULT_MODEL_DIR = Path("/mnt/models")


def default_cache_dir() -> Path:
    """``<tmp>/movie-mlops-models-<uid>``: one cache per user (`model_server.source` checks it).

    Not under ``$HOME``: a pod's user often has none and only ``/tmp`` is writable.
    """
    return Path(tempfile.gettempdir()) / f"movie-mlops-models-{os.getuid()}"


class AccessLog(str, Enum):
    """Which uvicorn access-log lines are written."""

    ERRORS = "errors"  # only responses with status >= 400
    ALL = "all"
    OFF = "off"


@dataclass(frozen=True)
class Settings:
    """Everything the server needs, parsed once in `main`."""

    model_name: str
    model_dir: Path | None
    model_uri: str | None
    model_version: str | None
    model_digest: str | None  # the artefact must have exactly this digest (MODEL_DIGEST)
    host: str
    http_port: int
    grpc_port: int
    enable_grpc: bool
    max_threads: int
    max_asyncio_workers: int | None
    event_loop: str
    timeout_keep_alive: int
    enable_latency_logging: bool
    access_log: AccessLog
    access_log_format: str | None
    configure_logging: bool
    log_config_file: str | None
    tracking_uri: str
    cache_dir: Path
    max_request_bytes: int
    request_read_timeout: float
    limit_concurrency: int
    fault_error_rate: float = 0.0  # tests and demos only (`model_server.faults`)
    fault_latency_ms: float = 0.0  # tests and demos only


def build_parser(environ: Mapping[str, str]) -> argparse.ArgumentParser:
    """KServe's parser plus this server's flags (defaults from ``environ``)."""
    from kserve.model_server import parser as kserve_parser

    parser = argparse.ArgumentParser(
        prog="python -m model_server",
        description="Serve a movie-mlops recommender artefact with KServe (V1 and V2 protocols).",
        parents=[kserve_parser],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    source = parser.add_mutually_exclusive_group()
    source.add_argument(
        "--model_dir",
        type=Path,
        default=None,
        help=f"artefact directory (default {DEFAULT_MODEL_DIR}, where KServe mounts STORAGE_URI)",
    )
    source.add_argument(
        "--model_uri",
        default=None,
        help="models:/<name>/<version> or models:/<name>@<alias>, via MLFLOW_TRACKING_URI",
    )
    parser.add_argument(
        "--model_version",
        default=MODEL_VERSION.get(environ) or None,
        help="version to report (env MODEL_VERSION; else from --model_uri or the artefact)",
    )
    parser.add_argument(
        "--model_digest",
        default=MODEL_DIGEST.get(environ) or None,
        help="refuse to serve unless the artefact's digest is this (env MODEL_DIGEST)",
    )
    parser.add_argument(
        "--host",
        default=MODEL_SERVER_HOST.get(environ),
        help="address the HTTP and gRPC servers bind (env MODEL_SERVER_HOST); 0.0.0.0 in a pod",
    )
    parser.add_argument(
        "--access_log",
        type=AccessLog,
        choices=list(AccessLog),
        default=AccessLog.ERRORS,
        help="uvicorn access-log lines to write",
    )
    parser.add_argument(
        "--model_cache_dir",
        type=Path,
        default=Path(environ.get("MODEL_CACHE_DIR") or default_cache_dir()),
        help="download cache for --model_uri (env MODEL_CACHE_DIR); private to this user",
    )
    parser.add_argument(
        "--max_request_bytes",
        type=int,
        default=MAX_REQUEST_BYTES.get(environ),  # a string: argparse applies `type` to it
        help="largest request body read (env MAX_REQUEST_BYTES); larger ones get 413 unread",
    )
    parser.add_argument(
        "--request_read_timeout",
        type=float,
        default=DEFAULT_READ_TIMEOUT_S,
        help="seconds a client may take to send one request (headers and body); then 408",
    )
    parser.add_argument(
        "--limit_concurrency",
        type=int,
        default=DEFAULT_LIMIT_CONCURRENCY,
        help="connections and requests in progress at most; past it a request gets 503",
    )
    parser.add_argument(
        "--fault_error_rate",
        type=float,
        default=FAULT_ERROR_RATE.get(environ) or 0.0,
        help="TESTS/DEMOS ONLY: share 0..1 of inference requests answered 500 "
        "(env MODEL_SERVER_FAULT_ERROR_RATE)",
    )
    parser.add_argument(
        "--fault_latency_ms",
        type=float,
        default=FAULT_LATENCY_MS.get(environ) or 0.0,
        help="TESTS/DEMOS ONLY: delay added to every inference request "
        "(env MODEL_SERVER_FAULT_LATENCY_MS)",
    )
    parser.set_defaults(
        model_name=MODEL_NAME.get(environ),
        enable_grpc=False,
        enable_latency_logging=False,
    )
    return parser


def parse_settings(argv: Sequence[str], environ: Mapping[str, str]) -> Settings:
    """Parse flags (exits with a usage message on a bad one, like every argparse CLI)."""
    parser = build_parser(environ)
    args = parser.parse_args(list(argv))
    if args.workers != 1:
        parser.error("--workers must be 1: the model is loaded once, in this process")
    if args.http_port == args.grpc_port and args.enable_grpc:
        parser.error("--http_port and --grpc_port must differ")
    for flag in ("max_request_bytes", "request_read_timeout", "limit_concurrency"):
        if getattr(args, flag) <= 0:
            parser.error(f"--{flag} must be positive")
    if not 0.0 <= args.fault_error_rate <= 1.0:
        parser.error("--fault_error_rate must be in 0..1")
    if args.fault_latency_ms < 0:
        parser.error("--fault_latency_ms must not be negative")
    model_dir = args.model_dir
    if model_dir is None and args.model_uri is None:
        model_dir = DEFAULT_MODEL_DIR
    return Settings(
        model_name=args.model_name,
        model_dir=model_dir,
        model_uri=args.model_uri,
        model_version=args.model_version,
        model_digest=args.model_digest,
        host=args.host,
        http_port=args.http_port,
        grpc_port=args.grpc_port,
        enable_grpc=args.enable_grpc,
        max_threads=args.max_threads,
        max_asyncio_workers=args.max_asyncio_workers,
        event_loop=args.event_loop,
        timeout_keep_alive=args.timeout_keep_alive,
        enable_latency_logging=args.enable_latency_logging,
        access_log=args.access_log,
        access_log_format=args.access_log_format,
        configure_logging=args.configure_logging,
        log_config_file=args.log_config_file,
        tracking_uri=MLFLOW_TRACKING_URI.get(environ),
        cache_dir=args.model_cache_dir,
        max_request_bytes=args.max_request_bytes,
        request_read_timeout=args.request_read_timeout,
        limit_concurrency=args.limit_concurrency,
        fault_error_rate=float(args.fault_error_rate),
        fault_latency_ms=float(args.fault_latency_ms),
    )
