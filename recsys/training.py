"""Train a model, measure it on the holdout, and write its artefact with metadata.

    from model_a import model
    train_and_save(model, Path("models"))

Each model package (`model_a`, `model_b`) has a `model` module that is a `Trainer` (NAME, ALGORITHM, LIBRARY,
PARAMS, PREDICTS_RATINGS and `train(data, split, seed=...) -> FactorModel`); this module does the rest once.
It never imports a model package itself: callers pass the trainer, and `trainer(name)` finds one through
the `ab_router.models` entry points that pyproject.toml declares, so this library stays below the model
packages (and a third model registers itself the same way).
"""

from __future__ import annotations

import json
import logging
import os
import time
from datetime import UTC, datetime
from importlib.metadata import entry_points
from pathlib import Path
from typing import Protocol, cast

from tqdm import tqdm

from recsys.data import Dataset, Split, canonical_spec, default_spec, holdout_split, load_dataset
from recsys.evaluation import evaluate
from recsys.recommender import ArtefactError, FactorModel

#: The product's two model packages (more can register under the entry-point group).
MODEL_NAMES = ("model_a", "model_b")
ENTRY_POINT_GROUP = "ab_router.models"
DEFAULT_SEED = 42
log = logging.getLogger(__name__)


class Trainer(Protocol):
    """What a model package's `model` module provides (see the module docstring)."""

    NAME: str
    ALGORITHM: str
    LIBRARY: str
    PARAMS: dict[str, object]
    PREDICTS_RATINGS: bool

    def train(self, data: Dataset, split: Split, *, seed: int) -> FactorModel: ...


def trainer(name: str) -> Trainer:
    """The training module of the model package registered as `name` (imported now: it brings its library)."""
    found = entry_points(group=ENTRY_POINT_GROUP, name=name)
    if not found:
        known = sorted(point.name for point in entry_points(group=ENTRY_POINT_GROUP))
        raise ValueError(f"unknown model {name!r}: choose one of {', '.join(known) or 'none installed'}")
    return cast(Trainer, next(iter(found)).load())


def default_models_dir() -> Path:
    """Where artefacts live: `MODELS_DIR`, else ./models."""
    return Path(os.environ.get("MODELS_DIR", "models"))


def train_and_save(
    model_trainer: Trainer,
    models_dir: Path,
    *,
    data_spec: str | None = None,
    seed: int = DEFAULT_SEED,
    progress: bool = True,
) -> FactorModel:
    """Load data, split, fit, evaluate offline, save `models_dir/NAME.{npz,json}`; returns the model."""
    name = model_trainer.NAME
    steps = tqdm(total=4, desc=f"train {name}", unit="step", disable=not progress, leave=True)
    steps.set_postfix_str("loading data")
    data = load_dataset(data_spec or default_spec())
    split = holdout_split(data)
    steps.update()
    steps.set_postfix_str(f"fitting {model_trainer.ALGORITHM}")
    started = time.perf_counter()
    model = model_trainer.train(data, split, seed=seed)
    training_seconds = time.perf_counter() - started
    steps.update()
    steps.set_postfix_str("evaluating on the holdout")
    metrics = evaluate(model.score_matrix, data, split, predicts_ratings=model_trainer.PREDICTS_RATINGS)
    steps.update()
    steps.set_postfix_str("saving")
    model.metadata = {
        "model": name,
        "algorithm": model_trainer.ALGORITHM,
        "library": model_trainer.LIBRARY,
        "params": model_trainer.PARAMS,
        "dataset": data.describe(),
        "seed": seed,
        "trained_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "training_seconds": round(training_seconds, 3),
        "metrics": metrics.as_dict(),
    }
    model.save(models_dir / name)
    steps.update()
    steps.set_postfix_str(f"saved {models_dir / name}.npz in {training_seconds:.1f}s")
    steps.close()
    return model


def is_trained(name: str, models_dir: Path, spec: str) -> bool:
    """Whether `models_dir` holds a readable artefact of `name` trained on the data `spec`."""
    meta = (models_dir / name).with_suffix(".json")
    if not meta.is_file() or not (models_dir / name).with_suffix(".npz").is_file():
        return False
    try:
        trained_on = json.loads(meta.read_text(encoding="utf-8")).get("dataset", {}).get("spec")
    except (OSError, ValueError):
        return False
    return bool(trained_on == canonical_spec(spec))


def load_or_train(
    model_trainer: Trainer, models_dir: Path, *, data_spec: str | None = None, seed: int = DEFAULT_SEED
) -> FactorModel:
    """The saved artefact if it matches the data spec; otherwise train one now (and save it)."""
    name = model_trainer.NAME
    spec = data_spec or default_spec()
    try:
        model = FactorModel.load(models_dir / name)
    except ArtefactError as exc:
        log.info("no usable artefact for %s (%s): training one now", name, exc)
        return train_and_save(model_trainer, models_dir, data_spec=spec, seed=seed, progress=False)
    trained_on = model.metadata.get("dataset", {}).get("spec")
    if trained_on != canonical_spec(spec):
        log.warning("artefact %s was trained on %r, not %r: retraining", name, trained_on, spec)
        return train_and_save(model_trainer, models_dir, data_spec=spec, seed=seed, progress=False)
    return model
