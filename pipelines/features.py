"""Feature snapshots: catalog + interactions, versioned, validated, published atomically.

``python -m pipelines.features build`` reads the latest (or a named) raw TMDB snapshot and writes
``DATA_DIR/features/<version>/`` with ``catalog.parquet``, ``interactions.parquet``, the
rating-vs-watch-time plot and a manifest. Interactions come from the watch-log simulator
(`pipelines.simulator`) or from a real log given with ``--interactions FILE``: CSV or Parquet with
``user_id``, ``content_id`` and at least one of ``watch_seconds`` / ``rating``, optional
``timestamp``, or MovieLens' own files as distributed (``u.data``, ``ratings.dat``, ml-latest's
``ratings.csv``; detected, or named with ``--format``). A real log needs no TMDB snapshot.

``--events`` adds what the page logged under ``DATA_DIR/events/`` (`pipelines.events.training`):
clicks become interactions (positives), impressions without a click become ``exposures.parquet``.
Alone it builds from the events only; with ``--interactions FILE`` or ``--simulate`` the clicks are
added to that file's or the simulator's interactions. The manifest's ``source.events`` names every
event file read with its sha256.

The version is a digest of the inputs (source snapshot, input file, generator parameters, seed and
this module's schema version): building the same inputs twice gives the same version and
byte-identical files, and the second build only moves ``latest``. ``list`` shows the snapshots
and ``restore VERSION`` points ``latest`` back at an older one.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import sys
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import Enum
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
from pipelines.errors import (
    ConfigError,
    InputValidationError,
    SnapshotCorruptError,
    SnapshotNotFoundError,
)
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


class LogFormat(str, Enum):
    """How an interaction log file is laid out (``auto``: detected from its name and bytes)."""

    AUTO = "auto"
    CSV = "csv"  # header naming user_id, content_id, watch_seconds and/or rating, timestamp
    PARQUET = "parquet"  # the same columns, typed
    ML_100K = "ml-100k"  # MovieLens u.data: user<TAB>item<TAB>rating<TAB>timestamp, no header
    ML_1M = "ml-1m"  # MovieLens ratings.dat: UserID::MovieID::Rating::Timestamp, no header
    ML_LATEST = "ml-latest"  # MovieLens ratings.csv: header userId,movieId,rating,timestamp


@dataclass(frozen=True)
class FeatureSettings:
    """Everything `build_features` needs, parsed once from flags and environment."""

    data_dir: Path = DATA_DIR.default_path
    raw_snapshot: str | None = None
    interactions_file: Path | None = None
    interactions_format: LogFormat = LogFormat.AUTO
    simulator: SimulatorParams = field(default_factory=SimulatorParams)
    events: bool = False  # add the logged clicks (DATA_DIR/events)
    simulate: bool = False  # with events: the simulator's interactions too

    @property
    def uses_simulator(self) -> bool:
        return self.interactions_file is None and (not self.events or self.simulate)


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


# what each MovieLens file's columns are called here
_MOVIELENS_COLUMNS = ["user_id", "content_id", "rating", "timestamp"]
_ML_LATEST_NAMES = {"userId": "user_id", "movieId": "content_id"}
_INT64_MAX = np.iinfo(np.int64).max
_INT64_MIN = np.iinfo(np.int64).min
_BEYOND_INT64 = "beyond the int64 range of ids"


def detect_format(path: Path) -> LogFormat:
    """The layout of an interaction log, from its first bytes (and its name as a hint).

    Parquet by its magic bytes; MovieLens ``ratings.dat`` by ``::`` separators; ``u.data`` by a
    first line of 3-4 tab-separated numbers; ml-latest's ``ratings.csv`` by its ``userId`` and
    ``movieId`` header; any other ``.csv``/``.txt`` file is this project's CSV layout.
    """
    with path.open("rb") as fh:
        head = fh.read(4096)
    if head.startswith(b"PAR1") or path.suffix.lower() == ".parquet":
        return LogFormat.PARQUET
    first = head.split(b"\n", 1)[0].decode("utf-8", errors="replace").strip()
    if "::" in first:
        return LogFormat.ML_1M
    fields = first.split("\t")
    if len(fields) in (3, 4) and all(_is_number(f) for f in fields):
        return LogFormat.ML_100K
    header = {name.strip().strip('"') for name in first.split(",")}
    if {"userId", "movieId"} <= header:
        return LogFormat.ML_LATEST
    if path.suffix.lower() in {".csv", ".txt"}:
        return LogFormat.CSV
    choices = ", ".join(f.value for f in LogFormat if f is not LogFormat.AUTO)
    raise ConfigError(
        f"{path}: cannot tell its format (not Parquet, not a MovieLens file, not .csv); "
        f"name it with --format ({choices})"
    )


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _read_raw(path: Path, fmt: LogFormat, as_text: tuple[str, ...] = ()) -> pd.DataFrame:
    """The file's rows; the columns named in ``as_text`` exactly as written (CSV layouts)."""
    if fmt is LogFormat.PARQUET:
        import pyarrow.parquet as pq

        # A path, not a Python file object (which pd.read_parquet would pass): pyarrow reading
        # through a Python handle can abort the process at exit ("terminate called without an
        # active exception", SIGABRT) after the error was already printed.
        return pq.read_table(str(path)).to_pandas()
    text = dict.fromkeys(as_text, str)
    if fmt is LogFormat.ML_100K:
        return pd.read_csv(path, sep="\t", header=None, names=_MOVIELENS_COLUMNS, dtype=text)
    if fmt is LogFormat.ML_1M:
        # "::" is not a one-character separator (pandas would need its slow Python engine)
        data = path.read_bytes().replace(b"::", b"\t")
        return pd.read_csv(
            io.BytesIO(data), sep="\t", header=None, names=_MOVIELENS_COLUMNS, dtype=text
        )
    if fmt is LogFormat.ML_LATEST:
        original = {v: k for k, v in _ML_LATEST_NAMES.items()}
        raw = pd.read_csv(path, dtype={original.get(c, c): str for c in as_text})
        return raw.rename(columns=_ML_LATEST_NAMES)
    return pd.read_csv(path, dtype=text)


def _integer_ids(values: pd.Series) -> tuple[pd.Series, pd.Series]:
    """Ids as int64 (-1 where invalid) and, per row, why it is invalid (None when valid).

    Values beyond int64 are reported, never wrapped: a file's 9223372036854775808 is not -1.
    Text is parsed exactly (a float would round long digit strings); ``"10.0"`` counts as 10.
    """
    reasons = pd.Series(None, index=values.index, dtype=object)
    if pd.api.types.is_unsigned_integer_dtype(values):
        too_big = values > _INT64_MAX
        reasons[too_big] = _BEYOND_INT64
        return values.where(~too_big, 0).astype("int64").where(~too_big, -1), reasons
    if pd.api.types.is_signed_integer_dtype(values):
        return values.astype("int64"), reasons
    numbers = pd.to_numeric(values, errors="coerce").astype("float64")
    # exact as a float64 and so as an int64; the rest (rare) is checked value by value below
    exact = numbers.notna() & (numbers == np.floor(numbers)) & (numbers.abs() < 2.0**53)
    ids = numbers.where(exact, -1).astype("int64")
    is_text = not pd.api.types.is_numeric_dtype(values)
    for row in np.flatnonzero(~exact.to_numpy()):
        value = values.iloc[row]
        number: int | None = None
        if is_text and isinstance(value, str) and value.strip().lstrip("+-").isdigit():
            number = int(value)
        elif pd.notna(numbers.iloc[row]) and float(numbers.iloc[row]).is_integer():
            number = int(numbers.iloc[row])
        if number is None:
            reasons.iloc[row] = "not an integer id"
        elif not _INT64_MIN <= number <= _INT64_MAX:
            reasons.iloc[row] = _BEYOND_INT64
        else:
            ids.iloc[row] = number
    return ids, reasons


def read_interactions(path: Path, fmt: LogFormat = LogFormat.AUTO) -> pd.DataFrame:
    """Read and validate a real interaction log: this project's CSV/Parquet or MovieLens' own.

    ``fmt`` names the layout (`LogFormat`); ``auto`` detects it (`detect_format`). Raises
    `InputValidationError` naming the failing rows (1-based data rows) and why, with each bad
    value as the file gives it.
    """
    if not path.is_file():
        raise ConfigError(f"interactions file {path} does not exist")
    fmt = detect_format(path) if fmt is LogFormat.AUTO else LogFormat(fmt)
    log.info("reading %s as %s", path, fmt.value)
    try:
        raw = _read_raw(path, fmt)
    except (ValueError, OSError, pd.errors.ParserError) as err:
        raise InputValidationError(f"{path}: cannot be read as {fmt.value}: {err}") from err
    except Exception as err:  # pyarrow's errors (ArrowInvalid is a ValueError; others are not)
        if type(err).__module__.startswith("pyarrow"):
            raise InputValidationError(f"{path}: cannot be read as {fmt.value}: {err}") from err
        raise

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

    raw = raw.reset_index(drop=True)
    frame = pd.DataFrame(index=raw.index)
    bad_types = []
    for col in ("user_id", "content_id"):
        ids, reasons = _integer_ids(raw[col])
        bad = np.flatnonzero(reasons.notna().to_numpy())[:_REPORT_ROWS]
        given = raw[col]
        if len(bad) and fmt is not LogFormat.PARQUET and given.dtype.kind == "f":
            # a float column has rounded long ids: show the values as the file writes them
            given = _read_raw(path, fmt, as_text=(col,))[col]
        for r in bad:
            value = given[r].item() if isinstance(given[r], np.generic) else given[r]
            bad_types.append(f"  row {r + 1:>8}  {col:<14} {reasons.iloc[r]}, got {value!r}")
        frame[col] = ids
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
    return frame


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


def plot_rating_vs_watch(interactions: pd.DataFrame) -> bytes:
    """The original project's scatter of rating against watch time, as PNG bytes."""
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
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", metadata={"Software": None})
    plt.close(fig)
    return buffer.getvalue()


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
    if settings.raw_snapshot is not None or settings.uses_simulator:
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
    log_format = LogFormat.AUTO
    if settings.interactions_file is not None:
        if not settings.interactions_file.is_file():
            raise ConfigError(f"interactions file {settings.interactions_file} does not exist")
        log_format = settings.interactions_format
        if log_format is LogFormat.AUTO:
            log_format = detect_format(settings.interactions_file)
        inputs["interactions_file"] = {
            "name": settings.interactions_file.name,
            "sha256": sha256_file(settings.interactions_file),
        }
        if log_format not in (LogFormat.CSV, LogFormat.PARQUET):  # (keeps older versions' ids)
            inputs["interactions_file"]["format"] = log_format.value
        inputs["generator"] = None
    else:
        inputs["interactions_file"] = None
        inputs["generator"] = settings.simulator.as_dict() if settings.uses_simulator else None
    logged = None
    if settings.events:
        from pipelines.events.training import event_tables

        logged = event_tables(settings.data_dir)
        inputs["events"] = {"files": logged.files}  # (absent without --events: same versions)
        log.info("events: %s", ", ".join(f"{n} {k}" for k, n in logged.counts.items()))
    version = _version_of(inputs)
    if store.exists(version):
        try:
            manifest = store.verify(version)
        except SnapshotCorruptError as err:
            raise SnapshotCorruptError(
                f"{err}; remove {store.root / version} to build it again"
            ) from err
        store.set_latest(version)
        log.info("feature snapshot %s already exists for these inputs", version)
        rows = dict(manifest.get("row_counts") or {})
        return FeatureResult(version, store.resolve(version), created=False, rows=rows)

    catalog = catalog_from_raw(raw_dir) if raw_dir is not None else None
    if settings.interactions_file is not None:
        interactions = read_interactions(settings.interactions_file, log_format)
    elif not settings.uses_simulator:
        interactions = pd.DataFrame(columns=INTERACTION_COLUMNS)
    else:
        if catalog is None:  # unreachable: without a log, a raw snapshot was resolved above
            raise SnapshotNotFoundError("the simulator needs a raw snapshot; run the crawl first")
        if catalog.empty:
            raise InputValidationError(f"raw snapshot {raw_dir} holds no movies")

        def progress(done: int, total: int) -> None:
            log.info("simulated %d/%d users", done, total)

        interactions = simulate(catalog, settings.simulator, _anchor(raw_manifest), progress)
        validate_interactions(interactions, source="simulator")
    if logged is not None:
        interactions = _with_clicks(interactions, logged.interactions)
    catalog = _complete_catalog(catalog, interactions)
    try:
        CATALOG_SCHEMA.validate(catalog, lazy=True)
    except pa.errors.SchemaErrors as err:
        raise InputValidationError(
            "catalog failed validation; nothing was published", _report(err)
        ) from err

    rows = {"catalog": len(catalog), "interactions": len(interactions)}
    if logged is not None:
        rows["exposures"] = len(logged.exposures)
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
    log.info("serialising catalog (%d rows) and interactions (%d rows)", *rows.values())
    files = {
        layout.FEATURES_CATALOG: _parquet_bytes(catalog),
        layout.FEATURES_INTERACTIONS: _parquet_bytes(interactions),
        layout.FEATURES_PLOT: plot_rating_vs_watch(interactions),
    }
    if logged is not None:
        files[layout.FEATURES_EXPOSURES] = _parquet_bytes(logged.exposures)
    with store.staging(version) as staging:
        store.write_files(staging, files)
        published = store.publish(staging, version, manifest)
    if not published.created:
        log.info("feature snapshot %s was published meanwhile by another build", version)
    return FeatureResult(version, published.path, created=published.created, rows=rows)


def _with_clicks(base: pd.DataFrame, clicks: pd.DataFrame) -> pd.DataFrame:
    """``base`` plus the logged clicks, validated; a click equal to a base row is kept once."""
    if clicks.empty and base.empty:
        raise InputValidationError(
            "no clicks were logged yet (impressions alone are exposure, not interactions): "
            "nothing to train on; add --simulate or --interactions FILE, or wait for clicks"
        )
    parts = [frame for frame in (base, clicks) if not frame.empty]
    merged = pd.concat(parts, ignore_index=True) if len(parts) > 1 else parts[0]
    merged = merged.drop_duplicates(["user_id", "content_id", "timestamp"], keep="first")
    merged = merged.reset_index(drop=True)[INTERACTION_COLUMNS]
    validate_interactions(merged, source="events")
    return merged


def _parquet_bytes(frame: pd.DataFrame) -> bytes:
    buffer = io.BytesIO()
    frame.to_parquet(buffer, index=False, compression="zstd")
    return buffer.getvalue()


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
    log_format: Annotated[
        LogFormat,
        typer.Option(
            "--format",
            help="Layout of --interactions: this project's csv/parquet or MovieLens' own "
            "(ml-100k u.data, ml-1m ratings.dat, ml-latest ratings.csv); auto detects it.",
        ),
    ] = LogFormat.AUTO,
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
    events: Annotated[
        bool,
        typer.Option(
            "--events",
            help="Add the logged clicks (DATA_DIR/events) as interactions; impressions without "
            "a click go to exposures.parquet. Alone: events only.",
        ),
    ] = False,
    simulate: Annotated[
        bool, typer.Option("--simulate", help="With --events: add the simulator's interactions.")
    ] = False,
    verbose: Verbose = False,
) -> None:
    """Build a feature snapshot from the latest raw snapshot (or a real log) and publish it."""
    cli.configure_logging(verbose)
    settings = FeatureSettings(
        data_dir=data_dir,
        raw_snapshot=raw_snapshot,
        interactions_file=interactions,
        interactions_format=log_format,
        simulator=SimulatorParams(mode=mode, seed=seed, users=users, mean_items=mean_items),
        events=events,
        simulate=simulate,
    )
    if simulate and not events:
        typer.echo("error: --simulate only goes with --events (it is the default)", err=True)
        raise typer.Exit(code=ConfigError.exit_code)
    if simulate and interactions is not None:
        typer.echo("error: --simulate and --interactions exclude each other", err=True)
        raise typer.Exit(code=ConfigError.exit_code)
    result = cli.run(lambda: build_features(settings))
    state = "published" if result.created else "already exists (same inputs), unchanged"
    typer.echo(
        f"features {result.version} {state}: {result.rows['catalog']} catalog rows, "
        f"{result.rows['interactions']} interactions -> {result.path}"
    )


@app.command("list")
def list_(data_dir: DataDir = DATA_DIR.default_path) -> None:
    """List feature snapshots, oldest first; `*` marks latest. Exit 3 if any is corrupt."""
    root = layout.DataLayout(data_dir).features
    store = SnapshotStore(root)
    infos = store.list()
    problems = [f"{info.snapshot_id}: {info.problem}" for info in infos if info.problem]
    try:
        store.latest_id()
    except SnapshotCorruptError as err:
        problems.append(str(err))
    if not infos:
        typer.echo(f"no feature snapshots under {root}")
    else:
        typer.echo(
            f"  {'version':<20} {'published (UTC)':<20} {'interactions':>12} {'catalog':>8}  source"
        )
    for info in infos:
        mark = "*" if info.is_latest else " "
        when = f"{info.published_at:%Y-%m-%d %H:%M:%S}"
        if info.problem:
            typer.echo(f"{mark} {info.snapshot_id:<20} {when} {'CORRUPT':>12} {'-':>8}  see below")
            continue
        m = info.manifest
        source = (m.get("source") or {}).get("raw_snapshot") or (
            (m.get("source") or {}).get("interactions_file") or {}
        ).get("name")
        counts = m.get("row_counts") or {}
        typer.echo(
            f"{mark} {info.snapshot_id:<20} {when} {counts.get('interactions', '-'):>12} "
            f"{counts.get('catalog', '-'):>8}  {source}"
        )
    if problems:
        for problem in problems:
            typer.echo(f"error: corrupt: {problem}", err=True)
        raise typer.Exit(code=SnapshotCorruptError.exit_code)


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
