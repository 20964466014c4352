"""The package rules of docs/architecture.md, checked on the source (every import, lazy ones too).

- `contracts` imports nothing of the project, and only the standard library;
- `recommenders` imports only `contracts` of the project (it ships in the predictor image and
  inside every logged MLflow model);
- `model_server` and `localstack` never import `pipelines` (serving and the twin depend on the
  recommenders and the contracts, never on the batch stages);
- no package imports `tests` or `bench`.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PROJECT = {"contracts", "recommenders", "pipelines", "model_server", "localstack", "tmdb_sandbox"}
# what each package may import of the project (besides itself)
ALLOWED = {
    "contracts": set(),
    "recommenders": {"contracts"},
    "model_server": {"contracts", "recommenders"},
    "localstack": {"contracts"},
    "tmdb_sandbox": set(),
    "pipelines": {"contracts", "recommenders"},
}
# third-party packages `recommenders` may use: it must stay loadable with numpy, scipy, pandas
# (and MLflow for its pyfunc flavour only)
RECOMMENDERS_THIRD_PARTY = {"numpy", "scipy", "pandas", "mlflow", "pyarrow"}


def imports_of(package: str, root: Path = ROOT) -> dict[str, set[str]]:
    """Top-level module names each file of a package imports, lazy imports included."""
    found: dict[str, set[str]] = {}
    for path in sorted((root / package).rglob("*.py")):
        names: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                names.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names.add(node.module.split(".")[0])
        found[str(path.relative_to(root))] = names
    return found


def layer_violations(package: str, root: Path = ROOT) -> dict[str, list[str]]:
    """file -> project packages it imports that its layer does not allow."""
    wrong = {
        file: sorted((names & (PROJECT | {"tests", "bench"})) - ALLOWED[package] - {package})
        for file, names in imports_of(package, root).items()
    }
    return {file: names for file, names in wrong.items() if names}


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_packages_import_only_what_the_layering_allows(package: str) -> None:
    wrong = layer_violations(package)
    assert not wrong, f"{package} imports outside its layer: {wrong}"


def test_contracts_use_only_the_standard_library() -> None:
    outside = {
        file: sorted(n for n in names if n not in sys.stdlib_module_names and n != "contracts")
        for file, names in imports_of("contracts").items()
    }
    outside = {file: names for file, names in outside.items() if names}
    assert not outside, f"contracts must be standard library only: {outside}"


def test_recommenders_need_only_the_numeric_stack() -> None:
    allowed = RECOMMENDERS_THIRD_PARTY | {"contracts", "recommenders"}
    outside = {
        file: sorted(n for n in names if n not in sys.stdlib_module_names and n not in allowed)
        for file, names in imports_of("recommenders").items()
    }
    outside = {file: names for file, names in outside.items() if names}
    assert not outside, f"recommenders import more than the numeric stack: {outside}"


def test_the_checker_finds_a_lazy_forbidden_import(tmp_path: Path) -> None:
    package = tmp_path / "model_server"
    package.mkdir()
    (package / "ok.py").write_text("from recommenders import load\nimport numpy\n")
    (package / "bad.py").write_text(
        "def f():\n    from pipelines.features import load_features\n    return load_features\n"
    )
    assert layer_violations("model_server", tmp_path) == {"model_server/bad.py": ["pipelines"]}


def _pins(path: Path) -> dict[str, str]:
    pins = {}
    for line in path.read_text().splitlines():
        spec = line.split("#", 1)[0].strip()
        if "==" in spec:
            name, version = spec.split("==", 1)
            pins[name.lower()] = version.strip()
    return pins


def test_the_serving_lock_is_lean_and_agrees_with_the_main_lock() -> None:
    serving, full = _pins(ROOT / "requirements-serving.lock"), _pins(ROOT / "requirements.lock")
    assert {"kserve", "mlflow-skinny", "numpy", "scipy", "pandas", "pyarrow"} <= set(serving)
    for heavy in ("mlflow", "pytest", "ruff", "kubernetes-validate", "matplotlib", "pandera"):
        assert heavy not in serving, f"{heavy} is not needed to serve"
    assert {name: v for name, v in serving.items() if full.get(name) != v} == {}


def test_the_predictor_image_copies_only_the_serving_packages() -> None:
    dockerfile = (ROOT / "docker/model-server.Dockerfile").read_text()
    copied = {line.split()[1] for line in dockerfile.splitlines() if line.startswith("COPY ")}
    assert copied - {"--from=build"} == {
        "requirements-serving.lock",
        "contracts",
        "recommenders",
        "model_server",
    }
