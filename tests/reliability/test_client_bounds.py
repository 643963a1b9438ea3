"""Every client input has a bound (router.guard): through raw sockets against a real `python -m router`.

A head without end, too many headers, a long URL, a head that never completes, more connections than the
limit: each gets its clear 4xx/503 and a counted refusal, the router's memory stays flat, and a normal client
keeps being answered. No Host-derived redirect is ever sent.
"""

from __future__ import annotations

import resource
import socket
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import orjson
import psutil
import pytest

from abtest.processes import free_port, python_module, wait_healthy
from router.guard import MAX_HEAD_BYTES, MAX_HEADERS, MAX_URL_BYTES
from tests.reliability.conftest import experiment
from tests.reliability.observe import metric
from tests.reliability.recorders import raw_http
from tests.reliability.services import Service, clean_environment, router_service
from tests.router.conftest import wait_until
from tests.support.fake_model import FakeModelControl, create_fake_model
from tests.support.servers import serve

HEAD_TIMEOUT = 1.0


@pytest.fixture(scope="module")
def backends() -> Iterator[dict[str, str]]:
    with (
        serve(create_fake_model("model_a", FakeModelControl())) as url_a,
        serve(create_fake_model("model_b", FakeModelControl())) as url_b,
    ):
        yield {"model_a": url_a, "model_b": url_b}


@pytest.fixture(scope="module")
def router(backends: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    service = router_service(
        tmp_path_factory.mktemp("bounds"), free_port(), experiment(backends), env={"ROUTER_HEAD_TIMEOUT": "1"}
    )
    service.start(timeout=30)
    yield service
    service.stop()


def refused(router: Service, reason: str) -> float:
    return metric(httpx.get(router.url + "/metrics", timeout=10).text, "router_clients_refused_total", reason=reason)


def request(target: bytes = b"/recommend/u1", headers: bytes = b"") -> bytes:
    return b"GET " + target + b" HTTP/1.1\r\nHost: router\r\nConnection: close\r\n" + headers + b"\r\n"


@pytest.mark.parametrize(
    ("case", "raw", "status", "reason", "detail"),
    [
        (
            "one header larger than the head bound",
            request(headers=b"X-Pad: " + b"a" * (MAX_HEAD_BYTES + 1) + b"\r\n"),
            431,
            "head_too_large",
            f"request head larger than {MAX_HEAD_BYTES} bytes",
        ),
        (
            "too many small headers",
            request(headers=b"".join(b"X-H%d: 1\r\n" % i for i in range(MAX_HEADERS + 1))),
            431,
            "too_many_headers",
            f"more than {MAX_HEADERS} headers",
        ),
        (
            "a target longer than the URL bound",
            request(b"/recommend/u1?pad=" + b"a" * MAX_URL_BYTES),
            414,
            "url_too_long",
            f"request target longer than {MAX_URL_BYTES} bytes",
        ),
    ],
)
def test_an_oversized_head_gets_its_4xx_and_is_counted(
    router: Service, case: str, raw: bytes, status: int, reason: str, detail: str
) -> None:
    before = refused(router, reason)
    got, answer = raw_http(router.port, raw)
    assert got == status, answer[:300]
    assert orjson.loads(answer.partition(b"\r\n\r\n")[2]) == {"detail": detail}
    assert refused(router, reason) == before + 1


def test_heads_just_inside_the_bounds_are_served(router: Service) -> None:
    """The control: the bounds refuse only what exceeds them (the app answers them as usual)."""
    headers = b"".join(b"X-H%d: 1\r\n" % i for i in range(MAX_HEADERS - 3))  # + Host, Connection
    assert raw_http(router.port, request(headers=headers))[0] == 200
    target = b"/recommend/u1?pad=" + b"a" * (MAX_URL_BYTES - len(b"/recommend/u1?pad="))
    assert raw_http(router.port, request(target))[0] == 200  # the app ignores an unknown query parameter
    assert raw_http(router.port, request(headers=b"X-Pad: " + b"a" * (MAX_HEAD_BYTES - 200) + b"\r\n"))[0] == 200


@pytest.mark.parametrize("case", ["connects and sends nothing", "drips its head a byte at a time"])
def test_a_head_that_never_completes_gets_408_and_the_connection_is_closed(router: Service, case: str) -> None:
    before = refused(router, "head_timeout")
    with socket.create_connection(("127.0.0.1", router.port), timeout=10 * HEAD_TIMEOUT + 10) as conn:
        if case.startswith("drips"):
            stop = threading.Event()

            def drip() -> None:
                for byte in request():
                    if stop.wait(0.1):  # a slowloris: each byte well within any read timeout
                        return
                    try:
                        conn.send(bytes([byte]))
                    except OSError:
                        return

            dripper = threading.Thread(target=drip, daemon=True)
            dripper.start()
        chunks = []
        while chunk := conn.recv(4096):  # until the router closes the connection
            chunks.append(chunk)
        if case.startswith("drips"):
            stop.set()
    answer = b"".join(chunks)
    assert answer.startswith(b"HTTP/1.1 408 "), answer
    assert b'"request head not received within 1s"' in answer
    assert refused(router, "head_timeout") == before + 1


def test_no_redirect_is_built_from_the_host_header(router: Service) -> None:
    """Trailing-slash redirects are off: a 307 would point at whatever Host the client sent."""
    for target in (b"/health/", b"/metrics/", b"/config/", b"/recommend/u1/"):
        status, answer = raw_http(router.port, b"GET " + target + b" HTTP/1.1\r\nHost: evil.example:1\r\n\r\n")
        assert status == 404, (target, answer[:200])
        assert b"evil.example" not in answer and b"location:" not in answer.lower()


def test_endless_headers_on_100_connections_leave_memory_flat_and_a_normal_client_served(router: Service) -> None:
    """100 connections each try to send 8 MiB of one header line (reconnecting when cut off): 800 MiB offered.

    Before the bound the router buffered all of it (the red team saw 5.1 GB); now each connection is cut after
    MAX_HEAD_BYTES, RSS stays within 60 MiB of its start, and a normal client keeps getting 200s meanwhile.
    """
    process = psutil.Process(router.pid)
    rss_before = process.memory_info().rss
    before = refused(router, "head_too_large")
    budget = 8 * 2**20  # more than loopback's socket buffers hold, so a sender that is never cut blocks
    chunk = b"a" * 65_536
    peak = [rss_before]
    done = threading.Event()
    cut = [0]
    lock = threading.Lock()

    def attack() -> None:
        sent = 0
        while sent < budget:
            try:
                with socket.create_connection(("127.0.0.1", router.port), timeout=10) as conn:
                    conn.sendall(b"GET /recommend/u1 HTTP/1.1\r\nHost: router\r\nX-Endless: ")
                    while sent < budget:
                        conn.sendall(chunk)
                        sent += len(chunk)
            except OSError:
                with lock:
                    cut[0] += 1

    normal: list[int] = []

    def client() -> None:
        with httpx.Client(base_url=router.url, timeout=30) as http:
            while not done.is_set():
                normal.append(http.get("/recommend/normal-user").status_code)
                peak[0] = max(peak[0], process.memory_info().rss)

    attackers = [threading.Thread(target=attack, daemon=True) for _ in range(100)]
    watcher = threading.Thread(target=client, daemon=True)
    watcher.start()
    for thread in attackers:
        thread.start()
    for thread in attackers:
        thread.join(300)
    done.set()
    watcher.join(60)
    rss_after = process.memory_info().rss
    print(
        f"\nendless headers: RSS {rss_before / 2**20:.0f} -> peak {peak[0] / 2**20:.0f} -> "
        f"{rss_after / 2**20:.0f} MiB, {cut[0]} connections cut, {len(normal)} normal requests"
    )
    assert not any(thread.is_alive() for thread in attackers)
    assert max(peak[0], rss_after) - rss_before < 60 * 2**20, "the router buffered the endless headers"
    assert cut[0] >= 100, "each attacker should have been cut off at least once"
    assert refused(router, "head_too_large") - before >= 100
    assert normal and set(normal) == {200}, normal[:20]
    assert "client refused: request head larger than" in router.log_text()


def open_connections(router: Service) -> float:
    return metric(httpx.get(router.url + "/metrics", timeout=10).text, "router_connections_open")


def start_with_fd_limit(directory: Path, backends: dict[str, str], hard: int) -> Service:
    """The router started with RLIMIT_NOFILE soft = hard / 2 (which it raises to `hard`)."""
    service = router_service(directory, free_port(), experiment(backends), env={"ROUTER_HEAD_TIMEOUT": "60"})
    argv = python_module(service.module, "--port", str(service.port), *service.args)

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard // 2, hard))

    with service.log_path.open("a") as log:
        service.proc = subprocess.Popen(
            argv,
            env=clean_environment(**service.env),
            stdout=log,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
            preexec_fn=limit,
        )
    wait_healthy(service.url, service.proc, timeout=30)
    return service


def test_idle_sockets_beyond_the_connection_limit_are_refused_at_once_not_silently(
    backends: dict[str, str], tmp_path: Path
) -> None:
    """With 400 file descriptors the limit is 300 connections: 300 idle sockets are held, each of 35 more gets
    503 at connect (logged, counted) instead of hanging or an fd error, and once they go a client is served."""
    router = start_with_fd_limit(tmp_path, backends, hard=400)
    try:
        limit = 300  # connection_limit(400, None): a quarter of the descriptors kept for backends and the store
        wait_until(lambda: open_connections(router) <= 1, what="no connection left over from start-up")
        idle = [socket.create_connection(("127.0.0.1", router.port), timeout=10) for _ in range(limit)]
        try:
            extra = [socket.create_connection(("127.0.0.1", router.port), timeout=10) for _ in range(35)]
            idle.extend(extra)
            answers = []
            for conn in extra:
                conn.settimeout(3)
                try:
                    answers.append(conn.recv(4096))
                except TimeoutError:
                    answers.append(b"<hung>")
                except ConnectionResetError:
                    answers.append(b"<reset>")
            refused_now = [a for a in answers if a.startswith(b"HTTP/1.1 503 ")]
            assert len(refused_now) >= len(extra) - 1, answers  # one may race a start-up connection's close
            assert all(b'"too many connections"' in a and b"retry-after: 1" in a for a in refused_now)
        finally:
            for conn in idle:
                conn.close()
        wait_until(lambda: httpx.get(router.url + "/health", timeout=10).status_code == 200, what="serving again")
        text = httpx.get(router.url + "/metrics", timeout=10).text
        assert metric(text, "router_clients_refused_total", reason="connections") >= 25
        assert metric(text, "router_connections_limit") == limit
        log = router.log_text()
        assert "file descriptor limit raised from 200 to 400" in log
        assert "client refused: 300 connections open, the limit" in log
    finally:
        router.stop()
