"""Offline evaluation of the recommenders: one holdout split, every model, one table.

Protocol
--------
1. Duplicate (user, content) rows are merged first (watch seconds summed, the highest rating,
   the latest timestamp), so an item is never both "seen in train" and "to be found in test".
2. Per-user holdout, seeded. Users with fewer than ``min_user_interactions`` (default 4)
   interactions stay entirely in train (they still shape the models, they are not scored).
   For every other user ``round(25%)`` (at least 1) of their interactions are held out:

   - ``time``: the user's latest interactions (by ``timestamp``, ties by content id) — what a
     deployed model faces: predicting the future from the past;
   - ``random``: a seeded random subset (the "stratified random 75/25 split" of the published
     MovieLens benchmarks);
   - ``auto`` (default): ``time`` when every row has a timestamp, ``random`` otherwise.
3. Each model is fitted on train; for every evaluated user it ranks the whole item universe
   minus the user's train items (`recommend_many`, ``exclude_seen=True``) and the top k are
   compared with the held-out items, all of which count as relevant (implicit protocol: an
   interaction is a positive, whatever its rating; the rating only weights training).
   Held-out items the model never saw in training still count in the denominators.

Metrics at k (means over evaluated users; `ranking_metrics`)
-------------------------------------------------------------
- precision@k = hits in top k / k
- recall@k = hits in top k / number of held-out items
- NDCG@k = Σ hit_i / log2(i + 1) over ranks i = 1..k, divided by the same sum for an ideal
  ranking of min(k, #held-out) hits (binary relevance)
- MAP@k = Σ precision@i · hit_i over ranks i = 1..k, divided by min(k, #held-out)
- coverage = distinct items recommended to anyone / items in the training universe

Published MovieLens-100k numbers (e.g. Microsoft `recommenders`) use the same precision, recall
and NDCG definitions; their MAP divides by the number of held-out items (not min(k, ·)), so it
is lower than MAP@k here for users with more than k held-out items.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import pandas as pd
import typer

from contracts.settings import DATA_DIR
from pipelines.cli import configure_logging, run
from pipelines.errors import ConfigError, InputValidationError
from pipelines.features import LogFormat, load_features, read_interactions
from recommenders import MODELS, get_trainer
from recommenders.data import validate_interactions

log = logging.getLogger(__name__)

DEFAULT_MODELS = ("popularity", "movie_predictor", "ease")


class SplitProtocol(str, Enum):
    """How each user's held-out interactions are chosen."""

    AUTO = "auto"
    TIME = "time"
    RANDOM = "random"


# -- metrics ---------------------------------------------------------------------------------


def _hits(recommended: np.ndarray, relevant: Sequence[np.ndarray]) -> np.ndarray:
    """Boolean (users x k): is recommended[u, i] in relevant[u]? (-1 pads never hit.)"""
    n, k = recommended.shape
    lengths = np.array([len(r) for r in relevant], dtype=np.int64)
    flat = np.concatenate([np.asarray(r, dtype=np.int64) for r in relevant]) if n else []
    owner = np.repeat(np.arange(n, dtype=np.int64), lengths)
    rel_keys = np.unique(np.stack([owner, np.asarray(flat, dtype=np.int64)], axis=1), axis=0)
    rec_keys = np.stack([np.repeat(np.arange(n), k), recommended.ravel()], axis=1)
    # Encode (user, item) pairs as one int64 after compressing item ids to ranks.
    universe = np.unique(np.concatenate([rel_keys[:, 1], rec_keys[:, 1]]))
    width = len(universe) + 1
    rel_code = rel_keys[:, 0] * width + np.searchsorted(universe, rel_keys[:, 1])
    rec_code = rec_keys[:, 0] * width + np.searchsorted(universe, rec_keys[:, 1])
    hits = np.isin(rec_code, rel_code).reshape(n, k)
    return hits & (recommended >= 0)


def ranking_metrics(
    recommended: np.ndarray,
    relevant: Sequence[np.ndarray],
    k: int,
    n_items: int | None = None,
) -> dict[str, float]:
    """precision@k, recall@k, ndcg@k, map@k (and coverage when ``n_items`` is given).

    ``recommended`` is (users x >=k) item ids best first, padded with -1 when a user got fewer;
    ``relevant`` holds each user's relevant item ids. Users without relevant items are skipped.
    A recommended id repeated within a row counts once (the first time).
    """
    recommended = np.asarray(recommended, dtype=np.int64)[:, :k]
    if recommended.shape[1] < k:
        pad = np.full((recommended.shape[0], k - recommended.shape[1]), -1, dtype=np.int64)
        recommended = np.hstack([recommended, pad])
    n_rel = np.array([len(np.unique(r)) for r in relevant], dtype=np.int64)
    keep = n_rel > 0
    recommended, n_rel = recommended[keep], n_rel[keep]
    relevant = [r for r, kept in zip(relevant, keep, strict=True) if kept]
    if len(n_rel) == 0:
        raise InputValidationError("no user has relevant items: nothing to evaluate")
    hits = _hits(recommended, relevant).astype(np.float64)
    # A duplicate within a row must not count twice.
    for j in range(1, k):
        dup = (recommended[:, :j] == recommended[:, j : j + 1]).any(axis=1)
        hits[dup, j] = 0.0
    ranks = np.arange(1, k + 1, dtype=np.float64)
    discount = 1.0 / np.log2(ranks + 1.0)
    dcg = hits @ discount
    ideal_cum = np.concatenate([[0.0], np.cumsum(discount)])
    idcg = ideal_cum[np.minimum(n_rel, k)]
    n_hits = hits.sum(axis=1)
    precision_at_i = np.cumsum(hits, axis=1) / ranks
    result = {
        f"precision@{k}": float(np.mean(n_hits / k)),
        f"recall@{k}": float(np.mean(n_hits / n_rel)),
        f"ndcg@{k}": float(np.mean(dcg / idcg)),
        f"map@{k}": float(np.mean((precision_at_i * hits).sum(axis=1) / np.minimum(n_rel, k))),
    }
    if n_items:
        shown = np.unique(recommended[recommended >= 0])
        result["coverage"] = float(len(shown) / n_items)
    return result


# -- split -----------------------------------------------------------------------------------


def _merge_duplicates(frame: pd.DataFrame) -> pd.DataFrame:
    """One row per (user, content): watch seconds summed, the highest rating, the latest time.

    Vectorised, with no Python call per pair (a few re-watched pairs in a 7M-row log used to
    make the split ~94x slower): the rows are sorted once by a combined (user, content) key and
    each run of equal keys is reduced with numpy's ``reduceat``. The result is sorted by
    (user_id, content_id), as a ``groupby(sort=True)`` would be, so splits stay as they were.
    """
    keys = ["user_id", "content_id"]
    columns = [c for c in ("watch_seconds", "rating", "timestamp") if c in frame]
    code = _pair_code(frame)
    if code is None or not _reducible(frame, columns):
        return _merge_duplicates_grouped(frame, keys, columns)
    started = time.perf_counter()
    order = np.argsort(code, kind="stable")
    sorted_code = code[order]
    repeat = sorted_code[1:] == sorted_code[:-1]
    if not repeat.any():
        return frame.reset_index(drop=True)
    if not columns:
        return frame.drop_duplicates(keys, ignore_index=True)
    starts = np.flatnonzero(np.r_[True, ~repeat])
    merged = {key: frame[key].to_numpy()[order][starts] for key in keys}
    for column in columns:
        values = frame[column].iloc[order]
        merged[column] = _reduce(column, values, starts)
    out = pd.DataFrame(merged)
    runs = np.diff(np.r_[starts, len(code)])
    rows, pairs = int(runs[runs > 1].sum()), int((runs > 1).sum())
    log.info("merged %d rows of %d re-watched (user, film) pairs in %.1f s", rows, pairs,
             time.perf_counter() - started)  # fmt: skip
    return out


def _pair_code(frame: pd.DataFrame) -> np.ndarray | None:
    """``user_id * (max content + 1) + content_id`` as int64 (order = (user, content) order),
    or None when ids are negative or too large for that to fit."""
    users = frame["user_id"].to_numpy()
    items = frame["content_id"].to_numpy()
    if users.dtype.kind not in "iu" or items.dtype.kind not in "iu" or not len(users):
        return None
    width = int(items.max()) + 1
    if int(users.min()) < 0 or int(items.min()) < 0 or int(users.max()) >= (2**62) // width:
        return None
    return users.astype(np.int64) * width + items.astype(np.int64)


def _reducible(frame: pd.DataFrame, columns: list[str]) -> bool:
    """Whether each column has a dtype `_reduce` handles exactly as pandas would."""
    for column in columns:
        dtype = frame[column].dtype
        if column == "timestamp":
            if not (isinstance(dtype, pd.DatetimeTZDtype) or dtype.kind == "M"):
                return False
        elif dtype != np.float64:
            return False
    return True


def _reduce(column: str, values: pd.Series, starts: np.ndarray) -> pd.Series | np.ndarray:
    """One value per run of equal keys (runs start at ``starts``; ``values`` sorted by key)."""
    if column == "watch_seconds":  # sum, NaN only when every value of the pair is NaN
        raw = values.to_numpy()
        present = ~np.isnan(raw)
        total = np.add.reduceat(np.where(present, raw, 0.0), starts)
        return np.where(np.add.reduceat(present, starts) > 0, total, np.nan)
    if column == "rating":  # the highest, NaN ignored
        return np.fmax.reduceat(values.to_numpy(), starts)
    tz = getattr(values.dtype, "tz", None)  # the latest time; NaT (int64 min) never wins
    naive = values.dt.tz_localize(None) if tz is not None else values
    raw = naive.to_numpy()
    latest = pd.Series(np.maximum.reduceat(raw.view("i8"), starts).view(raw.dtype))
    return latest.dt.tz_localize(tz) if tz is not None else latest


def _merge_duplicates_grouped(
    frame: pd.DataFrame, keys: list[str], columns: list[str]
) -> pd.DataFrame:
    """`_merge_duplicates` for ids or dtypes the fast path does not take (pandas' groupby)."""
    duplicated = frame.duplicated(keys, keep=False).to_numpy()
    if not duplicated.any():
        return frame.reset_index(drop=True)
    if not columns:
        return frame.drop_duplicates(keys, ignore_index=True)
    grouped = frame[duplicated].groupby(keys, sort=False)
    merged: dict[str, pd.Series] = {}
    if "watch_seconds" in frame:
        merged["watch_seconds"] = grouped["watch_seconds"].sum(min_count=1)
    if "rating" in frame:
        merged["rating"] = grouped["rating"].max()
    if "timestamp" in frame:
        merged["timestamp"] = grouped["timestamp"].max()
    pairs = pd.DataFrame(merged).reset_index()
    out = pd.concat([frame.loc[~duplicated, [*keys, *columns]], pairs], ignore_index=True)
    return out.sort_values(keys, kind="stable", ignore_index=True)


def split_holdout(
    interactions: pd.DataFrame,
    test_fraction: float = 0.25,
    seed: int = 0,
    protocol: SplitProtocol = SplitProtocol.AUTO,
    min_user_interactions: int = 4,
) -> tuple[pd.DataFrame, pd.DataFrame, SplitProtocol]:
    """Per-user holdout (see the module docstring); returns ``(train, test, protocol used)``."""
    if not 0.0 < test_fraction < 1.0:
        raise ConfigError(f"test_fraction must be in (0, 1), got {test_fraction}")
    started = time.perf_counter()
    log.info("splitting %d interactions per user (merging re-watched pairs first)",
             len(interactions))  # fmt: skip
    frame = _merge_duplicates(validate_interactions(interactions))
    has_time = "timestamp" in frame and frame["timestamp"].notna().all()
    if protocol is SplitProtocol.AUTO:
        protocol = SplitProtocol.TIME if has_time else SplitProtocol.RANDOM
    if protocol is SplitProtocol.TIME and not has_time:
        raise ConfigError("time-based split needs a timestamp on every interaction")
    users = frame["user_id"].to_numpy()
    if protocol is SplitProtocol.TIME:
        ts = frame["timestamp"]
        key = (
            ts.astype("int64").to_numpy()
            if isinstance(ts.dtype, pd.DatetimeTZDtype) or ts.dtype.kind == "M"
            else pd.to_numeric(ts).to_numpy()
        )
        order = np.lexsort((frame["content_id"].to_numpy(), key, users))
    else:
        rng = np.random.default_rng(seed)
        order = np.lexsort((rng.random(len(frame)), users))
    sorted_users = users[order]
    starts = np.flatnonzero(np.r_[True, sorted_users[1:] != sorted_users[:-1]])
    sizes = np.diff(np.r_[starts, len(order)])
    position = np.arange(len(order)) - np.repeat(starts, sizes)
    size = np.repeat(sizes, sizes)
    n_test = np.maximum(1, np.round(size * test_fraction)).astype(np.int64)
    is_test_sorted = (size >= min_user_interactions) & (position >= size - n_test)
    is_test = np.zeros(len(frame), dtype=bool)
    is_test[order] = is_test_sorted
    train, test = frame[~is_test].reset_index(drop=True), frame[is_test].reset_index(drop=True)
    log.info("split %d interactions (%s) in %.1f s: %d train, %d test rows", len(interactions),
             protocol.value, time.perf_counter() - started, len(train), len(test))  # fmt: skip
    return train, test, protocol


# -- evaluation ------------------------------------------------------------------------------


def evaluate_fitted(model: Any, test: pd.DataFrame, k: int = 10) -> dict[str, float]:
    """Metrics of a fitted recommender against held-out interactions (known users only)."""
    test = test[np.isin(test["user_id"].to_numpy(), model.known_users)]
    grouped = test.groupby("user_id", sort=True)["content_id"]
    user_ids = np.array(list(grouped.groups.keys()), dtype=np.int64)
    relevant = [g.to_numpy(dtype=np.int64) for _, g in grouped]
    recs = model.recommend_many(user_ids.tolist(), k=k, exclude_seen=True)
    recommended = np.full((len(recs), k), -1, dtype=np.int64)
    for i, rec in enumerate(recs):
        recommended[i, : len(rec.content_ids)] = rec.content_ids
    metrics = ranking_metrics(recommended, relevant, k, n_items=model.n_items)
    metrics["users"] = float(len(user_ids))
    return metrics


def evaluate_models(
    interactions: pd.DataFrame,
    catalog: pd.DataFrame | None = None,
    models: Sequence[str | tuple[str, dict[str, Any]]] = DEFAULT_MODELS,
    k: int = 10,
    seed: int = 0,
    protocol: SplitProtocol = SplitProtocol.AUTO,
    test_fraction: float = 0.25,
) -> pd.DataFrame:
    """Fit every model on one split and return one row of metrics per model.

    ``models`` are registry names, or ``(name, params)`` to override hyperparameters. Columns:
    model, params, precision@k, recall@k, ndcg@k, map@k, coverage, users, fit_seconds, split.
    """
    train, test, used = split_holdout(interactions, test_fraction, seed, protocol)
    rows = []
    for spec in models:
        name, params = (spec, {}) if isinstance(spec, str) else spec
        trainer = get_trainer(name, **params)
        started = time.perf_counter()
        fitted = trainer.fit(train, catalog)
        fit_seconds = time.perf_counter() - started
        metrics = evaluate_fitted(fitted, test, k)
        rows.append(
            {
                "model": name,
                "params": trainer.params(),
                **metrics,
                "fit_seconds": fit_seconds,
                "split": used.value,
            }
        )
        log.info("%s: ndcg@%d=%.4f", name, k, metrics[f"ndcg@{k}"])
    return pd.DataFrame(rows)


# -- CLI -------------------------------------------------------------------------------------


def size_params(model: str, max_items: int | None) -> dict[str, Any]:
    """The trainer parameters a ``--max-items`` bound sets for ``model`` (none if it has no
    such bound, or without a bound)."""
    cls = MODELS[model]
    if max_items is None or "max_items" not in {f.name for f in dataclasses.fields(cls)}:
        return {}
    return {"max_items": max_items}


@dataclass(frozen=True)
class EvaluateSettings:
    """Everything one evaluation run needs, parsed from flags and environment."""

    data_dir: Path
    features_version: str | None
    interactions_file: Path | None
    models: tuple[str, ...]
    k: int
    seed: int
    protocol: SplitProtocol
    interactions_format: LogFormat = LogFormat.AUTO
    max_items: int | None = None


def evaluate(settings: EvaluateSettings) -> pd.DataFrame:
    """Load the data the settings name and evaluate the models on it."""
    unknown = [m for m in settings.models if m not in MODELS]
    if unknown:
        raise ConfigError(f"unknown model(s) {unknown}; known: {sorted(MODELS)}")
    if settings.k < 1:
        raise ConfigError("--k must be at least 1")
    if settings.max_items is not None and settings.max_items < 1:
        raise ConfigError(f"--max-items must be at least 1, got {settings.max_items}")
    specs = [(name, size_params(name, settings.max_items)) for name in settings.models]
    if settings.max_items is not None and not any(params for _, params in specs):
        raise ConfigError(f"--max-items bounds ease only; models: {', '.join(settings.models)}")
    catalog = None
    if settings.interactions_file is not None:  # validated, as features would
        interactions = read_interactions(settings.interactions_file, settings.interactions_format)
    else:
        snapshot = load_features(settings.data_dir, settings.features_version)
        interactions, catalog = snapshot.interactions, snapshot.catalog
    return evaluate_models(interactions, catalog, specs, settings.k, settings.seed,
                           settings.protocol)  # fmt: skip


def print_table(results: pd.DataFrame, k: int) -> None:
    """The comparison table, best NDCG first, with each model's lift over popularity."""
    from rich.console import Console
    from rich.table import Table

    ndcg = f"ndcg@{k}"
    base = results.loc[results["model"] == "popularity", ndcg]
    table = Table(title=f"models at k={k} ({results['split'].iloc[0]} split)")
    columns = [f"precision@{k}", f"recall@{k}", ndcg, f"map@{k}", "coverage"]
    for col in ["model", *columns, "ndcg vs pop", "fit s"]:
        table.add_column(col, justify="left" if col == "model" else "right")
    for _, row in results.sort_values(ndcg, ascending=False).iterrows():
        lift = f"{row[ndcg] / base.iloc[0]:.2f}x" if len(base) and base.iloc[0] > 0 else "-"
        table.add_row(
            row["model"], *(f"{row[c]:.4f}" for c in columns), lift, f"{row['fit_seconds']:.1f}"
        )
    Console(width=max(120, Console().width)).print(table)


app = typer.Typer(add_completion=False, help=__doc__.split("\n")[0])


@app.command()
def main(
    data_dir: Annotated[
        Path, typer.Option(envvar=DATA_DIR.name, help="Root of raw and feature snapshots.")
    ] = DATA_DIR.default_path,
    features_version: Annotated[
        str | None, typer.Option(help="Feature snapshot to evaluate on (default: latest).")
    ] = None,
    interactions: Annotated[
        Path | None,
        typer.Option("--interactions", help="Evaluate on this CSV/Parquet file instead."),
    ] = None,
    models: Annotated[str, typer.Option(help="Comma-separated model names.")] = ",".join(
        DEFAULT_MODELS
    ),
    k: Annotated[int, typer.Option("--k", help="Cut-off of the ranking metrics.")] = 10,
    seed: Annotated[int, typer.Option(help="Seed of the random split.")] = 0,
    split: Annotated[SplitProtocol, typer.Option(help="Holdout protocol.")] = SplitProtocol.AUTO,
    log_format: Annotated[
        LogFormat,
        typer.Option("--format", help="Layout of --interactions (see features build --help)."),
    ] = LogFormat.AUTO,
    max_items: Annotated[
        int | None,
        typer.Option(
            "--max-items",
            min=1,
            help="EASE on the N most-interacted items only (bounds its N² memory); the other "
            "items' interactions are dropped from its training.",
        ),
    ] = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False,
) -> None:
    """Print a comparison table of the models on one holdout split."""
    configure_logging(verbose)
    settings = EvaluateSettings(
        data_dir=data_dir,
        features_version=features_version,
        interactions_file=interactions,
        models=tuple(m.strip() for m in models.split(",") if m.strip()),
        k=k,
        seed=seed,
        protocol=split,
        interactions_format=log_format,
        max_items=max_items,
    )
    results = run(lambda: evaluate(settings))
    print_table(results, settings.k)


if __name__ == "__main__":  # run the imported module, so loggers and classes keep their names
    from pipelines.evaluate import app as _app

    _app()
