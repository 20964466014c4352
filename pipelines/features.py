"""Feature snapshots: catalog + interactions, versioned, validated, published atomically.

``python -m pipelines.features build`` reads the latest (or a named) raw TMDB snapshot and writes
``DATA_DIR/features/<version>/`` with ``catalog.parquet``, ``interactions.parquet``, the
rating-vs-watch-time plot and a manifest. Interactions come from the watch-log simulator
(`pipelines.simulator`) or from a real log given with ``--interactions FILE`` (CSV or Parquet with
``user_id``, ``content_id`` and at least one of ``watch_seconds`` / ``rating``, optional
``timestamp``); a real log needs no TMDB snapshot at all.

The version is a digest of the inputs (source snapshot, input file, generator parameters, seed and
this module's schema version): building the same inputs twice gives the same version and
byte-identical files, and the second build only moves ``latest``. ``list`` shows the snapshots
and ``restore VERSION`` points ``latest`` back at an older one.
"""

from __future__ import annotations

import hashlib
import json
import logging
import sys
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import pandas as pd
import pandera.pandas as pa
import typer

from contracts import layout
from contracts.files import sha256_file
from contracts.settings import DATA_DIR
from pipelines import cli
from pipelines.errors import ConfigError, InputValidationError, SnapshotNotFoundError
from pipelines.simulator import SimulatorMode, SimulatorParams, simulate
from pipelines.snapshots import SnapshotStore

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
_FALLBACK_ANCHOR = datetime(2026, 1, 1, tzinfo=UTC)
_REPORT_ROWS = 20

CATALOG_COLUMNS = [
    "content_id",
    "title",
    "genres",
    "genre_ids",
    "vote_average",
    "vote_count",
    "popularity",
    "release_date",
    "poster_path",
    "original_language",
]
INTERACTION_COLUMNS = ["user_id", "content_id", "watch_seconds", "rating", "timestamp"]

INTERACTIONS_SCHEMA = pa.DataFrameSchema(
    {
        "user_id": pa.Column("int64", pa.Check.ge(0)),
        "content_id": pa.Column("int64", pa.Check.gt(0)),
        "watch_seconds": pa.Column("float64", pa.Check.in_range(0, 86_400), nullable=True),
        "rating": pa.Column("float64", pa.Check.in_range(0, 10), nullable=True),
        "timestamp": pa.Column(pd.DatetimeTZDtype("us", "UTC"), nullable=True),
    },
    checks=[
        pa.Check(
            lambda df: df["watch_seconds"].notna() | df["rating"].notna(),
            name="watch_seconds_or_rating_present",
            error="each row needs watch_seconds or rating",
        )
    ],
    unique=["user_id", "content_id", "timestamp"],
    strict=True,
    ordered=True,
    name="interactions",
)

CATALOG_SCHEMA = pa.DataFrameSchema(
    {
        "content_id": pa.Column("int64", pa.Check.gt(0), unique=True),
        "title": pa.Column(object, nullable=True),
        "genres": pa.Column(object),
        "genre_ids": pa.Column(object),
        "vote_average": pa.Column("float64", pa.Check.in_range(0, 10), nullable=True),
        "vote_count": pa.Column("Int64", pa.Check.ge(0), nullable=True),
        "popularity": pa.Column("float64", pa.Check.ge(0), nullable=True),
        "release_date": pa.Column(object, nullable=True),
        "poster_path": pa.Column(object, nullable=True),
        "original_language": pa.Column(object, nullable=True),
    },
    strict=True,
    ordered=True,
    name="catalog",
)


@dataclass(frozen=True)
class FeatureSettings:
    """Everything `build_features` needs, parsed once from flags and environment."""

    data_dir: Path = DATA_DIR.default_path
    raw_snapshot: str | None = None
    interactions_file: Path | None = None
    simulator: SimulatorParams = field(default_factory=SimulatorParams)


@dataclass(frozen=True)
class FeatureResult:
    version: str
    path: Path
    created: bool
    rows: dict[str, int]


# -- inputs --------------------------------------------------------------------------------


def _report(err: pa.errors.SchemaErrors, row_offset: int = 0) -> str:
    """Which rows failed and why, one line per (row, column, check), for humans."""
    cases = err.failure_cases.copy()
    cases["row"] = cases["index"].map(lambda i: -1 if pd.isna(i) else int(i) + row_offset)
    cases["check"] = (
        cases["check"]
        .astype(str)
        .replace(
            {"multiple_fields_uniqueness": "duplicate row", "field_uniqueness": "duplicate value"}
        )
    )
    grouped = cases.groupby(["row", "check"], sort=True, dropna=False)
    lines = []
    for (row, check), group in grouped:
        row_level = (
            group["schema_context"].iloc[0] == "DataFrameSchema" and check != "duplicate row"
        )
        columns = "" if row_level else ", ".join(dict.fromkeys(str(c) for c in group["column"]))
        where = "-" if row < 0 else str(row)
        value = "" if len(group) > 1 else f"  got {group['failure_case'].iloc[0]!r}"
        value = "" if row_level else value
        lines.append(f"  row {where:>8}  {check}" + (f"  [{columns}]" if columns else "") + value)
        if len(lines) == _REPORT_ROWS:
            break
    more = grouped.ngroups - len(lines)
    if more > 0:
        lines.append(f"  … and {more} more")
    return "\n".join(lines)


def _parse_timestamps(values: pd.Series) -> pd.Series:
    if pd.api.types.is_datetime64_any_dtype(values):
        ts = pd.to_datetime(values, utc=True)
    elif pd.api.types.is_numeric_dtype(values):
        ts = pd.to_datetime(values, unit="s", utc=True)  # epoch seconds, as MovieLens logs them
    else:
        ts = pd.to_datetime(values, utc=True, format="ISO8601")
    return ts.dt.as_unit("us")


def read_interactions(path: Path) -> pd.DataFrame:
    """Read and validate a real interaction log (CSV or Parquet).

    Raises `InputValidationError` naming the failing rows (1-based data rows for CSV) and why.
    """
    if not path.is_file():
        raise ConfigError(f"interactions file {path} does not exist")
    suffix = path.suffix.lower()
    try:
        if suffix == ".parquet":
            raw = pd.read_parquet(path)
        elif suffix in {".csv", ".txt"}:
            raw = pd.read_csv(path)
        else:
            raise ConfigError(f"{path}: unsupported format {suffix!r} (use .csv or .parquet)")
    except (ValueError, OSError, pd.errors.ParserError) as err:
        raise InputValidationError(f"{path}: cannot be read as {suffix[1:]}: {err}") from err

    missing = {"user_id", "content_id"} - set(raw.columns)
    if missing:
        raise InputValidationError(f"{path}: missing required column(s) {sorted(missing)}")
    if not {"watch_seconds", "rating"} & set(raw.columns):
        raise InputValidationError(f"{path}: needs at least one of watch_seconds, rating")
    unknown = set(raw.columns) - set(INTERACTION_COLUMNS)
    if unknown:
        log.info("%s: ignoring extra column(s) %s", path, sorted(unknown))
    if raw.empty:
        raise InputValidationError(f"{path}: no rows")

    frame = pd.DataFrame(index=raw.index)
    bad_types = []
    for col in ("user_id", "content_id"):
        values = pd.to_numeric(raw[col], errors="coerce")
        integral = values.notna() & (values == np.floor(values))
        if not integral.all():
            rows = raw.index[~integral][:_REPORT_ROWS]
            bad_types += [
                f"  row {r + 1:>8}  {col:<14} not an integer id, got {raw[col][r]!r}" for r in rows
            ]
        frame[col] = values.where(integral, -1).astype("int64")
    for col in ("watch_seconds", "rating"):
        if col in raw:
            values = pd.to_numeric(raw[col], errors="coerce")
            wrong = values.isna() & raw[col].notna()
            if wrong.any():
                rows = raw.index[wrong][:_REPORT_ROWS]
                bad_types += [
                    f"  row {r + 1:>8}  {col:<14} not a number, got {raw[col][r]!r}" for r in rows
                ]
            frame[col] = values.astype("float64")
        else:
            frame[col] = np.nan
    if "timestamp" in raw:
        try:
            frame["timestamp"] = _parse_timestamps(raw["timestamp"])
        except (ValueError, TypeError, OverflowError) as err:
            raise InputValidationError(f"{path}: column timestamp is not a time: {err}") from err
    else:
        frame["timestamp"] = pd.Series(pd.NaT, index=raw.index, dtype="datetime64[us, UTC]")
    if bad_types:
        raise InputValidationError(
            f"{path}: {len(bad_types)} value(s) of the wrong type; nothing was published",
            "\n".join(bad_types),
        )
    validate_interactions(frame, source=str(path), row_offset=1)
    return frame.reset_index(drop=True)


def validate_interactions(frame: pd.DataFrame, source: str, row_offset: int = 0) -> None:
    """Validate interactions against `INTERACTIONS_SCHEMA`; raise with a row report."""
    try:
        INTERACTIONS_SCHEMA.validate(frame, lazy=True)
    except pa.errors.SchemaErrors as err:
        n = err.failure_cases["index"].nunique()
        raise InputValidationError(
            f"{source}: {n} invalid interaction row(s); nothing was published",
            _report(err, row_offset),
        ) from err


def catalog_from_raw(raw_dir: Path) -> pd.DataFrame:
    """The catalog table from a raw TMDB snapshot (movies.parquet + genres.json)."""
    movies = pd.read_parquet(raw_dir / layout.RAW_MOVIES)
    genre_names: dict[int, str] = {}
    genres_file = raw_dir / layout.RAW_GENRES
    if genres_file.is_file():
        payload = json.loads(genres_file.read_text())
        genre_names = {int(g["id"]): str(g["name"]) for g in payload.get("genres", [])}
    genre_ids = [[int(g) for g in ids] if ids is not None else [] for ids in movies["genre_ids"]]
    catalog = pd.DataFrame(
        {
            "content_id": movies["id"].astype("int64"),
            "title": movies["title"].astype(object),
            "genres": [[genre_names.get(g, str(g)) for g in ids] for ids in genre_ids],
            "genre_ids": genre_ids,
            "vote_average": movies["vote_average"].astype("float64"),
            "vote_count": movies["vote_count"].astype("Int64"),
            "popularity": movies["popularity"].astype("float64"),
            "release_date": movies["release_date"]
            .astype(object)
            .where(movies["release_date"].notna(), None),
            "poster_path": movies["poster_path"]
            .astype(object)
            .where(movies["poster_path"].notna(), None),
            "original_language": movies.get(
                "original_language", pd.Series(None, index=movies.index)
            ).astype(object),
        }
    )
    return catalog.sort_values("content_id", kind="stable").reset_index(drop=True)


def _complete_catalog(catalog: pd.DataFrame | None, interactions: pd.DataFrame) -> pd.DataFrame:
    """Add a row with what is known (only the id) for every item the log has but TMDB has not."""
    known = set() if catalog is None else set(catalog["content_id"].tolist())
    extra_ids = sorted(set(interactions["content_id"].unique().tolist()) - known)
    extra = pd.DataFrame(
        {
            "content_id": pd.Series(extra_ids, dtype="int64"),
            "title": pd.Series([None] * len(extra_ids), dtype=object),
            "genres": [[] for _ in extra_ids],
            "genre_ids": [[] for _ in extra_ids],
            "vote_average": pd.Series(np.nan, index=range(len(extra_ids)), dtype="float64"),
            "vote_count": pd.Series(pd.NA, index=range(len(extra_ids)), dtype="Int64"),
            "popularity": pd.Series(np.nan, index=range(len(extra_ids)), dtype="float64"),
            "release_date": pd.Series([None] * len(extra_ids), dtype=object),
            "poster_path": pd.Series([None] * len(extra_ids), dtype=object),
            "original_language": pd.Series([None] * len(extra_ids), dtype=object),
        }
    )
    if catalog is None:
        full = extra
    elif extra.empty:
        full = catalog
    else:
        full = pd.concat([catalog, extra], ignore_index=True)
    return full.sort_values("content_id", kind="stable").reset_index(drop=True)[CATALOG_COLUMNS]


# -- the plot ------------------------------------------------------------------------------


def plot_rating_vs_watch(interactions: pd.DataFrame, path: Path) -> None:
    """The original project's scatter of rating against watch time, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    rated = interactions.dropna(subset=["rating", "watch_seconds"])
    if len(rated) > 20_000:
        rated = rated.sample(20_000, random_state=0)
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=100)
    if rated.empty:
        ax.text(0.5, 0.5, "no rows with both rating and watch_seconds", ha="center", va="center")
    else:
        ax.scatter(rated["rating"], rated["watch_seconds"] / 60.0, s=4, alpha=0.3)
        means = rated.groupby("rating")["watch_seconds"].mean() / 60.0
        ax.plot(means.index, means.to_numpy(), color="crimson", label="mean per rating")
        ax.legend(loc="upper left")
    ax.set_xlabel("rating")
    ax.set_ylabel("minutes watched")
    ax.set_title(f"rating vs watch time ({len(interactions):,} interactions)")
    fig.tight_layout()
    fig.savefig(path, format="png", metadata={"Software": None})
    plt.close(fig)


# -- the stage -----------------------------------------------------------------------------


def _version_of(inputs: dict[str, Any]) -> str:
    blob = json.dumps({"schema_version": SCHEMA_VERSION, **inputs}, sort_keys=True).encode()
    return "fs-" + hashlib.sha256(blob).hexdigest()[:16]


def _anchor(raw_manifest: dict[str, Any] | None) -> datetime:
    finished = (raw_manifest or {}).get("finished_at")
    if not finished:
        return _FALLBACK_ANCHOR
    return pd.Timestamp(finished).to_pydatetime().astimezone(UTC)


def build_features(settings: FeatureSettings) -> FeatureResult:
    """Build, validate and publish one feature snapshot; see the module docstring."""
    data = layout.DataLayout(settings.data_dir)
    raw_store, store = SnapshotStore(data.raw), SnapshotStore(data.features)

    raw_dir: Path | None = None
    raw_manifest: dict[str, Any] | None = None
    if settings.raw_snapshot is not None or settings.interactions_file is None:
        raw_dir = raw_store.resolve(settings.raw_snapshot)
    elif raw_store.latest_id() is not None:
        raw_dir = raw_store.resolve(None)
    if raw_dir is not None:
        raw_manifest = raw_store.verify(raw_dir.name)
        log.info("source raw snapshot %s", raw_dir.name)

    inputs: dict[str, Any] = {
        "raw_snapshot": raw_dir.name if raw_dir else None,
        "raw_manifest_sha256": sha256_file(raw_dir / layout.MANIFEST) if raw_dir else None,
    }
    if settings.interactions_file is not None:
        inputs["interactions_file"] = {
            "name": settings.interactions_file.name,
            "sha256": sha256_file(settings.interactions_file),
        }
        inputs["generator"] = None
    else:
        inputs["interactions_file"] = None
        inputs["generator"] = settings.simulator.as_dict()
    version = _version_of(inputs)
    if store.exists(version):
        store.verify(version)
        store.set_latest(version)
        log.info("feature snapshot %s already exists for these inputs", version)
        rows = store.read_manifest(version)["row_counts"]
        return FeatureResult(version, store.resolve(version), created=False, rows=rows)

    catalog = catalog_from_raw(raw_dir) if raw_dir is not None else None
    if settings.interactions_file is not None:
        log.info("reading interactions from %s", settings.interactions_file)
        interactions = read_interactions(settings.interactions_file)
    else:
        if catalog is None:  # unreachable: without a log, a raw snapshot was resolved above
            raise SnapshotNotFoundError("the simulator needs a raw snapshot; run the crawl first")
        if catalog.empty:
            raise InputValidationError(f"raw snapshot {raw_dir} holds no movies")

        def progress(done: int, total: int) -> None:
            log.info("simulated %d/%d users", done, total)

        interactions = simulate(catalog, settings.simulator, _anchor(raw_manifest), progress)
        validate_interactions(interactions, source="simulator")
    catalog = _complete_catalog(catalog, interactions)
    try:
        CATALOG_SCHEMA.validate(catalog, lazy=True)
    except pa.errors.SchemaErrors as err:
        raise InputValidationError(
            "catalog failed validation; nothing was published", _report(err)
        ) from err

    rows = {"catalog": len(catalog), "interactions": len(interactions)}
    manifest = {
        "kind": "features",
        "version": version,
        "schema_version": SCHEMA_VERSION,
        "source": inputs,
        "schema": {
            "catalog": {c: str(t) for c, t in catalog.dtypes.items()},
            "interactions": {c: str(t) for c, t in interactions.dtypes.items()},
        },
        "row_counts": rows,
        "stats": {
            "users": int(interactions["user_id"].nunique()),
            "items_with_interactions": int(interactions["content_id"].nunique()),
            "watch_seconds_mean": _mean(interactions["watch_seconds"]),
            "rating_mean": _mean(interactions["rating"]),
            "rated_fraction": float(interactions["rating"].notna().mean()),
        },
    }
    with store.staging(version) as staging:
        log.info("writing catalog (%d rows) and interactions (%d rows)", *rows.values())
        catalog.to_parquet(staging / layout.FEATURES_CATALOG, index=False, compression="zstd")
        interactions.to_parquet(
            staging / layout.FEATURES_INTERACTIONS, index=False, compression="zstd"
        )
        plot_rating_vs_watch(interactions, staging / layout.FEATURES_PLOT)
        path = store.publish(staging, version, manifest)
    return FeatureResult(version, path, created=True, rows=rows)


def _mean(values: pd.Series) -> float | None:
    value = values.mean()
    return None if pd.isna(value) else round(float(value), 6)


@dataclass(frozen=True, eq=False)
class FeatureSnapshot:
    """One published feature snapshot, as every reader gets it."""

    version: str
    path: Path
    manifest: dict[str, Any]
    manifest_sha256: str  # pins every file: the manifest lists each one's sha256
    catalog: pd.DataFrame
    interactions: pd.DataFrame

    @property
    def plot(self) -> Path | None:
        """The rating-vs-watch-time plot, when the snapshot has one."""
        path = self.path / layout.FEATURES_PLOT
        return path if path.is_file() else None

    @property
    def source(self) -> dict[str, Any]:
        """Where it came from: the raw snapshot (and its manifest digest) or the log file."""
        return dict(self.manifest.get("source") or {})


def load_features(
    data_dir: Path, version: str | None = None, *, verify: bool = True
) -> FeatureSnapshot:
    """A feature snapshot (latest by default), its files verified against its manifest."""
    store = SnapshotStore(layout.DataLayout(data_dir).features)
    path = store.resolve(version)
    manifest = store.verify(path.name) if verify else store.read_manifest(path.name)
    return FeatureSnapshot(
        version=path.name,
        path=path,
        manifest=manifest,
        manifest_sha256=sha256_file(path / layout.MANIFEST),
        catalog=pd.read_parquet(path / layout.FEATURES_CATALOG),
        interactions=pd.read_parquet(path / layout.FEATURES_INTERACTIONS),
    )


# -- CLI -----------------------------------------------------------------------------------

app = typer.Typer(
    add_completion=False,
    no_args_is_help=False,
    help="Build, list and restore feature snapshots (DATA_DIR/features).",
)

DataDir = Annotated[
    Path,
    typer.Option("--data-dir", envvar=DATA_DIR.name, help="Root of raw and feature snapshots."),
]
Verbose = Annotated[bool, typer.Option("--verbose", "-v", help="Debug logging.")]


@app.command()
def build(
    data_dir: DataDir = DATA_DIR.default_path,
    raw_snapshot: Annotated[
        str | None,
        typer.Option("--raw-snapshot", help="Raw snapshot id (default: latest)."),
    ] = None,
    interactions: Annotated[
        Path | None,
        typer.Option(
            "--interactions",
            help="Real interaction log (CSV/Parquet: user_id, content_id, watch_seconds and/or "
            "rating, optional timestamp) instead of the simulator.",
        ),
    ] = None,
    mode: Annotated[
        SimulatorMode, typer.Option("--mode", help="Simulator mode.")
    ] = SimulatorMode.DEFAULT,
    seed: Annotated[int, typer.Option("--seed", envvar="FEATURES_SEED", min=0)] = 42,
    users: Annotated[
        int, typer.Option("--users", min=1, help="Simulated users (default mode).")
    ] = 2000,
    mean_items: Annotated[
        float, typer.Option("--mean-items", min=1.0, help="Mean films per simulated user.")
    ] = 25.0,
    verbose: Verbose = False,
) -> None:
    """Build a feature snapshot from the latest raw snapshot (or a real log) and publish it."""
    cli.configure_logging(verbose)
    settings = FeatureSettings(
        data_dir=data_dir,
        raw_snapshot=raw_snapshot,
        interactions_file=interactions,
        simulator=SimulatorParams(mode=mode, seed=seed, users=users, mean_items=mean_items),
    )
    result = cli.run(lambda: build_features(settings))
    state = "published" if result.created else "unchanged (same inputs)"
    typer.echo(
        f"features {result.version} {state}: {result.rows['catalog']} catalog rows, "
        f"{result.rows['interactions']} interactions -> {result.path}"
    )


@app.command("list")
def list_(data_dir: DataDir = DATA_DIR.default_path) -> None:
    """List feature snapshots, oldest first; `*` marks latest."""
    infos = SnapshotStore(layout.DataLayout(data_dir).features).list()
    if not infos:
        typer.echo(f"no feature snapshots under {layout.DataLayout(data_dir).features}")
        return
    typer.echo(
        f"  {'version':<20} {'published (UTC)':<20} {'interactions':>12} {'catalog':>8}  source"
    )
    for info in infos:
        m = info.manifest
        source = m["source"].get("raw_snapshot") or (
            m["source"].get("interactions_file") or {}
        ).get("name")
        typer.echo(
            f"{'*' if info.is_latest else ' '} {info.snapshot_id:<20} "
            f"{info.published_at:%Y-%m-%d %H:%M:%S} {m['row_counts']['interactions']:>12} "
            f"{m['row_counts']['catalog']:>8}  {source}"
        )


@app.command()
def restore(
    version: Annotated[str, typer.Argument(help="Feature snapshot version to make latest.")],
    data_dir: DataDir = DATA_DIR.default_path,
) -> None:
    """Point `latest` at an existing feature snapshot (after verifying its checksums)."""
    cli.configure_logging(False)
    store = SnapshotStore(layout.DataLayout(data_dir).features)

    def _restore() -> None:
        if not store.exists(version):
            raise SnapshotNotFoundError(f"feature snapshot {version!r} not found")
        store.verify(version)
        store.set_latest(version)

    cli.run(_restore)
    typer.echo(f"latest -> {version}")


_COMMANDS = {"build", "list", "restore", "--help", "-h"}


def main(argv: list[str] | None = None) -> None:
    """`python -m pipelines.features [build] …`: without a command, `build` runs."""
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] not in _COMMANDS:
        args = ["build", *args]
    app(args=args, prog_name="python -m pipelines.features")


if __name__ == "__main__":  # run the imported module, so loggers and classes keep their names
    from pipelines.features import main as _main

    _main()
