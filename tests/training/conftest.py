"""Fixtures of tests/training: the speech and evaluation corpora of the shared folder.

Each skips, naming the missing file, when the shared folder (MMER_SHARED, default ../shared;
see tests/conftest.py) does not hold that corpus.
"""

from __future__ import annotations

from pathlib import Path

import pytest


def _corpus(shared_dir: Path, rel: str, marker: str) -> Path:
    root = shared_dir / rel
    if not (root / marker).is_file():
        pytest.skip(f"{root / marker} not found (shared corpus absent; set MMER_SHARED)")
    return root


@pytest.fixture(scope="session")
def tess_dir(shared_dir: Path) -> Path:
    """The real TESS clips of ../shared/data/TESS."""
    return _corpus(shared_dir, "data/TESS", "labels.csv")


@pytest.fixture(scope="session")
def ravdess_dir(shared_dir: Path) -> Path:
    """The 336 RAVDESS speech clips of ../shared/eval/ravdess_speech (evaluation only)."""
    return _corpus(shared_dir, "eval/ravdess_speech", "labels.csv")


@pytest.fixture(scope="session")
def dailydialog_dir(shared_dir: Path) -> Path:
    """The DailyDialog test CSV of ../shared/eval/dailydialog_test (evaluation only)."""
    return _corpus(shared_dir, "eval/dailydialog_test", "dailydialog_test.csv")
