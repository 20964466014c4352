"""Logged feedback as training data (``python -m pipelines.features build --events``).

What the page logged becomes two tables:

- **interactions** (clicks = positives): one row per (user, item) the user clicked, at the time of
  the first click. A click says "interested", not how long anyone watched, so ``rating`` is null
  and ``watch_seconds`` is 0: in confidence weighting (`recommenders.data`) the row gets the base
  weight 1 of an interaction that happened, with no strength added; evaluation counts it as a
  positive like any interaction.
- **exposures** (impressions without a click on that item in that response): shown, not chosen.
  They are *not* negatives in the interactions table — the recommenders here learn from positives
  only, and an unclicked card below the fold says little — but they are kept in the snapshot
  (``exposures.parquet``: user, item, position, model version, request id, time) for click-through
  rates per version and position and for exposure-aware models later.

User ids: the page sends a known user's id (digits: the same id space as the training data, so a
click by user 42 adds to user 42's history) or ``anon-<uuid>`` for a visitor; an anonymous key
becomes a stable id in ``[2**62, 2**63)`` (`anonymous_user_id`), apart from the numeric ids.

Lineage: every part file read is named (path under ``DATA_DIR``) with its sha256 and size; the
feature version is a digest of that list, so new events give a new version and the same events
the same one.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from contracts import events as ev
from contracts.files import sha256_file
from pipelines.errors import InputValidationError
from pipelines.events import store

ANONYMOUS_BASE = 1 << 62
EXPOSURE_COLUMNS = [
    "user_id",
    "content_id",
    "position",
    "model_version",
    "request_id",
    "timestamp",
]


@dataclass(frozen=True)
class EventTables:
    """Interactions (clicks) and exposures from the logged feedback, and the files read."""

    interactions: pd.DataFrame
    exposures: pd.DataFrame
    files: list[dict[str, Any]]
    counts: dict[str, int]


def anonymous_user_id(key: str) -> int:
    """A stable int64 id for a non-numeric user key, in ``[2**62, 2**63)``."""
    digest = hashlib.sha256(key.encode()).digest()
    return ANONYMOUS_BASE + (int.from_bytes(digest[:8], "big") % ANONYMOUS_BASE)


def user_ids(keys: pd.Series) -> pd.Series:
    """The training user id of each user key (digits as they are, others hashed)."""
    numeric = keys.str.fullmatch(r"\d{1,18}")
    out = pd.Series(np.zeros(len(keys), dtype=np.int64), index=keys.index)
    out[numeric] = keys[numeric].astype("int64")
    out[~numeric] = keys[~numeric].map(anonymous_user_id).astype("int64")
    return out


def lineage(data_dir: Path, files: list[Path]) -> list[dict[str, Any]]:
    """Each file as ``{"path": <relative to DATA_DIR>, "sha256", "bytes"}``."""
    root = Path(data_dir)
    return [
        {"path": str(p.relative_to(root)), "sha256": sha256_file(p), "bytes": p.stat().st_size}
        for p in files
    ]


def event_tables(data_dir: Path) -> EventTables:
    """Read every published impression and click part file; see the module docstring."""
    files = store.part_files(data_dir, ev.FEEDBACK_KINDS)
    if not files:
        raise InputValidationError(
            f"no logged impressions or clicks under {store.events_root(data_dir)}: serve "
            "predictions through the ingress and post feedback first (or drop --events)"
        )
    by_kind = {
        kind: store.read_kind(data_dir, kind, [p for p in files if p.parts[-4] == kind]).to_pandas()
        for kind in ev.FEEDBACK_KINDS
    }
    clicks, impressions = by_kind[ev.CLICK], by_kind[ev.IMPRESSION]
    clicks = clicks.assign(user=user_ids(clicks["user_id"]))
    impressions = impressions.assign(user=user_ids(impressions["user_id"]))

    first = (
        clicks.sort_values("received_at", kind="stable")
        .drop_duplicates(["user", "item_id"], keep="first")
        .sort_values(["user", "item_id"], kind="stable")
    )
    interactions = pd.DataFrame(
        {
            "user_id": first["user"].astype("int64").to_numpy(),
            "content_id": first["item_id"].astype("int64").to_numpy(),
            "watch_seconds": np.zeros(len(first), dtype="float64"),
            "rating": np.full(len(first), np.nan, dtype="float64"),
            "timestamp": pd.to_datetime(first["received_at"], utc=True).dt.as_unit("us").to_numpy(),
        }
    )
    interactions["timestamp"] = pd.to_datetime(interactions["timestamp"], utc=True).dt.as_unit("us")

    clicked = set(zip(clicks["request_id"], clicks["item_id"], strict=True))
    keep = [
        (r, i) not in clicked
        for r, i in zip(impressions["request_id"], impressions["item_id"], strict=True)
    ]
    shown = impressions[keep].sort_values(["received_at", "request_id", "position"], kind="stable")
    exposures = pd.DataFrame(
        {
            "user_id": shown["user"].astype("int64").to_numpy(),
            "content_id": shown["item_id"].astype("int64").to_numpy(),
            "position": shown["position"].astype("int64").to_numpy(),
            "model_version": shown["model_version"].astype(str).to_numpy(),
            "request_id": shown["request_id"].astype(str).to_numpy(),
            "timestamp": pd.to_datetime(shown["received_at"], utc=True).dt.as_unit("us").to_numpy(),
        }
    )[EXPOSURE_COLUMNS]
    exposures["timestamp"] = pd.to_datetime(exposures["timestamp"], utc=True).dt.as_unit("us")
    counts = {
        "clicks": len(clicks),
        "impressions": len(impressions),
        "clicked_items": len(interactions),
        "exposures": len(exposures),
    }
    return EventTables(interactions, exposures, lineage(data_dir, files), counts)
