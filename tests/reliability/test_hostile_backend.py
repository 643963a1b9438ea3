"""A backend that breaks HTTP or the model contract, behind a real `python -m router`, with either backend client.

The backend (tests.support.hostile_backend, a raw socket) switches mode between rounds, so the router's pooled
connections live through every kind of breakage. Pinned: no user ever receives a list meant for another user
(or the smuggled one), no such list is stored as their exposure, every failure is a counted backend error
(`router_backend_errors_total`) with the error stored, and once the backend is honest again every user is
served.
"""

from __future__ import annotations

import httpx
import pytest

from tests.reliability.conftest import RouterFactory, experiment
from tests.reliability.observe import metric, rows, store_counters
from tests.reliability.services import store_path
from tests.router.conftest import wait_until
from tests.support.hostile_backend import CONTRACT_MODES, FRAMING_MODES, SMUGGLED_ITEMS, HostileBackend, items_for

K = 3


@pytest.mark.parametrize("backend_client", ["aiohttp", "httpx"])
def test_no_user_is_served_or_recorded_with_another_users_list(
    start_router: RouterFactory, backend_client: str
) -> None:
    with HostileBackend("honest") as backend:
        router = start_router(
            experiment(
                {"model_a": backend.url, "model_b": backend.url},
                backend_client=backend_client,
                timeouts={"connect": 0.5, "read": 0.5, "pool": 0.5},
            )
        )
        answers: list[tuple[str, str, int, list[int] | None]] = []
        with httpx.Client(base_url=router.url, timeout=30) as client:
            for mode in ("honest", *FRAMING_MODES, *CONTRACT_MODES, "honest"):
                backend.mode = mode
                for n in range(4):
                    user = f"{mode}-{n}"
                    response = client.get(f"/recommend/{user}", params={"k": K})
                    items = response.json()["items"] if response.status_code == 200 else None
                    answers.append((mode, user, response.status_code, items))
        metrics_text = httpx.get(router.url + "/metrics", timeout=10).text
        wait_until(lambda: store_counters(router.url)["pending"] == 0, what="the queue to drain")
        stored = {
            user: (status, error, items)
            for user, status, error, items in rows(
                store_path(router), "SELECT user_id, status, error, items FROM exposures"
            )
        }
    failed = [(mode, user, status) for mode, user, status, items in answers if status != 200]
    for mode, user, status, items in answers:
        assert items != SMUGGLED_ITEMS, f"{user} was served the smuggled list"
        if status == 200:
            assert items == items_for(user, K), f"{mode}: {user} was served another user's list {items}"
            assert mode in ("honest", "extra", "late_extra"), f"{mode}: a broken answer was served to {user}"
            assert stored[user][0] == 200 and stored[user][2] == str(items).replace(" ", "")
        else:
            assert status in (502, 503, 504), (mode, user, status)
            assert stored[user][:2] == (status, {502: "bad_response", 503: "unavailable", 504: "timeout"}[status])
        assert str(SMUGGLED_ITEMS[0]) not in str(stored[user][2])
    # Every answer of a contract-breaking mode is refused; every framing break costs at least one request.
    assert {(m, s) for m, _, s, _ in answers if m in CONTRACT_MODES} == {(m, 502) for m in CONTRACT_MODES}
    assert all(any(m == mode for m, _, _ in failed) for mode in FRAMING_MODES if mode != "extra"), failed
    assert [s for m, _, s, _ in answers if m == "honest"] == [200] * 8  # served again once the backend is honest
    counted = metric(metrics_text, "router_backend_errors_total")
    assert counted == len(failed), (counted, failed)
