"""Fixtures shared by the test modules."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture
def isolated_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh, empty stage cache for one test (``$PRIVIMAGE_CACHE``), so no test reads another's stages."""
    root = tmp_path / "cache"
    monkeypatch.setenv("PRIVIMAGE_CACHE", str(root))
    return root


@pytest.fixture(scope="module")
def module_cache(tmp_path_factory: pytest.TempPathFactory):
    """One fresh cache shared by the tests of a module, for a stage they all reuse (a rendering, a trained model)."""
    root = tmp_path_factory.mktemp("cache")
    patch = pytest.MonkeyPatch()
    patch.setenv("PRIVIMAGE_CACHE", str(root))
    yield root
    patch.undo()
