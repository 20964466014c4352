"""The artefact round-trips exactly and refuses missing or tampered files."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from recommenders import EASE, MODELS, load, save
from recommenders.artifact import FORMAT_VERSION
from recommenders.errors import ArtifactCorruptError, ArtifactError
from recommenders.synthetic import synthetic_interactions


@pytest.fixture(scope="module")
def data() -> tuple[pd.DataFrame, pd.DataFrame]:
    return synthetic_interactions(n_users=200, n_items=80, n_interactions=3000, seed=2)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_round_trip_gives_identical_rankings(name: str, data, tmp_path: Path) -> None:
    interactions, catalog = data
    params = {"epochs": 1} if name == "movie_predictor" else {}
    fitted = MODELS[name](**params).fit(interactions, catalog, trained_on={"features": "v1"})
    save(fitted, tmp_path)
    loaded = load(tmp_path)
    assert loaded.model_type == fitted.model_type
    assert loaded.trained_on == {"features": "v1"}
    users = [*interactions["user_id"].drop_duplicates().head(30).tolist(), -1]
    histories = [None] * 30 + [interactions["content_id"].head(4).tolist()]
    for a, b in zip(
        fitted.recommend_many(users, histories),
        loaded.recommend_many(users, histories),
        strict=True,
    ):
        np.testing.assert_array_equal(a.content_ids, b.content_ids)
        # the loaded model answers known users from the top-k computed at save in blocks of 64
        # rows, the fitted one scores this batch online: same ranking, BLAS-rounding-equal scores
        np.testing.assert_allclose(a.scores, b.scores, rtol=1e-6)
    pd.testing.assert_frame_equal(loaded.catalog, fitted.catalog)
    metadata = json.loads((tmp_path / "recommender.json").read_text())
    assert metadata["n_items"] == fitted.n_items
    assert metadata["format_version"] == FORMAT_VERSION


@pytest.fixture
def saved(data, tmp_path: Path) -> Path:
    save(MODELS["popularity"]().fit(*data), tmp_path)
    return tmp_path


@pytest.mark.parametrize("name", ["arrays.npz", "recommender.json", "catalog.parquet"])
def test_a_corrupted_file_is_refused(saved: Path, name: str) -> None:
    path = saved / name
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    path.write_bytes(bytes(raw))
    with pytest.raises(ArtifactCorruptError, match=name):
        load(saved)


@pytest.mark.parametrize("name", ["arrays.npz", "checksums.json", "catalog.parquet"])
def test_a_missing_file_is_refused(saved: Path, name: str) -> None:
    (saved / name).unlink()
    with pytest.raises(ArtifactError, match=name):
        load(saved)


def test_a_pickled_array_is_never_loaded(saved: Path) -> None:
    # Even without checksum verification, object arrays (pickles) are refused.
    with (saved / "arrays.npz").open("wb") as fh:
        np.savez(fh, item_ids=np.array([{"evil": 1}], dtype=object))
    with pytest.raises(ArtifactCorruptError):
        load(saved, verify=False)


@pytest.mark.parametrize("version", [99, "2", None])
def test_unknown_format_version_is_refused(saved: Path, version: object) -> None:
    meta = json.loads((saved / "recommender.json").read_text())
    (saved / "recommender.json").write_text(json.dumps({**meta, "format_version": version}))
    with pytest.raises(ArtifactError, match="format_version"):
        load(saved, verify=False)


def test_an_old_format_artefact_is_refused_with_a_hint(saved: Path) -> None:
    # Version 1 stored EASE's B dense; this code cannot score it and says what to do.
    meta = json.loads((saved / "recommender.json").read_text())
    (saved / "recommender.json").write_text(json.dumps({**meta, "format_version": 1}))
    with pytest.raises(ArtifactError, match=r"format_version 1 .*retrain"):
        load(saved, verify=False)


def test_ease_weights_are_stored_sparse(data, tmp_path: Path) -> None:
    interactions, catalog = data
    save(EASE(neighbours=10).fit(interactions, catalog), tmp_path)
    with np.load(tmp_path / "arrays.npz", allow_pickle=False) as npz:
        assert "model__B" not in npz.files
        assert npz["model__B_indices"].dtype == np.int32
        assert npz["model__B_data"].dtype == np.float32
        n_items = len(npz["item_ids"])
        assert len(npz["model__B_data"]) <= 10 * n_items
    with np.load(tmp_path / "arrays.npz", allow_pickle=False) as npz:
        arrays = dict(npz)
    short = {**arrays, "model__B_indptr": arrays["model__B_indptr"][:-1]}  # n_items - 1 rows
    wild = {**arrays, "model__B_indices": arrays["model__B_indices"] + n_items}  # no such item
    for broken in (short, wild):
        with (tmp_path / "arrays.npz").open("wb") as fh:
            np.savez(fh, **broken)
        with pytest.raises(ArtifactCorruptError, match="EASE weights"):
            load(tmp_path, verify=False)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_precomputed_top_k_of_known_users_equals_the_online_ranking(
    name: str, data, tmp_path: Path
) -> None:
    """The artefact serves known users from a batch-computed top-k: it must rank exactly as
    scoring them online does, for every user and every k it covers (and fall back to online
    scoring beyond it)."""
    interactions, catalog = data
    params = {"epochs": 1} if name == "movie_predictor" else {}
    online = MODELS[name](**params).fit(interactions, catalog)  # never saved: no lookup table
    save(MODELS[name](**params).fit(interactions, catalog), tmp_path)
    served = load(tmp_path)
    assert online.precomputed is None
    assert served.precomputed is not None
    users = online.known_users.tolist()
    for k in (1, 10, 70, 79, 80):  # 70+ exceeds what some users have left unseen
        for user in users:
            a, b = online.recommend(user, k=k), served.recommend(user, k=k)
            np.testing.assert_array_equal(a.content_ids, b.content_ids)
            np.testing.assert_allclose(a.scores, b.scores, rtol=1e-6)
        for a, b in zip(
            online.recommend_many(users, k=k), served.recommend_many(users, k=k), strict=True
        ):
            np.testing.assert_array_equal(a.content_ids, b.content_ids)
            np.testing.assert_allclose(a.scores, b.scores, rtol=1e-6)
    for a, b in zip(  # exclude_seen=False is always scored online
        online.recommend_many(users, k=5, exclude_seen=False),
        served.recommend_many(users, k=5, exclude_seen=False),
        strict=True,
    ):
        np.testing.assert_array_equal(a.content_ids, b.content_ids)
