"""The adaptive phase's report: over a real router run, and the store's groups against per-exposure estimates."""

from __future__ import annotations

import random
from dataclasses import astuple
from pathlib import Path

import numpy as np
import pytest
from estimators.bandits import ips, snips  # vw-estimators, the reference (dev extra only)

from router.bandit import NormalGammaPrior
from router.report import build_report, render_html, render_markdown, report_to_json
from router.report.adaptive import assemble_adaptive
from router.report.ope import fixed_policy_values
from router.service import RouterService
from router.store.epochs import AdaptiveGroups, StoredEpoch
from tests.router.conftest import Backend, experiment, running_router, settings_for, wait_until
from tests.router.conftest import backend_servers as backend_servers  # the router tests' fake models
from tests.router.conftest import backends as backends

CTR = {"model_a": 0.1, "model_b": 0.5}


def settled(service: RouterService) -> bool:
    """The keeper serves the store's latest epoch, and that epoch is not due yet."""
    phase = service.epochs.phase
    assert phase is not None
    latest = service.store.latest_epoch(phase.plan.phase)
    assert latest is not None
    due = phase.plan.due(latest, service.store.epoch_exposures(phase.plan.phase, latest), latest.computed_at)
    return phase.stored.epoch == latest.epoch and not due


def test_the_report_of_a_real_bandit_run_shows_epochs_ope_and_reward_instead_of_ab(
    tmp_path: Path, backends: dict[str, Backend]
) -> None:
    raw = experiment(backends, strategy="thompson", bandit={"update_exposures": 40, "poll_seconds": 0.05})
    rng = random.Random(3)
    with running_router(settings_for(tmp_path, raw)) as router:
        for i in range(500):
            user = f"user-{rng.randrange(120)}"
            body = router.client.get(f"/recommend/{user}", params={"k": 3}).json()
            if rng.random() < CTR[body["variant"]]:
                event = {
                    "request_id": body["request_id"],
                    "user_id": user,
                    "item_id": body["items"][0],
                    "event": "click",
                }
                assert router.client.post("/feedback", json=event).status_code == 202
            if i % 50 == 49:  # let the keeper catch up now and then, so the run has several epochs
                router.flush()
                wait_until(lambda: settled(router.service), what="the keeper to serve an epoch that is not due")
        rows = router.rows(
            """SELECT e.user_id, e.assigned_variant, e.propensity, e.epoch,
                      EXISTS (SELECT 1 FROM feedback f WHERE f.request_id = e.request_id AND f.event = 'click')
               FROM exposures e ORDER BY e.id"""
        )
        report = build_report(router.service.store)
    section = report.adaptive
    assert section is not None and section.summary is not None and len(section.epochs) >= 5
    assert report.srm is None and not report.verdict_withheld  # no SRM against configured weights
    names = section.variants
    users = np.unique([r[0] for r in rows], return_inverse=True)[1]
    variant = np.array([names.index(r[1]) for r in rows])
    propensity, epoch, reward = (np.array([r[i] for r in rows], dtype=float) for i in (2, 3, 4))
    direct = fixed_policy_values(names, variant, propensity, reward, epoch=epoch.astype(int), unit=users)
    for ours, expected in zip(section.summary.values, direct, strict=True):  # the store's groups lose nothing
        for name in ("ips", "snips", "dr"):
            assert astuple(getattr(ours, name)) == pytest.approx(astuple(getattr(expected, name)), rel=1e-9)
    for x, value in enumerate(section.summary.values):  # and IPS / SNIPS equal the reference on the same logs
        reference = {"ips": ips.Estimator(), "snips": snips.Estimator()}
        for p, r, a in zip(propensity, reward, variant, strict=True):
            for estimator in reference.values():
                estimator.add_example(p_log=p, r=r, p_pred=float(a == x))
        assert value.ips is not None and value.ips.value == pytest.approx(reference["ips"].get(), rel=1e-12)
        assert value.snips is not None and value.snips.value == pytest.approx(reference["snips"].get(), rel=1e-12)
    assert section.summary.probability_best is not None and section.summary.probability_best[1] > 0.9
    assert section.summary.rewards.cumulative_reward == reward.sum()
    assert sum(row.exposures for row in section.epochs) == len(rows) == 500
    assert not section.summary.sample_ratio.mismatch
    markdown, html, data = render_markdown(report), render_html(report), report_to_json(report)
    for text in (markdown, html):
        assert "Off-policy estimates of fixed policies" in text and "Weight epochs" in text
        assert "always model_b" in text and "Verdict (primary metric" not in text
    assert data["adaptive"]["summary"]["values"][1]["dr"]["value"] == pytest.approx(section.summary.values[1].dr.value)  # type: ignore[union-attr]


def test_value_rewards_grouped_by_the_store_give_the_per_exposure_clustered_estimates() -> None:
    rng = np.random.default_rng(5)
    n = 3000
    user = rng.integers(0, 200, n)
    epoch = np.arange(n) // 500
    shares = np.where(epoch[:, None] == 0, 0.5, np.array([0.2, 0.8]))
    variant = (rng.random(n) < shares[:, 1]).astype(int)
    propensity = shares[np.arange(n), variant]
    reward = np.where(rng.random(n) < 0.3 + 0.1 * variant, rng.normal(3.5, 1.0, n), 0.0)
    keys, inverse = np.unique(np.stack([user, variant, epoch]), axis=1, return_inverse=True)
    inverse = inverse.ravel()
    groups = AdaptiveGroups(
        variants=("a", "b"),
        user=keys[0],
        variant=keys[1],
        epoch=keys[2],
        propensity=np.bincount(inverse, weights=propensity) / np.bincount(inverse),
        exposures=np.bincount(inverse),
        reward_sum=np.bincount(inverse, weights=reward).astype(np.float64),
        reward_sum_squares=np.bincount(inverse, weights=reward**2).astype(np.float64),
    )
    stored = tuple(
        StoredEpoch(
            1,
            e,
            "thompson",
            float(e),
            0,
            ("a", "b"),
            (5000, 5000) if e == 0 else (2000, 8000),
            ((0, 0, 0),) * 2,
            (0.5, 0.5),
            "t",
        )
        for e in range(6)
    )
    section = assemble_adaptive("thompson", "rating", ("a", "b"), stored, groups, NormalGammaPrior(), "value")
    direct = fixed_policy_values(("a", "b"), variant, propensity, reward, epoch=epoch, unit=user)
    assert section.summary is not None
    for ours, expected in zip(section.summary.values, direct, strict=True):
        for name in ("ips", "snips", "dr"):
            assert astuple(getattr(ours, name)) == pytest.approx(astuple(getattr(expected, name)), rel=1e-9)
    assert section.summary.probability_best is not None and section.summary.probability_best[1] > 0.9
