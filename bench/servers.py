"""The servers under test: processes this harness starts, their readiness, memory, CPU
and connections, and how to tell that one has finished what wrk left it."""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import shlex
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from verify import Verifier

# psutil ships no type hints; it is only ever used through this handle.
psutil: Any = importlib.import_module("psutil")

ROOT = Path(__file__).resolve().parent.parent
HOST = "127.0.0.1"


def command(template: str, **values: str | int) -> list[str]:
    return shlex.split(template.format(python=sys.executable, host=HOST, **values))


class Server:
    """A server process we started, its readiness, memory and CPU."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], log_path: Path) -> None:
        self.name = name
        self.argv = argv
        self.port = int(argv[argv.index("--port") + 1]) if "--port" in argv else 0
        self.log_path = log_path
        self._log = log_path.open("wb")
        self.proc = subprocess.Popen(
            argv,
            cwd=ROOT,
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def tail(self, lines: int = 30) -> str:
        text = self.log_path.read_text(errors="replace").splitlines()
        return "\n".join(text[-lines:])

    def wait_ready(self, timeout: float = 60.0) -> str:
        """Poll GET /health/live; any HTTP answer (a 404 from a server without it) will do."""
        deadline = time.monotonic() + timeout
        url = f"http://{HOST}:{self.port}/health/live"
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                code = self.proc.returncode
                raise RuntimeError(f"{self.name} exited with {code}:\n{self.tail()}")
            try:
                with urllib.request.urlopen(url, timeout=1) as resp:
                    return f"/health/live {resp.status}"
            except urllib.error.HTTPError as exc:
                return f"/health/live {exc.code} (port answers)"
            except (urllib.error.URLError, OSError):
                time.sleep(0.1)
        raise RuntimeError(f"{self.name} not ready after {timeout}s:\n{self.tail()}")

    def processes(self) -> list[Any]:
        try:
            root = psutil.Process(self.proc.pid)
            return [root, *root.children(recursive=True)]
        except psutil.Error:
            return []

    def rss_bytes(self) -> int:
        total = 0
        for p in self.processes():
            with contextlib.suppress(psutil.Error):
                total += int(p.memory_info().rss)
        return total

    def cpu_seconds(self) -> float:
        total = 0.0
        for p in self.processes():
            with contextlib.suppress(psutil.Error):
                t = p.cpu_times()
                total += float(t.user + t.system)
        return total

    def peer_sockets(self) -> int:
        """Client-side sockets still open towards the port, orphans included: a request
        whose handshake was answered with a SYN cookie while the accept queue was full
        is retransmitted by the client's kernel, even after wrk has exited."""
        n = 0
        with contextlib.suppress(psutil.Error):
            for c in psutil.net_connections(kind="tcp"):
                if (
                    c.raddr
                    and c.raddr.port == self.port
                    and c.status not in (psutil.CONN_TIME_WAIT, psutil.CONN_CLOSE)
                ):
                    n += 1
        return n

    def client_connections(self) -> int:
        n = 0
        for p in self.processes():
            with contextlib.suppress(psutil.Error):
                n += sum(
                    1
                    for c in p.net_connections(kind="tcp")
                    if c.laddr and c.laddr.port == self.port and c.status != psutil.CONN_LISTEN
                )
        return n

    def check_alive(self) -> None:
        code = self.proc.poll()
        if code is not None:
            raise RuntimeError(f"{self.name} exited with {code}; its log ends:\n{self.tail()}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
        self._log.close()


class DatabaseBackends:
    """The PostgreSQL backends serving one database: their CPU is the database's cost."""

    def __init__(self, database: str) -> None:
        self.database = database

    def cpu_seconds(self) -> float:
        total = 0.0
        for p in psutil.process_iter(["cmdline"]):
            with contextlib.suppress(psutil.Error):
                # A backend's title: "postgres: <user> <database> <client> <state>".
                title = " ".join(p.info["cmdline"] or ())
                if title.startswith("postgres: ") and f" {self.database} " in title:
                    t = p.cpu_times()
                    total += float(t.user + t.system)
        return total


class Sampler:
    """Samples a server's RSS and CPU time every ``interval`` seconds while a wrk run lasts,
    and the CPU time of the database's backends when given them."""

    def __init__(
        self, server: Server, database: DatabaseBackends | None = None, interval: float = 0.5
    ) -> None:
        self.server = server
        self.database = database
        self.interval = interval
        self.samples: list[tuple[float, int, float]] = []  # (epoch s, rss bytes, cpu s)
        self.database_samples: list[tuple[float, int, float]] = []  # (epoch s, 0, cpu s)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _sample(self) -> None:
        rss = self.server.rss_bytes()
        if rss:
            self.samples.append((time.time(), rss, self.server.cpu_seconds()))
        if self.database is not None:
            self.database_samples.append((time.time(), 0, self.database.cpu_seconds()))

    def _run(self) -> None:
        while True:
            self._sample()
            if self._stop.wait(self.interval):
                return

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()

    def rss_mb(self) -> tuple[float, float]:
        rss = [r for _, r, _ in self.samples] or [0]
        return round(min(rss) / 2**20, 1), round(max(rss) / 2**20, 1)

    def cpu_cores(self, t0: float, t1: float, *, database: bool = False) -> float | None:
        """CPU seconds per second between the first and last samples inside [t0, t1]."""
        samples = self.database_samples if database else self.samples
        inside = [(t, c) for t, _, c in samples if t0 <= t <= t1]
        if len(inside) < 2 or inside[-1][0] - inside[0][0] <= 0:
            return None
        return (inside[-1][1] - inside[0][1]) / (inside[-1][0] - inside[0][0])


def settle(server: Server, verifier: Verifier | None, timeout: float = 120.0) -> dict[str, float]:
    """Wait until the server has finished what wrk left it: no connection left on either
    side, no CPU being spent, and (with a database) the registrations unchanged, over
    0.75 s.

    A request still in flight when wrk stops is not cancelled by the gateway (its write
    is shared by a group commit), so it may land well after wrk has gone; so may one
    the client's kernel is still retransmitting (see ``Server.peer_sockets``).
    """
    started = time.monotonic()
    deadline = started + timeout
    while time.monotonic() < deadline and (
        server.client_connections() > 0 or server.peer_sockets() > 0
    ):
        time.sleep(0.1)
    connections_gone = time.monotonic() - started
    last_cpu = server.cpu_seconds()
    last_print: object = None
    quiet = 0
    interval = 0.25
    while time.monotonic() < deadline and quiet < 3:
        time.sleep(interval)
        cpu = server.cpu_seconds()
        print_ = asyncio.run(verifier.fingerprint()) if verifier is not None else None
        idle = cpu - last_cpu < 0.05 * interval
        quiet = quiet + 1 if idle and print_ == last_print else 0
        last_cpu, last_print = cpu, print_
    return {
        "connections_gone_s": round(connections_gone, 2),
        "total_s": round(time.monotonic() - started, 2),
    }
