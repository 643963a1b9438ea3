"""The stand-in model server as its own process, whose /recommend starts failing on SIGUSR1 (HTTP 500).

    python -m tests.support.faulty_model --port 8003        # a healthy stand-in (tests.support.fake_model)
    kill -USR1 <pid>                                        # from now on every /recommend answers 500

For fault tests that must not run a failing backend inside the test process (it would share the GIL with the
load client that measures the router's latency).
"""

from __future__ import annotations

import argparse
import signal
from collections.abc import Sequence
from types import FrameType

import uvicorn

from tests.support.fake_model import FakeModelControl, create_fake_model


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.support.faulty_model")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--name", default="model_c")
    args = parser.parse_args(argv)
    control = FakeModelControl()

    def fail(signum: int, frame: FrameType | None) -> None:
        control.status = 500

    signal.signal(signal.SIGUSR1, fail)
    uvicorn.run(create_fake_model(args.name, control), host="127.0.0.1", port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
