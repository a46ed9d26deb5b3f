"""A generation server the bot runs as its own child process: started on loopback, waited for
until healthy, restarted with backoff when it dies, its output logged through the bot's
logger, and stopped with the bot.

The child never outlives the bot: it runs in a process group of its own (a terminal's Ctrl-C
reaches the bot, which stops it in order), and on Linux the kernel sends it SIGTERM when the
bot's process dies, even by SIGKILL (PR_SET_PDEATHSIG). Helpers the server starts itself (vLLM's
engine core processes, which hold the GPU's memory) share that group, and go with it: when the
server dies, what is left of its group is killed before it is started again, and stopping it
signals the whole group. Those helpers also hold its output pipe, so the server's exit is
read from its status, not from `Process.wait()` (which waits for the pipe to close as well).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import os
import re
import signal
import socket
import sys
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence

from synatra_bot.errors import EngineError, EngineUnavailable

log = logging.getLogger(__name__)

#: Seconds a loading server may go without answering its health check or printing a line (a
#: download's progress counts: vLLM downloads the model itself on its first start).
START_TIMEOUT_S = 600.0
#: Seconds a server may take to become healthy at all, printing or not: one that logs in a loop
#: without ever serving (a crash loop inside it) is given up. Generous, for a first download.
START_CAP_S = 3600.0
#: Seconds between health checks while it loads.
POLL_S = 0.2
#: Seconds between looks at whether a server has exited.
EXIT_POLL_S = 0.05
#: Bytes of a server's output read at a time; a longer line is logged in pieces.
READ_BYTES = 1 << 16
#: What ends a line of a server's output: progress bars end theirs with a carriage return.
LINE_END = re.compile(rb"[\r\n]")
#: Seconds a stopped server has to exit before it is killed.
STOP_GRACE_S = 10.0
#: A server that stayed up this long starts the backoff afresh when it dies.
STABLE_S = 60.0
#: Lines of its output kept to explain a failed start.
TAIL_LINES = 20
PR_SET_PDEATHSIG = 1


def free_loopback_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _die_with_parent() -> None:
    """In the child, before exec: SIGTERM when the parent dies (Linux)."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


class ServerProcess:
    """One server process kept alive on `127.0.0.1:port`.

    `command(port)` is its command line, run with the bot's environment plus `env`;
    `health_path` answers 200 once it serves. `start()`
    returns once it is healthy (or raises EngineError with its last line of output, or when it
    is silent for `start_timeout_s` or not healthy within `start_cap_s` by `clock`); after
    that a watcher restarts it whenever it exits, waiting `backoff_s`, doubled after each
    failed life up to `max_backoff_s`. `stop()` ends it (SIGTERM, then SIGKILL).
    """

    def __init__(
        self,
        name: str,
        command: Callable[[int], Sequence[str]],
        *,
        health_path: str = "/health",
        env: Mapping[str, str] | None = None,
        backoff_s: float = 1.0,
        max_backoff_s: float = 30.0,
        start_timeout_s: float = START_TIMEOUT_S,
        start_cap_s: float = START_CAP_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.name = name
        self._command = command
        self._health_path = health_path
        self._env = {**os.environ, **env} if env else None
        self._backoff_s = backoff_s
        self._max_backoff_s = max_backoff_s
        self._start_timeout_s = start_timeout_s
        self._start_cap_s = start_cap_s
        self._clock = clock
        self.port = 0
        self._process: asyncio.subprocess.Process | None = None
        self._watcher: asyncio.Task[None] | None = None
        self._readers: set[asyncio.Task[None]] = set()
        self._ready = asyncio.Event()
        self._stopping = False
        self._tail: deque[str] = deque(maxlen=TAIL_LINES)
        #: When the server last printed something (monotonic).
        self._last_output = 0.0
        #: How many times it was started again after dying.
        self.restarts = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    @property
    def ready(self) -> bool:
        return self._ready.is_set()

    async def start(self) -> None:
        self.port = free_loopback_port()
        await self._launch()
        self._watcher = asyncio.create_task(self._watch(), name=f"{self.name} watcher")

    async def wait_ready(self, timeout_s: float) -> None:
        """Return once the server serves; EngineUnavailable after `timeout_s` or when stopped."""
        if self._stopping:
            raise EngineUnavailable(f"{self.name} is stopped", key="engine.unavailable")
        try:
            await asyncio.wait_for(self._ready.wait(), timeout_s)
        except TimeoutError:
            raise EngineUnavailable(
                f"{self.name} is restarting and did not come back within {timeout_s:.0f} s",
                key="engine.unavailable",
            ) from None

    async def stop(self) -> None:
        self._stopping = True
        self._ready.clear()
        if self._watcher is not None:
            self._watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watcher
        await self._end_process()
        for reader in list(self._readers):
            with contextlib.suppress(asyncio.CancelledError):
                await reader

    async def _launch(self) -> None:
        """Start the process and wait until it answers its health check."""
        command = [str(part) for part in self._command(self.port)]
        self._tail.clear()
        self._last_output = self._clock()
        self._process = await asyncio.create_subprocess_exec(
            *command,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            start_new_session=True,
            env=self._env,
            preexec_fn=_die_with_parent if sys.platform == "linux" else None,
        )
        log.info("%s started (pid %d) on %s", self.name, self._process.pid, self.url)
        reader = asyncio.create_task(self._relay(self._process), name=f"{self.name} output")
        self._readers.add(reader)
        reader.add_done_callback(self._readers.discard)
        await self._wait_healthy(self._process)
        self._ready.set()
        log.info("%s is ready on %s", self.name, self.url)

    async def _wait_healthy(self, process: asyncio.subprocess.Process) -> None:
        import aiohttp

        timeout = aiohttp.ClientTimeout(total=2)
        cap = self._clock() + self._start_cap_s
        async with aiohttp.ClientSession(timeout=timeout) as session:
            while (overdue := self._start_overdue(cap)) is None:
                if process.returncode is not None:
                    await asyncio.sleep(0)  # let the reader take its last lines
                    _signal_group(process.pid, signal.SIGKILL)  # its helpers, left without it
                    raise EngineError(self._exit_text(process.returncode))
                with contextlib.suppress(OSError, TimeoutError, aiohttp.ClientError):
                    async with session.get(self.url + self._health_path) as response:
                        if response.status == 200:
                            return
                await _exited(process, POLL_S)
        await self._end_process()
        raise EngineError(overdue)

    def _start_overdue(self, cap: float) -> str | None:
        """Why a loading server is given up now (silent too long, or not healthy by `cap`)."""
        now = self._clock()
        if now >= cap:
            last = self._tail[-1] if self._tail else "no output"
            return f"{self.name} did not become healthy within {self._start_cap_s:g} s: {last}"
        if now >= self._last_output + self._start_timeout_s:
            return (
                f"{self.name} did not become healthy and printed nothing for "
                f"{self._start_timeout_s} s"
            )
        return None

    def _exit_text(self, code: int) -> str:
        last = self._tail[-1] if self._tail else "no output"
        return f"{self.name} exited with status {code}: {last}"

    async def _relay(self, process: asyncio.subprocess.Process) -> None:
        """Its output, line by line, through the bot's logger (errors as warnings). The pipe is
        always drained: a progress bar's line without end comes in pieces, never blocks it."""
        assert process.stdout is not None
        server_log = logging.getLogger(f"{__name__}.{self.name}")
        pending = b""
        while chunk := await process.stdout.read(READ_BYTES):
            self._last_output = self._clock()
            *lines, pending = LINE_END.split(pending + chunk)
            if len(pending) >= READ_BYTES:
                lines.append(pending)
                pending = b""
            for raw in lines:
                self._log_line(server_log, raw)
        self._log_line(server_log, pending)

    def _log_line(self, server_log: logging.Logger, raw: bytes) -> None:
        line = raw.decode(errors="replace").rstrip()
        if not line:
            return
        self._tail.append(line)
        lowered = line.lower()
        level = logging.WARNING if "error" in lowered or "failed" in lowered else logging.DEBUG
        server_log.log(level, "%s", line)

    async def _watch(self) -> None:
        """Start the server again whenever it exits, backing off while it keeps failing."""
        delay = self._backoff_s
        while not self._stopping:
            process = self._process
            assert process is not None
            started = time.monotonic()
            code = await _exited(process)
            assert code is not None  # no time limit
            self._ready.clear()
            if self._stopping:
                return
            _signal_group(process.pid, signal.SIGKILL)  # its helpers, left without it
            if time.monotonic() - started >= STABLE_S:
                delay = self._backoff_s
            log.warning("%s; restarting in %.1f s", self._exit_text(code), delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, self._max_backoff_s)
            self.restarts += 1
            try:
                await self._launch()
            except (EngineError, OSError) as error:  # OSError: its program is gone, say
                log.warning("%s could not be restarted: %s", self.name, error)

    async def _end_process(self) -> None:
        """SIGTERM to the server's process group, SIGKILL to what is left after the grace."""
        process = self._process
        if process is None or process.returncode is not None:
            return
        _signal_group(process.pid, signal.SIGTERM)
        if await _exited(process, STOP_GRACE_S) is None:
            process.kill()
            await _exited(process)
        _signal_group(process.pid, signal.SIGKILL)
        log.info("%s stopped", self.name)


async def _exited(
    process: asyncio.subprocess.Process, timeout_s: float | None = None
) -> int | None:
    """The process's exit status once it has exited (None after `timeout_s`), whoever still
    holds its output pipe."""
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    while process.returncode is None:
        if deadline is not None and time.monotonic() >= deadline:
            return None
        await asyncio.sleep(EXIT_POLL_S)
    return process.returncode


def _signal_group(leader: int, signum: signal.Signals) -> None:
    """Signal the process group `leader` started (none left: nothing to do)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(leader, signum)
