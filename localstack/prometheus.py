"""The local Prometheus: Debian's ``prometheus`` server with a config generated under .local.

``make up`` starts it as the service ``prometheus`` on ``127.0.0.1:$PROMETHEUS_PORT`` (9090),
storage in ``.local/prometheus/data`` kept for a day, scraping every 2 s (the cluster's
kube-prometheus-stack scrapes every 30 s; the local twin is fast so a canary is judged in
seconds):

================ ============================================================= ===================
job              targets                                                       target labels
================ ============================================================= ===================
``model-server`` every running revision (file_sd ``targets/model-server.json``, ``revision``,
                 replaced atomically by `localstack.controller`)                ``model_version``
``ingress``      the ingress's loopback-only ``/__local/metrics``
``event-sink``   ``$EVENTS_URL/metrics`` (down until the sink runs)
================ ============================================================= ===================

The predictor's own series carry ``model_version`` too (``honor_labels``: the series' labels
win), so the same PromQL works here and on a cluster, where a PodMonitor finds the pods.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from urllib.parse import urlsplit

from contracts.files import atomic_write_bytes, atomic_write_json
from contracts.layout import StackLayout
from contracts.monitoring import JOB_EVENTS, JOB_INGRESS, JOB_MODEL_SERVER

SCRAPE_INTERVAL = "2s"
RETENTION = "1d"
INGRESS_METRICS_PATH = "/__local/metrics"  # localstack.ingress: loopback clients only
BINARY_CANDIDATES = ("prometheus", "/usr/bin/prometheus")


def binary() -> str | None:
    """The Prometheus server's path, or None when it is not installed (`make prometheus`)."""
    for candidate in BINARY_CANDIDATES:
        found = shutil.which(candidate)
        if found:
            return found
    return None


def config(layout: StackLayout, ingress: str, events_url: str) -> dict[str, object]:
    """The scrape configuration (``ingress``: ``host:port``; ``events_url``: the sink's URL)."""
    events = urlsplit(events_url)
    return {
        "global": {
            "scrape_interval": SCRAPE_INTERVAL,
            "scrape_timeout": "1s",
            "evaluation_interval": SCRAPE_INTERVAL,
        },
        "scrape_configs": [
            {
                "job_name": JOB_MODEL_SERVER,
                "honor_labels": True,
                "file_sd_configs": [
                    {"files": [str(layout.revision_targets.resolve())], "refresh_interval": "5s"}
                ],
            },
            {
                "job_name": JOB_INGRESS,
                "metrics_path": INGRESS_METRICS_PATH,
                "static_configs": [{"targets": [ingress]}],
            },
            {
                "job_name": JOB_EVENTS,
                "scheme": events.scheme or "http",
                "metrics_path": f"{events.path.rstrip('/')}/metrics",
                "static_configs": [{"targets": [events.netloc]}],
            },
        ],
    }


def prepare(layout: StackLayout, ingress: str, events_url: str) -> Path:
    """Write the config (and an empty target list if none yet); return the config's path."""
    targets = layout.revision_targets
    targets.parent.mkdir(parents=True, exist_ok=True)
    (layout.prometheus / "data").mkdir(parents=True, exist_ok=True)
    if not targets.is_file():
        atomic_write_json(targets, [])
    path = layout.prometheus / "prometheus.yml"  # JSON is YAML
    text = json.dumps(config(layout, ingress, events_url), indent=2) + "\n"
    atomic_write_bytes(path, text.encode())
    return path


def argv(layout: StackLayout, host: str, port: int, config_file: Path) -> list[str]:
    exe = binary()
    if exe is None:
        raise FileNotFoundError("prometheus")
    return [
        exe,
        f"--config.file={config_file.resolve()}",
        f"--storage.tsdb.path={(layout.prometheus / 'data').resolve()}",
        f"--storage.tsdb.retention.time={RETENTION}",
        f"--web.listen-address={host}:{port}",
        "--log.level=warn",
    ]
