"""The user's cache folder (platformdirs) and the pretraining superpixel cache under it."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pytest

from ContrastiveSegLib.paths import user_cache_dir


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="XDG folders are Linux's")
def test_cache_folder_follows_xdg_cache_home_and_defaults_to_dot_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert user_cache_dir() == tmp_path / "xdg" / "contrastiveseg"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert user_cache_dir() == tmp_path / "home" / ".cache" / "contrastiveseg"


def test_superpixel_cache_is_under_the_cache_folder_unless_given(monkeypatch, tmp_path):
    from ContrastiveSegLib.cli_pretrain import _cache_dir

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert _cache_dir(argparse.Namespace(cache_dir=None)) == user_cache_dir() / "superpixels"
    assert _cache_dir(argparse.Namespace(cache_dir=Path("/elsewhere"))) == Path("/elsewhere")
