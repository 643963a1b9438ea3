"""Fixtures shared across the test suite: trained artefacts, built once per session."""

from __future__ import annotations

from pathlib import Path

import pytest

from recsys.training import MODEL_NAMES, train_and_save, trainer
from tests.support.postgres import postgres, postgres_url  # noqa: F401  (fixtures: a real PostgreSQL 15 server)


@pytest.fixture(scope="session")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Both models trained on the default synthetic data set (about 2 s), in a session-wide folder."""
    directory = tmp_path_factory.mktemp("models")
    for name in MODEL_NAMES:
        train_and_save(trainer(name), directory, data_spec="synthetic", progress=False)
    return directory
