"""Run an ASGI app on a real socket (uvicorn on port 0 of 127.0.0.1) inside the test process.

with serve(create_app(settings)) as base_url:
    httpx.get(base_url + "/health")
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import uvicorn


@contextmanager
def serve(app: Any, *, timeout: float = 30.0, **config: Any) -> Iterator[str]:
    """Serve `app` in a background thread until the block ends; yield its base URL once it is listening."""
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="on", **config))
    thread = threading.Thread(target=server.run, name="uvicorn-test-server", daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout
    while not server.started:
        if not thread.is_alive():
            raise RuntimeError("test server exited during start-up")
        if time.monotonic() > deadline:
            raise TimeoutError("test server did not start")
        time.sleep(0.01)  # start-up poll with a deadline
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout)
