"""Shared test fixtures.

Real-data tests use ``$BRAIN_TUMOR_DATA`` or ``../shared/data/brain_tumor_data`` (likewise
``$BRAIN_TUMOR_FREE_DATA`` / ``tumor_free`` and ``$FIGSHARE_DATA`` / ``figshare``); they are skipped
when neither exists, except under ``CI=true`` where they must run.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def _first_existing(*candidates):
    for c in candidates:
        if c and Path(c).is_dir():
            return Path(c)
    return None


def _need(path, what):
    if path is None:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"{what} not found, and CI=true requires it")
        pytest.skip(f"{what} not available")
    return path


@pytest.fixture(autouse=True)
def _no_real_release(tmp_path_factory, monkeypatch):
    """Tests see an empty models folder ($BRAINTUMOR_MODELS), not the repository's release, unless they set their own."""
    monkeypatch.setenv("BRAINTUMOR_MODELS", str(tmp_path_factory.mktemp("models")))


@pytest.fixture(scope="session")
def real_data_dir() -> Path:
    """The real brain_tumor_data folder (train/ and val/ with annotations.json)."""
    return _need(_first_existing(os.environ.get("BRAIN_TUMOR_DATA"), ROOT.parent / "shared" / "data" / "brain_tumor_data"),
                 "brain_tumor_data")


@pytest.fixture(scope="session")
def figshare_dir() -> Path:
    """The real Figshare folder (images/N.jpg and annotations.json)."""
    return _need(_first_existing(os.environ.get("FIGSHARE_DATA"), ROOT.parent / "shared" / "data" / "figshare"),
                 "figshare data")


@pytest.fixture(scope="session")
def tumor_free_dir() -> Path:
    """The real tumor-free image folder (Br35H 'no' images)."""
    return _need(_first_existing(os.environ.get("BRAIN_TUMOR_FREE_DATA"), ROOT.parent / "shared" / "data" / "tumor_free"),
                 "tumor_free data")
