"""Event files under ``DATA_DIR/events/``: written whole and atomically, read by pattern.

Layout::

    events/<kind>/date=YYYY-MM-DD/hour=HH/part-<uuid>.parquet

``kind`` is request, response, impression or click; the date and hour are the UTC time the sink
received the events (Hive-style partitions, so ``pyarrow.dataset`` and DuckDB read them as
columns). A part file is serialised in memory, written to ``.part-<uuid>.parquet.tmp-<pid>`` in
the same folder, fsync'ed and renamed (`contracts.files.atomic_write_bytes`): a reader that lists
``part-*.parquet`` never sees a partial file, and a ``kill -9`` mid-write leaves at most a
dot-named temporary, which the next start removes (`sweep_temporaries`).
"""

from __future__ import annotations

import logging
import os
import re
import uuid
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from contracts import events as ev
from contracts.files import atomic_write_bytes, pid_alive
from pipelines.events.schema import ARROW_SCHEMAS

log = logging.getLogger(__name__)

# Parquet's default codec, readable everywhere: about half zstd's CPU per event (files 1.7x
# larger), as the sink shares its machine with the predictor locally (docs/decisions.md)
CODEC = "snappy"
# columns with few distinct values, dictionary-encoded; ids and payloads are not (a dictionary of
# unique values costs time and saves nothing)
DICTIONARY_COLUMNS = [
    "type", "source", "inference_service", "namespace", "component", "endpoint", "model_version",
    "content_type", "metadata", "user_key", "user_id",
]  # fmt: skip
_TMP = re.compile(r"^\.part-[0-9a-f]{32}\.parquet\.tmp-(?P<pid>\d+)$")


def events_root(data_dir: Path) -> Path:
    return Path(data_dir) / ev.EVENTS_DIR


def partition_dir(root: Path, kind: str, when: datetime) -> Path:
    return root / kind / f"date={when:%Y-%m-%d}" / f"hour={when:%H}"


def write_part(root: Path, kind: str, rows: list[tuple[Any, ...]], when: datetime) -> Path:
    """Publish ``rows`` of one kind (tuples in its schema's column order) as one new part file;
    its path."""
    return publish_part(root, kind, to_table(kind, rows), when)


def to_table(kind: str, rows: list[tuple[Any, ...]]) -> pa.Table:
    """The rows (tuples in the kind's schema order) as a table, one column at a time (reads
    Python objects: holds the GIL throughout, so the sink runs it on its event loop rather than
    in a thread that would fight it for the GIL)."""
    schema = ARROW_SCHEMAS[kind]
    if not rows:
        return schema.empty_table()
    columns = zip(*rows, strict=True)
    arrays = [pa.array(c, type=f.type) for c, f in zip(columns, schema, strict=True)]
    return pa.Table.from_arrays(arrays, schema=schema)


def prime() -> None:
    """Do once what the first write would do lazily: converting a timezone-aware datetime makes
    pyarrow import pandas (seconds of CPU), and writing Parquet loads its writer. The sink calls
    this at start, not on its first flush under load."""
    pa.array([datetime.now(UTC)], type=pa.timestamp("us", tz="UTC"))
    for kind, schema in ARROW_SCHEMAS.items():
        pq.write_table(schema.empty_table(), pa.BufferOutputStream(), compression=CODEC)
        log.debug("primed the %s writer", kind)


def publish_part(root: Path, kind: str, table: pa.Table, when: datetime) -> Path:
    """Compress ``table`` and publish it as one new part file (atomic); its path. Arrow and file
    I/O only: fine in a worker thread."""
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, compression=CODEC, use_dictionary=DICTIONARY_COLUMNS)
    folder = partition_dir(root, kind, when)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"part-{uuid.uuid4().hex}.parquet"
    atomic_write_bytes(path, sink.getvalue().to_pybytes())
    return path


def sweep_temporaries(root: Path) -> int:
    """Remove temporaries a killed writer left (its pid dead, or this process's own pid —
    which at start means an earlier incarnation, as in a restarted container); how many."""
    removed = 0
    if not root.is_dir():
        return 0
    for path in root.glob("*/date=*/hour=*/.part-*"):
        match = _TMP.match(path.name)
        if match is None:
            continue
        pid = int(match["pid"])
        if pid == os.getpid() or not pid_alive(pid):
            path.unlink(missing_ok=True)
            removed += 1
    if removed:
        log.warning("removed %d partial event file(s) left by a killed sink", removed)
    return removed


def part_files(data_dir: Path, kinds: Iterable[str] = ev.KINDS) -> list[Path]:
    """Every published part file of ``kinds``, in a stable order (kind, date, hour, name)."""
    root = events_root(data_dir)
    found: list[Path] = []
    for kind in kinds:
        found += sorted((root / kind).glob("date=*/hour=*/part-*.parquet"))
    return found


def read_kind(data_dir: Path, kind: str, files: list[Path] | None = None) -> pa.Table:
    """All published events of one kind as one table (empty table when there are none)."""
    paths = part_files(data_dir, [kind]) if files is None else files
    tables = [pq.ParquetFile(str(p)).read().cast(ARROW_SCHEMAS[kind]) for p in paths]
    if not tables:
        return ARROW_SCHEMAS[kind].empty_table()
    return pa.concat_tables(tables)
