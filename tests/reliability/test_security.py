"""Security: admin auth (constant time, off without a token), no open proxy, non-root images, no leaked secrets."""

from __future__ import annotations

import ast
import base64
import re
import secrets
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml
from fastapi import FastAPI, Request, Response

from abtest.processes import CLEAN_EXIT_CODES, free_port
from router.app import create_app
from router.config import RouterSettings
from tests.reliability.conftest import ADMIN_TOKEN, SALT, WEIGHTS, Guarded, RouterFactory, experiment
from tests.reliability.observe import assigned, metric
from tests.reliability.recorders import Canary, raw_http
from tests.router.conftest import wait_until
from tests.support.fake_model import FakeModelControl, serve_fake_model
from tests.support.servers import serve

REPO = Path(__file__).resolve().parents[2]
ROUTER_SOURCES = sorted((REPO / "router").glob("*.py"))
USERS = [f"user-{i}" for i in range(50)]
USER_A = next(user for user, variant in assigned(USERS, SALT, WEIGHTS).items() if variant == "model_a")
USER_B = next(user for user, variant in assigned(USERS, SALT, WEIGHTS).items() if variant == "model_b")
FORWARDED = re.compile(r"^/recommend/[A-Za-z0-9_-][A-Za-z0-9_.-]{0,63}\?k=\d{1,3}$")


# -- admin endpoints ---------------------------------------------------------------------------------


def basic(credentials: str) -> str:
    return "Basic " + base64.b64encode(credentials.encode()).decode()


def reload(port: int, authorization: str | None) -> tuple[int | None, bytes]:
    """POST /admin/reload with exactly this Authorization header (byte for byte; none if None)."""
    header = b"" if authorization is None else b"Authorization: " + authorization.encode("latin-1") + b"\r\n"
    request = b"POST /admin/reload?token=" + ADMIN_TOKEN.encode() + b" HTTP/1.1\r\nHost: router\r\n"
    return raw_http(port, request + b"Connection: close\r\nContent-Length: 0\r\n" + header + b"\r\n")


@pytest.mark.parametrize(
    ("authorization", "status"),
    [
        (None, 401),
        ("", 401),
        ("Bearer", 401),
        ("Bearer ", 401),
        (ADMIN_TOKEN, 401),  # no scheme
        ("Token " + ADMIN_TOKEN, 401),
        (basic("admin:" + ADMIN_TOKEN), 401),
        ("Bearer wrong", 403),
        ("Bearer " + ADMIN_TOKEN[:-1], 403),  # a prefix
        ("Bearer " + ADMIN_TOKEN + "x", 403),  # an extension
        ("Bearer " + ADMIN_TOKEN.upper(), 403),
        ("Bearer " + ADMIN_TOKEN[::-1], 403),
        ("Bearer \xe9" + ADMIN_TOKEN, 403),  # not ASCII
        ("Bearer " + ADMIN_TOKEN, 200),
        ("bearer " + ADMIN_TOKEN, 200),  # the scheme is case-insensitive (RFC 9110)
    ],
)
def test_admin_reload_refuses_missing_or_wrong_tokens(guarded: Guarded, authorization: str | None, status: int) -> None:
    url = guarded.router.url
    applied = metric(httpx.get(url + "/metrics").text, "router_reloads_total", result="applied")
    response = reload(guarded.router.port, authorization)
    assert response[0] == status, response
    if status == 401:
        assert b"\r\nwww-authenticate: Bearer\r\n" in response[1]
    after = metric(httpx.get(url + "/metrics").text, "router_reloads_total", result="applied")
    assert after == applied + (1 if status == 200 else 0)  # a refused request reloaded nothing


def test_admin_reload_is_post_only_and_other_admin_paths_do_not_exist(guarded: Guarded) -> None:
    auth = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    assert httpx.get(guarded.router.url + "/admin/reload", headers=auth).status_code == 405
    for path in ("/admin", "/admin/", "/admin/config", "/admin/shutdown", "/admin/reload/../config"):
        assert httpx.post(guarded.router.url + path, headers=auth).status_code in (404, 405), path


@pytest.mark.parametrize("token", [None, "", "   "])
def test_admin_endpoints_are_off_when_no_token_is_configured(tmp_path: Path, token: str | None) -> None:
    config = tmp_path / "experiment.yaml"
    config.write_text(yaml.safe_dump(experiment({"model_a": "http://127.0.0.1:1", "model_b": "http://127.0.0.1:2"})))
    settings = RouterSettings(results_dir=tmp_path / "results", config_path=config, admin_token=token)
    with serve(create_app(settings)) as url:
        port = int(url.rsplit(":", 1)[1])
        for authorization in (None, "Bearer ", "Bearer " + (token or ""), "Bearer None", "Bearer null"):
            status, answer = reload(port, authorization)
            assert status == 403, (authorization, answer)
            assert b"admin endpoints are disabled" in answer


def names_in(node: ast.AST) -> set[str]:
    found = set()
    for child in ast.walk(node):
        if isinstance(child, ast.Name):
            found.add(child.id)
        elif isinstance(child, ast.Attribute):
            found.add(child.attr)
    return found


def test_admin_token_is_compared_in_constant_time_and_nowhere_with_equality() -> None:
    compare_digest_calls = []
    for path in ROUTER_SOURCES:
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr == "compare_digest"
            ):
                assert isinstance(node.func.value, ast.Name) and node.func.value.id in {"hmac", "secrets"}
                compare_digest_calls.append((path.name, names_in(node)))
            if isinstance(node, ast.Compare):
                if all(isinstance(op, ast.Is | ast.IsNot) for op in node.ops):
                    continue  # `token is None`: no secret byte is compared
                touched = {name for name in names_in(node) if re.search(r"(?i)token|secret", name)}
                assert not touched, f"{path.name}:{node.lineno} compares {touched} with {ast.unparse(node)!r}"
    assert [
        name for name, names in compare_digest_calls if {"admin_token", "get_secret_value"} & names or "token" in names
    ] == ["admin_auth.py"]


# -- no open proxy ---------------------------------------------------------------------------------


def ssrf_requests(canary: str) -> list[tuple[str, bytes]]:
    """(name, raw request) pairs that try to make the router contact `canary` (host:port) or another path."""
    c = canary.encode()
    head = b" HTTP/1.1\r\nHost: router\r\nConnection: close\r\n"
    user = USER_A.encode()
    return [
        ("absolute-form target", b"GET http://" + c + b"/recommend/" + user + head + b"\r\n"),
        ("scheme-relative path", b"GET //" + c + b"/recommend/" + user + head + b"\r\n"),
        ("userinfo in the id", b"GET /recommend/" + user + b"@" + c + head + b"\r\n"),
        ("encoded slashes", b"GET /recommend/%2F%2F" + c + b"%2Frecommend%2Fx" + head + b"\r\n"),
        ("url as the id", b"GET /recommend/http:%2F%2F" + c + head + b"\r\n"),
        ("backslashes", b"GET /recommend/%5C%5C" + c + head + b"\r\n"),
        ("CRLF in the id", b"GET /recommend/" + user + b"%0D%0AHost:%20" + c + head + b"\r\n"),
        ("dot segments", b"GET /recommend/..%2F..%2F..%2F" + c + head + b"\r\n"),
        ("url in the query", b"GET /recommend/" + user + b"?k=3&url=http://" + c + b"/&backend=" + c + head + b"\r\n"),
        (
            "host header",
            b"GET /recommend/" + user + b"?k=3 HTTP/1.1\r\nHost: " + c + b"\r\nConnection: close\r\n\r\n",
        ),
        ("forwarded host", b"GET /recommend/" + user + b"?k=3" + head + b"X-Forwarded-Host: " + c + b"\r\n\r\n"),
        ("forwarded", b"GET /recommend/" + user + b"?k=3" + head + b"Forwarded: host=" + c + b"\r\n\r\n"),
        ("original url", b"GET /recommend/" + user + b"?k=3" + head + b"X-Original-URL: http://" + c + b"/\r\n\r\n"),
        ("CONNECT", b"CONNECT " + c + head + b"\r\n"),
        (
            "url as the request id",
            b"POST /feedback"
            + head
            + b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n"
            % len(b'{"request_id": "http://' + c + b'/", "user_id": "u", "item_id": 1, "event": "click"}')
            + b'{"request_id": "http://'
            + c
            + b'/", "user_id": "u", "item_id": 1, "event": "click"}',
        ),
        (
            "reload with a body naming a config",
            b"POST /admin/reload"
            + head
            + b"Authorization: Bearer "
            + ADMIN_TOKEN.encode()
            + b"\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n"
            % len(b'{"config_path": "http://' + c + b'"}')
            + b'{"config_path": "http://'
            + c
            + b'"}',
        ),
    ]


SSRF_NAMES = [name for name, _ in ssrf_requests("127.0.0.1:1")]


@pytest.mark.parametrize("name", SSRF_NAMES)
def test_router_contacts_no_host_or_path_that_config_did_not_name(guarded: Guarded, name: str) -> None:
    request = dict(ssrf_requests(guarded.canary.address))[name]
    status, answer = raw_http(guarded.router.port, request)
    assert status is not None and status < 500, answer[-300:]
    for recorder in guarded.backends.values():
        for received in recorder.received:  # the router's requests and its monitor's /health and /info
            assert received.method == "GET"
            assert received.target in ("/health", "/info") or FORWARDED.match(received.target), received.target
            assert guarded.canary.address.encode() not in b"".join(v for _, v in received.headers)
    # (the `guarded` fixture then checks that the canary saw no connection at all)


@pytest.fixture
def redirecting_backend() -> Iterator[tuple[str, Canary]]:
    """A 'model server' that answers every request with a redirect to a canary."""
    with Canary() as canary:
        app = FastAPI()

        @app.api_route("/{path:path}", methods=["GET"])
        async def redirect(request: Request, path: str) -> Response:
            status = 307 if path == "info" else 302
            return Response(status_code=status, headers={"Location": f"http://{canary.address}/{path}"})

        with serve(app) as url:
            yield url, canary


def test_backend_redirects_are_not_followed(
    start_router: RouterFactory, redirecting_backend: tuple[str, Canary]
) -> None:
    url, canary = redirecting_backend
    with serve_fake_model("model_a", FakeModelControl()) as url_a:
        router = start_router(experiment({"model_a": url_a, "model_b": url}))
        with httpx.Client(base_url=router.url, timeout=10) as client:
            failed = client.get(f"/recommend/{USER_B}")
            assert failed.status_code == 502
            assert "backend answered HTTP 302" in failed.json()["detail"]
            wait_until(
                lambda: client.get("/health").json()["backends"]["model_b"]["status"] == "down",
                what="the monitor to see the redirecting backend as down",
            )
        assert router.stop() in CLEAN_EXIT_CODES
    assert canary.connections == []


# -- containers ---------------------------------------------------------------------------------------


def final_stage(dockerfile: Path) -> list[tuple[str, str]]:
    """(KEYWORD, arguments) of the last stage, continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n", " ", dockerfile.read_text())
    instructions = [
        (line.split(None, 1)[0].upper(), [*line.split(None, 1), ""][1].strip())
        for line in (raw.strip() for raw in text.splitlines())
        if line and not line.startswith("#")
    ]
    last_from = max(i for i, (keyword, _) in enumerate(instructions) if keyword == "FROM")
    return instructions[last_from:]


@pytest.mark.parametrize("service", ["recsys", "router"])  # recsys/Dockerfile: both model servers
def test_container_image_runs_as_a_non_root_user(service: str) -> None:
    stage = final_stage(REPO / service / "Dockerfile")
    users = [i for i, (keyword, _) in enumerate(stage) if keyword == "USER"]
    assert users, f"{service}/Dockerfile: the final stage never sets USER, so it runs as root"
    user = stage[users[-1]][1].split(":")[0]
    assert user not in {"root", "0", ""}, f"{service}/Dockerfile runs as {user!r}"
    command = max(i for i, (keyword, _) in enumerate(stage) if keyword in {"CMD", "ENTRYPOINT"})
    assert users[-1] < command, "USER must come before the command it should apply to"


# -- secrets ------------------------------------------------------------------------------------------


def test_admin_token_never_appears_in_logs_or_responses(tmp_path: Path, start_router: RouterFactory) -> None:
    token = secrets.token_urlsafe(24)
    near_miss = token[:-2] + "xx"  # a client's wrong guess is sensitive too
    with serve_fake_model("model_a", FakeModelControl()) as url_a:
        dead = f"http://127.0.0.1:{free_port()}"  # model_b: nothing listens, so requests fail and get logged
        raw = experiment({"model_a": url_a, "model_b": dead})
        router = start_router(raw, env={"ROUTER_ADMIN_TOKEN": token, "ROUTER_LOG_LEVEL": "debug"})
        config_path = Path(router.args[-1])
        bodies: list[str] = []
        with httpx.Client(base_url=router.url, timeout=10) as client:
            good, wrong = {"Authorization": f"Bearer {token}"}, {"Authorization": f"Bearer {near_miss}"}
            assert client.post("/admin/reload", headers=good).status_code == 200
            assert client.post("/admin/reload", headers=wrong).status_code == 403
            assert client.post("/admin/reload", headers={"Authorization": token}).status_code == 401
            config_path.write_text(yaml.safe_dump({**raw, "strategy": "nope"}))
            refused = client.post("/admin/reload", headers=good)
            assert refused.status_code == 422
            bodies.append(refused.text)
            config_path.write_text("experiment: [unclosed")
            assert client.post("/admin/reload", headers=good).status_code == 400
            config_path.write_text(yaml.safe_dump(raw))
            router.signal(signal.SIGHUP)
            assert client.get(f"/recommend/{USER_A}").status_code == 200
            assert client.get(f"/recommend/{USER_B}").status_code == 503
            assert client.get("/recommend/%00", headers=good).status_code == 422
            assert (
                client.post("/feedback", json={"user_id": "nobody", "item_id": 1, "event": "click"}).status_code == 404
            )
            for path in ("/config", "/health", "/metrics", "/results", "/report", "/openapi.json", "/docs"):
                response = client.get(path, headers=good)
                assert response.status_code == 200, path
                bodies.append(response.text)
        wait_until(lambda: "SIGHUP reload applied" in router.log_text(), what="the SIGHUP reload")
        assert router.stop() in CLEAN_EXIT_CODES
    log = router.log_text()
    assert '"level":"debug"' in log and "backend failed" in log and "config reload refused" in log
    for secret in (token, near_miss):
        assert secret not in log, "a token was written to the router's log"
        assert not [body for body in bodies if secret in body], "a token was served in a response"
    assert "Bearer" not in log


def tracked_files() -> list[Path]:
    listed = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True, check=True).stdout
    return [REPO / name for name in listed.decode().split("\0") if name]


# Patterns are assembled from pieces so that this file does not match them itself.
SECRET_PATTERNS = {
    "private key": re.compile("-" * 5 + "BEGIN ([A-Z0-9]+ )*PRIVATE KEY" + "-" * 5),
    "AWS access key": re.compile(r"\b(AKIA|ASIA)[0-9A-Z]{16}\b"),
    "GitHub token": re.compile(r"\b(gh[pousr]_[A-Za-z0-9]{36,}|github_pat_[A-Za-z0-9_]{22,})\b"),
    "Slack token": re.compile(r"\bxox[abposr]-[A-Za-z0-9-]{10,}"),
    "Google API key": re.compile(r"\bAIza[0-9A-Za-z_\-]{35}\b"),
}
#: In config-like files, a literal value (not a ${VARIABLE} reference) for a token, secret or password.
LITERAL_SECRET = re.compile(
    # ...but not a flag such as `automountServiceAccountToken: false`.
    r"(?i)(?<![\w${])[A-Z0-9_]*(TOKEN|SECRET|PASSWORD|API_KEY)\b[\"']?\s*[:=]\s*[\"']?"
    r"(?!\$|\s|[\"']|$|(?:true|false)\b)([^\s\"'#]+)"
)
CONFIG_LIKE = re.compile(r"(\.ya?ml|\.env|\.toml|\.ini|\.cfg|\.conf|Dockerfile|\.sh|\.json)$|(^|/)\.env")


def secrets_in(relative: str, text: str) -> list[str]:
    """What the scan finds in one file's text."""
    found = [f"{relative}: {kind}" for kind, pattern in SECRET_PATTERNS.items() if pattern.search(text)]
    if CONFIG_LIKE.search(relative):
        found += [f"{relative}: {m.group(0)!r}" for m in LITERAL_SECRET.finditer(text)]
    return found


@pytest.mark.parametrize(
    ("relative", "text"),
    [
        ("deploy/key.txt", "-" * 5 + "BEGIN OPENSSH PRIVATE KEY" + "-" * 5 + "\nb3BlbnNzaC1rZXk=\n"),
        ("notes.md", "aws_access_key_id = " + "AKIA" + "ABCDEFGHIJKLMNOP"),
        ("ci.sh", "export GH=" + "ghp_" + "a" * 36),
        ("docker-compose.yml", "      ROUTER_ADMIN_TOKEN: s3cr3t-value"),
        (".env.production", "ROUTER_ADMIN_TOKEN=abc123"),
        ("config.yaml", 'db_password: "hunter22"'),
    ],
)
def test_secret_scan_finds_planted_secrets(relative: str, text: str) -> None:
    assert secrets_in(relative, text)


@pytest.mark.parametrize(
    ("relative", "text"),
    [
        ("docker-compose.yml", "      ROUTER_ADMIN_TOKEN: ${ROUTER_ADMIN_TOKEN:-}"),
        ("docker-compose.yml", "      ROUTER_ADMIN_TOKEN: $ROUTER_ADMIN_TOKEN"),
        ("README.md", "| `ROUTER_ADMIN_TOKEN` | unset | bearer token for `/admin/*` |"),
        ("scripts/up", 'curl -H "Authorization: Bearer $ROUTER_ADMIN_TOKEN"'),
    ],
)
def test_secret_scan_passes_references_to_secrets(relative: str, text: str) -> None:
    assert secrets_in(relative, text) == []


def test_repository_tracks_no_secrets() -> None:
    files = tracked_files()
    assert len(files) > 20, "git ls-files found too little: not run in the repository?"
    findings = []
    for path in files:
        relative = path.relative_to(REPO).as_posix()
        assert not re.search(r"(^|/)(\.env(\..+)?|id_rsa.*|id_ed25519.*|.+\.(pem|key|p12|pfx))$", relative), relative
        if not path.is_file() or path.stat().st_size > 2_000_000:
            continue
        data = path.read_bytes()
        if b"\0" in data:
            continue  # binary
        findings += secrets_in(relative, data.decode("utf-8", errors="replace"))
    assert findings == []
