"""Which asyncio event loop the bot runs on: uvloop where it is installed, else the standard one.

uvloop runs the same asyncio code with less work per callback: in the load benchmark at 200
messages a second the loop's lag drops from 0.6 to 0.1 ms (p50) and 5.0 to 3.6 ms (p99)
(`docs/benchmarks.md`).
"""

from __future__ import annotations

import asyncio
import importlib.util
from collections.abc import Callable, Coroutine
from typing import Any, Literal, TypeVar, get_args

EventLoopKind = Literal["auto", "uvloop", "asyncio"]
EVENT_LOOP_KINDS: tuple[str, ...] = get_args(EventLoopKind)

T = TypeVar("T")


def uvloop_available() -> bool:
    return importlib.util.find_spec("uvloop") is not None


def resolve(kind: EventLoopKind) -> Literal["uvloop", "asyncio"]:
    """The loop `kind` stands for here: "auto" is uvloop when it is installed."""
    if kind == "auto":
        return "uvloop" if uvloop_available() else "asyncio"
    return kind


def loop_factory(kind: EventLoopKind) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """A factory for `asyncio.Runner`; None means asyncio's own loop."""
    if resolve(kind) == "asyncio":
        return None
    import uvloop

    return uvloop.new_event_loop


def loop_name(loop: asyncio.AbstractEventLoop) -> str:
    """The package the running loop comes from: "uvloop" or "asyncio"."""
    return type(loop).__module__.partition(".")[0]


def run(main: Coroutine[Any, Any, T], *, kind: EventLoopKind = "auto") -> T:
    """`asyncio.run(main)` on the loop `kind` names."""
    with asyncio.Runner(loop_factory=loop_factory(kind)) as runner:
        return runner.run(main)
