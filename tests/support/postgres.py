"""A real PostgreSQL 15 server for tests: a throwaway cluster in a temporary folder, on a free loopback port.

    with postgres_cluster() as cluster:
        url = cluster.create_database("store_test")   # postgresql://postgres@127.0.0.1:PORT/store_test
        cluster.restart()                             # "the database restarted mid-load"
        cluster.stop(mode="immediate")                # a crash: no checkpoint, recovery from the WAL on start
        cluster.start()

In tests, the fixtures `postgres` (one server for the session) and `postgres_url` (a fresh, empty database for
each test, on a running server) do the same; tests/conftest.py registers them.

- `initdb` refuses to run as root, so as root every server command runs as the `postgres` OS user
  (`runuser -u postgres --`), which Debian's postgresql-15 package creates; as any other user, as that user.
- The server listens on 127.0.0.1 only, with `trust` authentication (user `postgres`, no password), and its
  Unix socket in the cluster's own folder. `fsync=off`: nothing is forced to disk, which only matters if the
  machine itself crashes; commits still reach the WAL (synchronous_commit stays on), so a stopped or killed
  server (even `stop(mode="immediate")`) keeps every committed row.
- Without PostgreSQL 15 it raises PostgresNotInstalledError naming the package: tests fail, never skip.

Errors:

    PostgresError
    ├── PostgresNotInstalledError   the binaries (or the postgres OS user) are missing
    └── PostgresCommandError        initdb / pg_ctl / createdb failed; the message carries its output
"""

from __future__ import annotations

import os
import pwd
import shlex
import shutil
import socket
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import pytest

#: Where Debian's postgresql-15 package puts the server binaries; POSTGRES_BIN_DIR points elsewhere.
DEFAULT_BIN_DIR = Path("/usr/lib/postgresql/15/bin")
PACKAGE = "postgresql-15"
SUPERUSER = "postgres"
DATABASE = "abtest"
#: Server settings for tests (see the module docstring for why fsync may be off).
SERVER_OPTIONS = ("-c", "fsync=off", "-c", "full_page_writes=off", "-c", "max_connections=200")
COMMAND_TIMEOUT = 120.0
START_ATTEMPTS = 3

StopMode = Literal["smart", "fast", "immediate"]


class PostgresError(RuntimeError):
    """The test PostgreSQL server could not be provided."""


class PostgresNotInstalledError(PostgresError):
    """PostgreSQL 15 is not installed here."""


class PostgresCommandError(PostgresError):
    """A server command (initdb, pg_ctl, createdb) failed."""


def find_binaries(bin_dir: Path | None = None) -> Path:
    """The folder holding initdb, pg_ctl and createdb. Raises PostgresNotInstalledError naming the package."""
    folder = bin_dir or Path(os.environ.get("POSTGRES_BIN_DIR", DEFAULT_BIN_DIR))
    missing = [name for name in ("initdb", "pg_ctl", "createdb", "postgres") if not (folder / name).is_file()]
    if missing:
        raise PostgresNotInstalledError(
            f"PostgreSQL 15 is not installed: {', '.join(missing)} not found in {folder}. "
            f"Install it with `apt-get install {PACKAGE}` (Debian/Ubuntu), or set POSTGRES_BIN_DIR to the folder "
            "holding initdb and pg_ctl. The PostgreSQL tests need a real server and are never skipped."
        )
    return folder


def server_user() -> str | None:
    """The OS user to run the server as: `postgres` when we are root (initdb refuses root), else None (us)."""
    if os.geteuid() != 0:
        return None
    try:
        pwd.getpwnam(SUPERUSER)
    except KeyError:
        raise PostgresNotInstalledError(
            f"running as root, the test server must run as the OS user {SUPERUSER!r}, which does not exist; "
            f"`apt-get install {PACKAGE}` creates it"
        ) from None
    return SUPERUSER


def free_port() -> int:
    """A loopback TCP port that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@dataclass
class PostgresCluster:
    """One PostgreSQL server on 127.0.0.1:`port`, its data in `root`/data. Made by `postgres_cluster()`."""

    root: Path
    port: int
    bin_dir: Path
    run_as: str | None

    @property
    def data_dir(self) -> Path:
        return self.root / "data"

    @property
    def log_file(self) -> Path:
        return self.root / "server.log"

    @property
    def url(self) -> str:
        """The URL of the database created at start-up (`abtest`)."""
        return self.url_for(DATABASE)

    def url_for(self, database: str) -> str:
        return f"postgresql://{SUPERUSER}@127.0.0.1:{self.port}/{database}"

    def _run(self, *command: str | Path) -> subprocess.CompletedProcess[str]:
        """Run a server binary as the server's user, in the cluster's folder. Raises PostgresCommandError."""
        argv = [str(part) for part in command]
        prefix = ["runuser", "-u", self.run_as, "--"] if self.run_as else []
        try:
            result = subprocess.run(
                prefix + argv,
                cwd=self.root,
                capture_output=True,
                text=True,
                timeout=COMMAND_TIMEOUT,
                check=False,
            )
        except subprocess.TimeoutExpired as exc:
            raise PostgresCommandError(f"{Path(argv[0]).name} did not finish in {COMMAND_TIMEOUT:.0f} s") from exc
        if result.returncode != 0:
            raise PostgresCommandError(
                f"{Path(argv[0]).name} failed (exit {result.returncode}): {(result.stderr or result.stdout).strip()}"
                + self._log_tail()
            )
        return result

    def _log_tail(self, lines: int = 20) -> str:
        try:
            tail = self.log_file.read_text(encoding="utf-8", errors="replace").splitlines()[-lines:]
        except OSError:
            return ""
        return "\nserver log:\n" + "\n".join(tail) if tail else ""

    def initdb(self) -> None:
        self._run(
            self.bin_dir / "initdb",
            "--pgdata",
            self.data_dir,
            "--username",
            SUPERUSER,
            "--auth",
            "trust",
            "--encoding",
            "UTF8",
            "--locale",
            "C",
            "--no-sync",
        )

    @property
    def running(self) -> bool:
        """Whether the server process is up (`pg_ctl status`)."""
        prefix = ["runuser", "-u", self.run_as, "--"] if self.run_as else []
        result = subprocess.run(
            [*prefix, str(self.bin_dir / "pg_ctl"), "status", "--pgdata", str(self.data_dir)],
            cwd=self.root,
            capture_output=True,
            timeout=COMMAND_TIMEOUT,
            check=False,
        )
        return result.returncode == 0

    def start(self) -> None:
        """Start the server and wait until it accepts connections, on the same port as before."""
        options = [
            "-p",
            str(self.port),
            "-c",
            "listen_addresses=127.0.0.1",
            "-c",
            f"unix_socket_directories={self.root}",
            *SERVER_OPTIONS,
        ]
        self._run(
            self.bin_dir / "pg_ctl",
            "start",
            "--wait",
            "--timeout",
            "60",
            "--pgdata",
            self.data_dir,
            "--log",
            self.log_file,
            "-o",
            shlex.join(options),
        )

    def stop(self, mode: StopMode = "fast") -> None:
        """Stop the server: `fast` rolls back sessions and checkpoints; `immediate` is a crash (WAL recovery)."""
        self._run(self.bin_dir / "pg_ctl", "stop", "--wait", "--timeout", "60", "--pgdata", self.data_dir, "-m", mode)

    def restart(self, mode: StopMode = "fast") -> None:
        """Stop and start again on the same port: every open connection is broken, committed rows stay."""
        self.stop(mode)
        self.start()

    def ensure_running(self) -> None:
        """Start the server if a test left it stopped."""
        if not self.running:
            self.start()

    def create_database(self, name: str | None = None) -> str:
        """Create an empty database (a unique name unless given) and return its URL."""
        database = name or f"test_{uuid.uuid4().hex[:12]}"
        self._run(self.bin_dir / "createdb", "--host", "127.0.0.1", "--port", str(self.port), "-U", SUPERUSER, database)
        return self.url_for(database)

    def destroy(self) -> None:
        """Stop the server (as a crash: nothing is worth keeping) and remove its folder."""
        try:
            if self.running:
                self.stop(mode="immediate")
        finally:
            shutil.rmtree(self.root, ignore_errors=True)


@contextmanager
def postgres_cluster(bin_dir: Path | None = None) -> Iterator[PostgresCluster]:
    """A new cluster with a database `abtest`, running until the block ends; then stopped and removed."""
    binaries = find_binaries(bin_dir)
    user = server_user()
    root = Path(tempfile.mkdtemp(prefix="abtest-postgres-"))
    if user is not None:
        entry = pwd.getpwnam(user)
        os.chown(root, entry.pw_uid, entry.pw_gid)
    cluster = PostgresCluster(root=root, port=free_port(), bin_dir=binaries, run_as=user)
    try:
        cluster.initdb()
        for attempt in range(1, START_ATTEMPTS + 1):
            try:
                cluster.start()
                break
            except PostgresCommandError as exc:
                # Another process may have taken the free port between free_port() and the server's bind.
                if attempt == START_ATTEMPTS or "Address already in use" not in str(exc):
                    raise
                cluster.port = free_port()
        cluster.create_database(DATABASE)
        yield cluster
    finally:
        cluster.destroy()


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresCluster]:
    """One PostgreSQL 15 server for the test session (fails, never skips, when PostgreSQL is not installed)."""
    with postgres_cluster() as cluster:
        yield cluster


@pytest.fixture
def postgres_url(postgres: PostgresCluster) -> str:
    """The URL of a fresh, empty database on the session's server (started again if a test stopped it)."""
    postgres.ensure_running()
    return postgres.create_database()
