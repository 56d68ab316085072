"""The plan reader's worker process (`python -m orchestrator.engine.plan_worker`).

It reads requests from stdin and answers on stdout, one at a time, each a frame: 8 bytes of
length (big-endian), then a pickle. A request is `(kind, text, source)` with kind `plan` or
`template`; the answer is `("plan", Plan)` or `("error", exception)`. It ends when stdin closes.
Its own process rather than multiprocessing's: a spawned multiprocessing child imports the
parent's `__main__` again, which for `python -m orchestrator serve` would run the CLI.
"""

from __future__ import annotations

import pickle
import signal
import struct
import sys
from collections.abc import Callable
from typing import BinaryIO

from orchestrator.domain.hooks import parse_template
from orchestrator.domain.plans import Plan, parse_plan

HEADER = struct.Struct(">Q")
PARSERS: dict[str, Callable[[str, str], Plan]] = {"plan": parse_plan, "template": parse_template}


def frame(answer: object) -> bytes:
    """`answer` pickled, behind its length."""
    body = pickle.dumps(answer, protocol=pickle.HIGHEST_PROTOCOL)
    return HEADER.pack(len(body)) + body


def answer(request: tuple[str, str, str]) -> tuple[str, object]:
    """What to send back for one request."""
    kind, text, source = request
    try:
        return "plan", PARSERS[kind](text, source)
    except Exception as exc:  # a PlanError, InvalidInput, or a bug: the parent raises it
        return "error", exc


def serve(requests: BinaryIO, answers: BinaryIO) -> None:
    """Answer requests until `requests` ends."""
    while len(header := requests.read(HEADER.size)) == HEADER.size:
        (size,) = HEADER.unpack(header)
        reply = answer(pickle.loads(requests.read(size)))  # noqa: S301 - our parent, over a pipe
        try:
            data = frame(reply)
        except Exception as exc:  # an exception that does not pickle: its text does
            data = frame(("error", RuntimeError(f"{type(exc).__name__}: {reply[1]!r}")))
        answers.write(data)
        answers.flush()


def main() -> None:
    """The worker's entry point: stdout carries answers only, so prints go to stderr."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the service's; it ends us
    answers = sys.stdout.buffer
    sys.stdout = sys.stderr
    serve(sys.stdin.buffer, answers)


if __name__ == "__main__":
    main()
