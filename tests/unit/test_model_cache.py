"""The predictor's download cache for ``--model_uri`` is private to the user running it.

A cached artefact carries its own checksums, so whoever can write into the cache chooses the
model served: the default is one directory per user, created 0700, and a cache another user
owns, that others may write to or that is a symlink is refused.
"""

from __future__ import annotations

import os
import stat
import tempfile
from pathlib import Path

import pytest

from model_server.errors import ModelSourceError
from model_server.settings import parse_settings
from model_server.source import private_cache


def test_the_default_cache_is_one_per_user_in_the_temp_dir() -> None:
    settings = parse_settings(["--model_uri", "models:/m/1"], {})
    expected = Path(tempfile.gettempdir()) / f"movie-mlops-models-{os.getuid()}"
    assert settings.cache_dir == expected
    given = parse_settings(["--model_uri", "models:/m/1"], {"MODEL_CACHE_DIR": "/srv/cache"})
    assert given.cache_dir == Path("/srv/cache")


def test_a_missing_cache_is_created_private(tmp_path: Path) -> None:
    cache = private_cache(tmp_path / "a" / "cache")
    assert stat.S_IMODE(cache.stat().st_mode) == 0o700
    assert private_cache(cache) == cache  # and accepted once it exists


@pytest.mark.parametrize("mode", [0o777, 0o775, 0o1777])
def test_a_cache_others_may_write_to_is_refused(tmp_path: Path, mode: int) -> None:
    cache = tmp_path / "cache"
    cache.mkdir()
    cache.chmod(mode)
    with pytest.raises(ModelSourceError, match="writable by group or others"):
        private_cache(cache)


def test_a_symlinked_cache_is_refused(tmp_path: Path) -> None:
    real = tmp_path / "real"
    real.mkdir(mode=0o700)
    (tmp_path / "cache").symlink_to(real)
    with pytest.raises(ModelSourceError, match="symlink or not a directory"):
        private_cache(tmp_path / "cache")


@pytest.mark.skipif(os.getuid() != 0, reason="only root can give a directory to another user")
def test_a_cache_another_user_owns_is_refused(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    cache.mkdir(mode=0o700)
    os.chown(cache, 65534, 65534)
    with pytest.raises(ModelSourceError, match="belongs to uid 65534"):
        private_cache(cache)
