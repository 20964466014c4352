"""The model artefact: a directory the model server loads with numpy and pandas only.

::

    <dir>/
      recommender.json   format_version, model_type, params, n_users, n_items, trained_on
      arrays.npz         item_ids, user_ids, seen_{indptr,indices,data}, popularity,
                         top_{cols,scores} (known users' top-k), model__<name>
      catalog.parquet    optional display fields (content_id, title, poster_path, ...)
      checksums.json     sha256 of each file above, written last

`load` refuses (with `ArtifactError` / `ArtifactCorruptError`) a directory with a missing file,
a checksum mismatch, an unknown format version or model type, or an array it cannot read;
arrays are read with ``allow_pickle=False``, so an artefact can never execute code.
"""

from __future__ import annotations

import hashlib
import json
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp

from contracts.files import sha256_file
from recommenders.base import FittedRecommender
from recommenders.errors import ArtifactCorruptError, ArtifactError
from recommenders.registry import FITTED

# 2: EASE stores B as CSR (model__B_indptr/B_indices/B_data) instead of a dense model__B.
# 3: top_cols/top_scores: every known user's precomputed top-k (batch inference at save).
FORMAT_VERSION = 3
METADATA = "recommender.json"
ARRAYS = "arrays.npz"
CATALOG = "catalog.parquet"
CHECKSUMS = "checksums.json"
_MODEL_PREFIX = "model__"


def save(model: FittedRecommender, directory: str | Path) -> Path:
    """Write ``model`` into ``directory`` (created if needed; existing artefact files replaced)."""
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    (out / CHECKSUMS).unlink(missing_ok=True)  # a half-rewritten artefact must not verify
    metadata = {
        "format_version": FORMAT_VERSION,
        "model_type": model.model_type,
        "params": model.params,
        "n_users": model.n_users,
        "n_items": model.n_items,
        "trained_on": model.trained_on,
    }
    (out / METADATA).write_text(json.dumps(metadata, indent=2, sort_keys=True, default=str) + "\n")
    arrays = {
        "item_ids": model.item_ids,
        "user_ids": model.user_ids,
        "seen_indptr": model.seen.indptr.astype(np.int64),
        "seen_indices": model.seen.indices.astype(np.int32),
        "seen_data": model.seen.data.astype(np.float32),
        "popularity": model.popularity,
    }
    # batch inference: known users' top-k, unless the model already carries it (read-only: the
    # model is not changed by being saved)
    top_cols, top_scores = model.precomputed or model.precompute_top()
    arrays.update({"top_cols": top_cols, "top_scores": top_scores})
    arrays.update({_MODEL_PREFIX + k: np.asarray(v) for k, v in model.arrays.items()})
    with (out / ARRAYS).open("wb") as fh:
        np.savez(fh, **arrays)
    files = [METADATA, ARRAYS]
    if model.catalog is not None:
        model.catalog.to_parquet(out / CATALOG, index=False)
        files.append(CATALOG)
    else:
        (out / CATALOG).unlink(missing_ok=True)
    checksums = {"files": {name: sha256_file(out / name) for name in files}}
    (out / CHECKSUMS).write_text(json.dumps(checksums, indent=2, sort_keys=True) + "\n")
    return out


def artifact_digest(directory: str | Path) -> str:
    """``sha256:<hex>`` over every file of an artefact directory (names and contents).

    Recorded on the registered version; any changed, added or removed file changes it.
    """
    root = Path(directory)
    lines = [
        f"{path.relative_to(root).as_posix()}\t{sha256_file(path)}\n"
        for path in sorted(p for p in root.rglob("*") if p.is_file())
    ]
    return "sha256:" + hashlib.sha256("".join(lines).encode()).hexdigest()


def verify_digest(directory: str | Path, expected: str) -> None:
    """Refuse an artefact whose files are not exactly the ones registered."""
    actual = artifact_digest(directory)
    if actual != expected:
        raise ArtifactCorruptError(
            f"model artefact {directory} has digest {actual}, not the {expected} recorded at "
            "registration: its files were changed after the version was registered"
        )


def _read_json(path: Path) -> dict[str, Any]:
    try:
        value = json.loads(path.read_text())
    except FileNotFoundError as err:
        raise ArtifactError(f"model artefact file {path} is missing") from err
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ArtifactCorruptError(f"model artefact file {path} is not valid JSON: {err}") from err
    if not isinstance(value, dict):
        raise ArtifactCorruptError(f"model artefact file {path} is not a JSON object")
    return value


def verify_artifact(directory: str | Path) -> dict[str, str]:
    """Check every file against ``checksums.json``; return the name -> sha256 map."""
    root = Path(directory)
    if not root.is_dir():
        raise ArtifactError(f"model artefact directory {root} does not exist")
    files = _read_json(root / CHECKSUMS).get("files")
    if not isinstance(files, dict) or METADATA not in files or ARRAYS not in files:
        raise ArtifactCorruptError(f"{root / CHECKSUMS} does not list {METADATA} and {ARRAYS}")
    for name, expected in files.items():
        path = root / name
        if "/" in name or not path.is_file():
            raise ArtifactError(f"model artefact file {path} is missing")
        if sha256_file(path) != expected:
            raise ArtifactCorruptError(
                f"model artefact file {path} does not match its checksum (corrupt or modified)"
            )
    return files


def load(directory: str | Path, verify: bool = True) -> FittedRecommender:
    """Read an artefact directory into the scoring object of its model type."""
    root = Path(directory)
    if verify:
        verify_artifact(root)
    metadata = _read_json(root / METADATA)
    version = metadata.get("format_version")
    if version != FORMAT_VERSION:
        older = (
            isinstance(version, int) and not isinstance(version, bool) and version < FORMAT_VERSION
        )
        hint = "; retrain the model to write the current format" if older else ""
        raise ArtifactError(
            f"{root / METADATA}: format_version {version!r} is not supported "
            f"(this code reads {FORMAT_VERSION}){hint}"
        )
    model_type = metadata.get("model_type")
    if model_type not in FITTED:
        raise ArtifactError(f"{root / METADATA}: unknown model_type {model_type!r}")
    try:
        with np.load(root / ARRAYS, allow_pickle=False) as npz:
            arrays = {name: npz[name] for name in npz.files}
    except FileNotFoundError as err:
        raise ArtifactError(f"model artefact file {root / ARRAYS} is missing") from err
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as err:
        raise ArtifactCorruptError(f"cannot read {root / ARRAYS}: {err}") from err
    try:
        item_ids, user_ids = arrays["item_ids"], arrays["user_ids"]
        seen = sp.csr_matrix(
            (arrays["seen_data"], arrays["seen_indices"], arrays["seen_indptr"]),
            shape=(len(user_ids), len(item_ids)),
        )
        popularity = arrays["popularity"]
        top_cols, top_scores = arrays["top_cols"], arrays["top_scores"]
        if (
            top_cols.ndim != 2
            or top_cols.shape != top_scores.shape
            or top_cols.shape[0] != len(user_ids)
            or (top_cols.size and int(top_cols.max()) >= len(item_ids))
        ):
            raise ValueError("top_cols/top_scores do not match the users and items")
    except (KeyError, ValueError) as err:
        raise ArtifactCorruptError(f"{root / ARRAYS} lacks or mangles an array: {err}") from err
    catalog = None
    if (root / CATALOG).is_file():
        try:
            catalog = pd.read_parquet(root / CATALOG)
        except Exception as err:  # pyarrow raises several unrelated types for a bad file
            raise ArtifactCorruptError(f"cannot read {root / CATALOG}: {err}") from err
    model_arrays = {
        k.removeprefix(_MODEL_PREFIX): v for k, v in arrays.items() if k.startswith(_MODEL_PREFIX)
    }
    try:
        return FITTED[model_type](
            params=metadata.get("params", {}),
            user_ids=user_ids,
            item_ids=item_ids,
            seen=seen,
            popularity=popularity,
            arrays=model_arrays,
            catalog=catalog,
            trained_on=metadata.get("trained_on"),
            precomputed=(top_cols, top_scores),
        )
    except KeyError as err:
        raise ArtifactCorruptError(f"{root / ARRAYS} lacks model array {err}") from err
