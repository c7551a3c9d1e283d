"""Load benchmark: the gateway against a bare aiohttp server, with database verification.

One run on this machine: a throwaway database, the schema, seeded sessions, a bare server
and the gateway on free loopback ports; then for every scenario and connection count,
bare first and gateway second, two wrk runs each:

* a short exact run (``-tC -cC``: one connection per wrk thread, so every answer is
  matched to its request), which is the warm-up, after which the database must hold,
  for every key, exactly the last acknowledged token (or the one still in flight);
* the measured run (``-t2 -cC`` by default), whose figures are reported, after which
  the database must hold, for every key, one of the tokens sent for it.

    .venv/bin/python bench/run.py                      # 10 s per run, 64 and 1024 connections
    .venv/bin/python bench/run.py --quick              # 3 s smoke run
    .venv/bin/python bench/run.py --scenarios layer_post --connections 64 --duration 5

Writes bench/results/results.json and results.png and prints a table; exits 1 when a
verification fails or the gateway answered anything but 2xx (or wrk saw socket errors
or timeouts against it).  See bench/README.md.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib
import json
import math
import os
import platform
import resource
import secrets
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import report
import verify
from tools import free_port
from verify import Session, Verification, Verifier, log
from workload import KEY_KIND, SCENARIOS, Layout, Model

# psutil ships no type hints; it is only ever used through this handle.
psutil: Any = importlib.import_module("psutil")

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
LUA = BENCH / "lua"
HOST = "127.0.0.1"
GATEWAY_CMD = "{python} -m gateway serve --host {host} --port {port}"
BARE_CMD = "{python} " + str(BENCH / "bare.py") + " --host {host} --port {port}"
MIGRATE_CMD = "{python} -m gateway migrate"
SESSION_CMD = "{python} -m gateway session create"
MAX_REGISTRATIONS_PER_USER = 25
# Without DATABASE_URL: the embedded PostgreSQL that `make run` uses (autovacuum on, as in
# a deployment), not the machine's server on 127.0.0.1:5432, which may run without it.
EMBEDDED_DATA_DIR = ROOT / ".data"


# ------------------------------------------------------------------------ arguments


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="Benchmark the gateway against a bare aiohttp server (see bench/README.md)."
    )
    p.add_argument("--duration", type=int, default=10, help="seconds per measured run (10)")
    p.add_argument(
        "--warmup",
        type=int,
        default=2,
        help="seconds of the exact (one connection per wrk thread) run before each (2)",
    )
    p.add_argument(
        "--threads",
        type=int,
        default=2,
        help="wrk threads for the measured runs (2); 0: one per connection, exact",
    )
    p.add_argument(
        "--connections", default="64,1024", help="comma-separated connection counts (64,1024)"
    )
    p.add_argument(
        "--scenarios", default=",".join(SCENARIOS), help=f"comma-separated, of {SCENARIOS}"
    )
    p.add_argument("--rounds", type=int, default=1, help="bare/gateway pairs per cell (1)")
    p.add_argument("--quick", action="store_true", help="smoke run: 3 s runs, 1 s warm-ups")
    p.add_argument("--users", type=int, default=1000)
    p.add_argument("--sessions-per-user", type=int, default=2)
    p.add_argument("--devices", type=int, default=8, help="Layer device_ids per user (8)")
    p.add_argument(
        "--ramp",
        type=float,
        default=None,
        help="seconds from wrk's launch to the measurement window (1 + connections/512)",
    )
    p.add_argument("--timeout", type=int, default=10, help="wrk --timeout in seconds (10)")
    p.add_argument(
        "--seed",
        choices=("copy", "cli"),
        default="copy",
        help="create sessions by COPY into the sessions table (fast) or the gateway CLI",
    )
    p.add_argument("--results", type=Path, default=BENCH / "results")
    p.add_argument("--keep-db", action="store_true", help="do not drop the throwaway database")
    p.add_argument("--no-chart", action="store_true")
    # Hidden overrides for testing the harness itself (e.g. bare.py as "gateway").
    p.add_argument("--gateway-cmd", default=GATEWAY_CMD, help=argparse.SUPPRESS)
    p.add_argument("--migrate-cmd", default=MIGRATE_CMD, help=argparse.SUPPRESS)
    p.add_argument("--no-db", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.quick:
        args.duration, args.warmup = 3, 1
    args.connection_counts = [int(c) for c in str(args.connections).split(",") if c.strip()]
    args.scenario_list = [s.strip() for s in str(args.scenarios).split(",") if s.strip()]
    unknown = set(args.scenario_list) - set(SCENARIOS)
    if unknown:
        p.error(f"unknown scenarios {sorted(unknown)}; choose from {SCENARIOS}")
    layout = Layout(args.users, args.sessions_per_user, args.devices)
    if args.devices + args.sessions_per_user >= MAX_REGISTRATIONS_PER_USER:
        p.error("devices + sessions-per-user must stay under 25, or eviction blurs verification")
    for c in args.connection_counts:
        for s in args.scenario_list:
            if c < 1 or c > layout.key_count(KEY_KIND[s]):
                p.error(f"{c} connections need at least {c} keys for {s}: raise --users")
    return args


# ------------------------------------------------------------------------ environment


def ensure_wrk() -> str:
    found = shutil.which("wrk")
    if found:
        return found
    log("wrk not found: apt-get update && apt-get install -y wrk")
    subprocess.run(["apt-get", "update"], check=True)
    subprocess.run(["apt-get", "install", "-y", "wrk"], check=True)
    found = shutil.which("wrk")
    if not found:
        raise SystemExit("wrk is still missing after apt-get install")
    return found


def raise_fd_limit(connections: int) -> int:
    """Children inherit it: wrk and the servers each need a socket per connection."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = max(soft, min(hard, 65536)) if hard != resource.RLIM_INFINITY else max(soft, 65536)
    if want != soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    if want < connections + 256:
        log(f"warning: RLIMIT_NOFILE {want} is tight for {connections} connections")
    return want


def command(template: str, **values: str | int) -> list[str]:
    return shlex.split(template.format(python=sys.executable, host=HOST, **values))


def database_server() -> tuple[str, str]:
    """(server URL, where it came from): DATABASE_URL, else the embedded PostgreSQL."""
    override = os.environ.get("DATABASE_URL")
    if override:
        return override, "DATABASE_URL"
    from gateway.database import start_embedded

    url = start_embedded(EMBEDDED_DATA_DIR)
    return url, f"embedded ({EMBEDDED_DATA_DIR / 'postgres'})"


async def server_setting(url: str, name: str) -> str:
    import asyncpg

    conn = await asyncpg.connect(url)
    try:
        return str(await conn.fetchval(f"SHOW {name}"))
    finally:
        await conn.close()


# ------------------------------------------------------------------------ servers


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


class Sampler:
    """Samples a server's RSS and CPU time every ``interval`` seconds while a wrk run lasts."""

    def __init__(self, server: Server, interval: float = 0.5) -> None:
        self.server = server
        self.interval = interval
        self.samples: list[tuple[float, int, float]] = []  # (epoch s, rss bytes, cpu s)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _sample(self) -> None:
        rss = self.server.rss_bytes()
        if rss:
            self.samples.append((time.time(), rss, self.server.cpu_seconds()))

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

    def cpu_cores(self, t0: float, t1: float) -> float | None:
        """CPU seconds per second between the first and last samples inside [t0, t1]."""
        inside = [(t, c) for t, _, c in self.samples if t0 <= t <= t1]
        if len(inside) < 2 or inside[-1][0] - inside[0][0] <= 0:
            return None
        return (inside[-1][1] - inside[0][1]) / (inside[-1][0] - inside[0][0])


# ------------------------------------------------------------------------ wrk


def histogram_percentile(hist: dict[str, int], q: float) -> float:
    """The q-th percentile (µs) of a histogram keyed by floor(100 * ln(latency µs))."""
    buckets = sorted((int(b), n) for b, n in hist.items())
    total = sum(n for _, n in buckets)
    if total == 0:
        return 0.0
    rank = q / 100 * total
    seen = 0
    for b, n in buckets:
        seen += n
        if seen >= rank:
            return math.exp((b + 0.5) / 100)
    return math.exp((buckets[-1][0] + 0.5) / 100)


@dataclass
class WrkRun:
    server: str
    scenario: str
    connections: int
    threads: int
    phase: str  # "verify" | "measure"
    round: int
    run: int
    duration_s: int
    summary: dict[str, Any]
    rss_min_mb: float
    rss_max_mb: float
    cpu_cores: float | None
    loadavg_before: float = 0.0
    settle: dict[str, float] | None = None
    fold: dict[str, Any] = field(default_factory=dict)
    verification: dict[str, Any] | None = None

    @property
    def exact(self) -> bool:
        return self.threads == self.connections

    @property
    def window(self) -> dict[str, Any]:
        return dict(self.summary["window"])

    @property
    def socket_errors(self) -> int:
        e = self.summary["errors"]
        return int(e["connect"] + e["read"] + e["write"] + e["timeout"])

    @property
    def non_2xx(self) -> int:
        return sum(int(t["responded"]) - int(t["ok"]) for t in self.summary["threads"])

    @property
    def rps(self) -> float:
        w = self.window
        return float(w["completed"]) / ((int(w["t1_us"]) - int(w["t0_us"])) / 1e6)

    def latency_ms(self) -> dict[str, float]:
        """Exact runs: measured in Lua over the window; others: wrk's, over the whole run."""
        if not self.exact:
            lat = self.summary["latency_us"]
            keys = ("p50", "p90", "p99", "p99_9", "mean", "max")
            return {k: round(float(lat[k]) / 1000, 3) for k in keys}
        w = self.window
        hist = w["hist"]
        done = max(1, int(w["completed"]))
        out = {
            f"p{q:g}".replace(".", "_"): histogram_percentile(hist, q) / 1000
            for q in (50, 90, 99, 99.9)
        }
        out["mean"] = int(w["latency_sum_us"]) / done / 1000
        out["max"] = int(w["latency_max_us"]) / 1000
        return {k: round(v, 3) for k, v in out.items()}

    @property
    def ramp_complete(self) -> bool | None:
        """Every connection had been answered before the window opened (exact runs only)."""
        if not self.exact:
            return None
        w = self.window
        return int(w["threads_without_response"]) == 0 and int(w["last_first_response_us"]) <= int(
            w["t0_us"]
        )

    def row(self) -> dict[str, Any]:
        w = self.window
        threads = self.summary["threads"]
        rps = self.rps
        return {
            "server": self.server,
            "scenario": self.scenario,
            "connections": self.connections,
            "wrk_threads": self.threads,
            "phase": self.phase,
            "round": self.round,
            "run": self.run,
            "window_s": self.duration_s,
            "completed_in_window": int(w["completed"]),
            "rps": round(rps, 1),
            "latency_ms": self.latency_ms(),
            "latency_basis": "window (Lua)" if self.exact else "whole run (wrk)",
            "ramp_complete": self.ramp_complete,
            "errors": self.summary["errors"],
            "socket_errors": self.socket_errors,
            "non_2xx": self.non_2xx,
            "statuses": _merge_statuses(threads),
            "rss_mb": {"min": self.rss_min_mb, "max": self.rss_max_mb},
            "cpu_cores": None if self.cpu_cores is None else round(self.cpu_cores, 3),
            "cpu_us_per_request": (
                round(self.cpu_cores * 1e6 / rps, 1) if self.cpu_cores is not None and rps else None
            ),
            "loadavg_1m_before": round(self.loadavg_before, 2),
            "settle": self.settle,
            "wrk_whole_run": {
                "requests": self.summary["requests"],
                "duration_us": self.summary["duration_us"],
                "latency_us": self.summary["latency_us"],
            },
            "fold": self.fold,
            "verification": self.verification,
        }


def _merge_statuses(threads: Sequence[dict[str, Any]]) -> dict[str, int]:
    out: dict[str, int] = {}
    for t in threads:
        for code, n in t["statuses"].items():
            out[str(code)] = out.get(str(code), 0) + int(n)
    return dict(sorted(out.items()))


class Wrk:
    def __init__(
        self, binary: str, workdir: Path, sessions_file: Path, layout: Layout, timeout: int
    ) -> None:
        self.binary = binary
        self.workdir = workdir
        self.sessions_file = sessions_file
        self.layout = layout
        self.timeout = timeout
        self.runs = 0

    def run(
        self,
        server: Server,
        scenario: str,
        connections: int,
        threads: int,
        seconds: int,
        phase: str,
        round_: int,
        ramp: float,
    ) -> WrkRun:
        """One wrk run; figures come from [launch + ramp, launch + ramp + seconds]."""
        self.runs += 1
        out = self.workdir / f"wrk-{self.runs:03d}-{server.name}-{scenario}-{connections}.json"
        launch = time.time()
        t0 = launch + ramp
        t1 = t0 + seconds
        wrk_seconds = math.ceil(ramp + seconds) + 1  # wrk's clock starts after its setup
        env = {
            **os.environ,
            "BENCH_SESSIONS": str(self.sessions_file),
            "BENCH_USERS": str(self.layout.users),
            "BENCH_DEVICES": str(self.layout.devices),
            "BENCH_THREADS": str(threads),
            "BENCH_EXACT": "1" if threads == connections else "0",
            "BENCH_RUN": str(self.runs),
            "BENCH_OUT": str(out),
            "BENCH_T0_US": str(int(t0 * 1e6)),
            "BENCH_T1_US": str(int(t1 * 1e6)),
        }
        # One connection per thread makes a run exact: each response belongs to the
        # thread's last request.
        argv = [
            self.binary,
            f"-t{threads}",
            f"-c{connections}",
            f"-d{wrk_seconds}s",
            f"--timeout={self.timeout}s",
            "--latency",
            "-s",
            str(LUA / f"{scenario}.lua"),
            f"http://{HOST}:{server.port}",
        ]
        server.check_alive()
        load = os.getloadavg()[0]
        with Sampler(server) as sampler:
            done = subprocess.run(
                argv,
                env=env,
                capture_output=True,
                text=True,
                timeout=wrk_seconds + 120,
                check=False,
            )
        server.check_alive()
        if done.returncode != 0 or not out.exists():
            raise RuntimeError(
                f"wrk failed ({done.returncode}): {' '.join(argv)}\n{done.stdout}\n{done.stderr}"
            )
        summary = json.loads(out.read_text())
        if int(summary["window"]["done_at_us"]) < int(t1 * 1e6):
            raise RuntimeError(f"wrk stopped before the window closed: {' '.join(argv)}")
        rss_min, rss_max = sampler.rss_mb()
        return WrkRun(
            server=server.name,
            scenario=scenario,
            connections=connections,
            threads=threads,
            phase=phase,
            round=round_,
            run=self.runs,
            duration_s=seconds,
            summary=summary,
            rss_min_mb=rss_min,
            rss_max_mb=rss_max,
            cpu_cores=sampler.cpu_cores(t0, t1),
            loadavg_before=load,
        )


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


# ------------------------------------------------------------------------ machine


def machine_info(
    wrk: str, pg_version: str | None, pg_server: dict[str, Any] | None = None
) -> dict[str, Any]:
    import aiohttp

    cpu_model = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    wrk_version = subprocess.run([wrk, "-v"], capture_output=True, text=True, check=False)
    git = subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True, check=False
    )
    return {
        "hostname": platform.node(),
        "platform": platform.platform(),
        "cpu_model": cpu_model,
        "cpus": os.cpu_count(),
        "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
        "loadavg_at_start": os.getloadavg(),
        "python": platform.python_version(),
        "aiohttp": aiohttp.__version__,
        "wrk": (wrk_version.stdout or wrk_version.stderr).splitlines()[0:1],
        "postgres": pg_version,
        "postgres_server": pg_server,
        "git_commit": git.stdout.strip() or None,
    }


# ------------------------------------------------------------------------ main


@dataclass
class Context:
    args: argparse.Namespace
    layout: Layout
    model: Model
    verifier: Verifier | None
    wrk: Wrk
    bare: Server
    gateway: Server
    runs: list[WrkRun] = field(default_factory=list)
    verifications: list[Verification] = field(default_factory=list)


def ramp_seconds(args: argparse.Namespace, connections: int, threads: int) -> float:
    """How long after launch the window opens: wrk's threads and connections come up."""
    if args.ramp is not None:
        return float(args.ramp)
    return 1.0 + connections / (512 if threads == connections else 1024)


def measure_threads(args: argparse.Namespace, connections: int) -> int:
    threads = int(args.threads)
    return connections if threads <= 0 else min(threads, connections)


def run_one(ctx: Context, server: Server, scenario: str, conns: int, round_: int) -> WrkRun:
    args = ctx.args
    runs = []
    plan = (
        ("verify", conns, args.warmup),
        ("measure", measure_threads(args, conns), args.duration),
    )
    for phase, threads, seconds in plan:
        if seconds <= 0:
            continue
        ramp = ramp_seconds(args, conns, threads)
        r = ctx.wrk.run(server, scenario, conns, threads, seconds, phase, round_, ramp)
        runs.append(r)
        if server is ctx.gateway:
            verify_run(ctx, r)
        ctx.runs.append(r)
        log(
            f"  {server.name:7} {phase:7} {r.rps:9.0f} req/s  p99 "
            f"{r.latency_ms()['p99']:7.1f} ms  socket errors {r.socket_errors}"
            f"  non-2xx {r.non_2xx}  rss {r.rss_max_mb} MB"
            + ("  (ramp incomplete)" if r.ramp_complete is False else "")
            + (
                f"  verify {'ok' if r.verification and r.verification['passed'] else 'FAILED'}"
                if r.verification
                else ""
            )
        )
    return runs[-1]


def verify_run(ctx: Context, r: WrkRun) -> None:
    if r.exact:
        fold = ctx.model.fold_exact(
            r.scenario, r.run, r.threads, r.summary["threads"], r.socket_errors
        )
    else:
        fold = ctx.model.fold_loose(r.scenario, r.run, r.threads, r.summary["threads"])
    r.fold = fold.__dict__.copy()
    if ctx.verifier is None:
        return
    r.settle = settle(ctx.gateway, ctx.verifier)
    label = f"run {r.run} {r.scenario} c{r.connections} {r.phase}"
    v, observed = asyncio.run(ctx.verifier.check(ctx.model, label, r.exact))
    attempts = 1
    while not v.passed and attempts < 4:  # queued writes may still be landing
        time.sleep(1.0)
        attempts += 1
        v, observed = asyncio.run(ctx.verifier.check(ctx.model, label, r.exact))
    v.attempts = attempts
    if v.passed:
        ctx.model.observe(observed)
    ctx.verifications.append(v)
    r.verification = v.as_dict()
    for problem in v.problems[:5]:
        log(f"    verify: {problem}")


def cells(args: argparse.Namespace) -> Iterator[tuple[str, int]]:
    for scenario in args.scenario_list:
        for conns in args.connection_counts:
            yield scenario, conns


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    layout = Layout(args.users, args.sessions_per_user, args.devices)
    wrk_bin = ensure_wrk()
    raise_fd_limit(max(args.connection_counts))
    args.results.mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix="gateway-bench-"))
    logs = args.results / "logs"
    logs.mkdir(exist_ok=True)
    tag = secrets.token_hex(3)
    server_url = ""
    env = dict(os.environ)
    db_name: str | None = None
    pg_version: str | None = None
    pg_server: dict[str, Any] | None = None
    servers: list[Server] = []
    started = datetime.now(UTC)
    try:
        sessions: list[Session]
        verifier: Verifier | None = None
        if args.no_db:
            sessions = verify.fake_sessions(layout, tag)
        else:
            server_url, source = database_server()
            pg_version = asyncio.run(verify.server_version(server_url))
            autovacuum = asyncio.run(server_setting(server_url, "autovacuum"))
            pg_server = {"source": source, "autovacuum": autovacuum}
            if autovacuum != "on":
                log(f"warning: autovacuum is {autovacuum} on this server ({source})")
            db_name, db_url = asyncio.run(verify.create_database(server_url))
            pg_server["database"] = db_name
            env["DATABASE_URL"] = db_url
            log(
                f"database {db_name} on {source} (PostgreSQL {pg_version}, "
                f"autovacuum {autovacuum}); migrating"
            )
            subprocess.run(command(args.migrate_cmd), cwd=ROOT, env=env, check=True)
            t0 = time.monotonic()
            if args.seed == "copy":
                sessions = asyncio.run(verify.seed_sessions_copy(db_url, layout, tag))
            else:
                sessions = asyncio.run(
                    verify.seed_sessions_cli(db_url, layout, tag, command(SESSION_CMD), env)
                )
            log(
                f"seeded {len(sessions)} sessions for {layout.users} users "
                f"in {time.monotonic() - t0:.1f}s ({args.seed})"
            )
            verifier = Verifier(db_url, layout, sessions)
        sessions_file = workdir / "sessions.txt"
        verify.write_sessions_file(sessions_file, sessions)

        bare = Server("bare", command(BARE_CMD, port=free_port()), env, logs / f"{tag}-bare.log")
        servers.append(bare)
        gateway = Server(
            "gateway", command(args.gateway_cmd, port=free_port()), env, logs / f"{tag}-gateway.log"
        )
        servers.append(gateway)
        for s in servers:
            log(f"{s.name} on port {s.port}: {s.wait_ready()}")

        ctx = Context(
            args,
            layout,
            Model(layout),
            verifier,
            Wrk(wrk_bin, workdir, sessions_file, layout, args.timeout),
            bare,
            gateway,
        )
        for scenario, conns in cells(args):
            for round_ in range(1, args.rounds + 1):
                log(f"{scenario} x {conns} connections (round {round_}/{args.rounds})")
                run_one(ctx, bare, scenario, conns, round_)
                run_one(ctx, gateway, scenario, conns, round_)
        gateway_rss_after = round(gateway.rss_bytes() / 2**20, 1)
    finally:
        for s in reversed(servers):
            s.stop()
        if db_name is not None and not args.keep_db:
            with contextlib.suppress(Exception):
                asyncio.run(verify.drop_database(server_url, db_name))
        elif db_name is not None:
            log(f"kept database {db_name}")
        shutil.rmtree(workdir, ignore_errors=True)

    results = build_results(
        ctx, args, started, machine_info(wrk_bin, pg_version, pg_server), gateway_rss_after
    )
    (args.results / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    print(report.table(results))
    if not args.no_chart:
        chart = report.chart(results, args.results / "results.png")
        if chart:
            log(chart)
    if not results["passed"]:
        for reason in results["failures"]:
            log(f"FAILED: {reason}")
        return 1
    return 0


def _median_cell(runs: list[WrkRun]) -> dict[str, Any]:
    def med(values: list[float]) -> float:
        return float(statistics.median(values))

    cpu = [r.cpu_cores * 1e6 / r.rps for r in runs if r.cpu_cores is not None and r.rps]
    cores = [r.cpu_cores for r in runs if r.cpu_cores is not None]
    return {
        "rounds": len(runs),
        "rps": round(med([r.rps for r in runs]), 1),
        "p50_ms": round(med([r.latency_ms()["p50"] for r in runs]), 2),
        "p99_ms": round(med([r.latency_ms()["p99"] for r in runs]), 2),
        "max_ms": round(max(r.latency_ms()["max"] for r in runs), 2),
        "socket_errors": sum(r.socket_errors for r in runs),
        "non_2xx": sum(r.non_2xx for r in runs),
        "ramp_complete": all(r.ramp_complete for r in runs),
        "rss_min_mb": min(r.rss_min_mb for r in runs),
        "rss_max_mb": max(r.rss_max_mb for r in runs),
        "cpu_cores": round(med(cores), 2) if cores else None,
        "cpu_us_per_request": round(med(cpu), 1) if cpu else None,
    }


def build_results(
    ctx: Context,
    args: argparse.Namespace,
    started: datetime,
    machine: dict[str, Any],
    gateway_rss_after: float,
) -> dict[str, Any]:
    summary = []
    for scenario, conns in cells(args):
        cell: dict[str, Any] = {"scenario": scenario, "connections": conns}
        for name in ("bare", "gateway"):
            runs = [
                r
                for r in ctx.runs
                if r.server == name
                and r.phase == "measure"
                and r.scenario == scenario
                and r.connections == conns
            ]
            cell[name] = _median_cell(runs)
        bare, gw = cell["bare"], cell["gateway"]
        cell["ratio_rps"] = round(gw["rps"] / bare["rps"], 3) if bare["rps"] else None
        cell["ratio_p99"] = round(gw["p99_ms"] / bare["p99_ms"], 2) if bare["p99_ms"] else None
        summary.append(cell)

    failures = []
    for r in ctx.runs:
        if r.server == "gateway" and (r.socket_errors or r.non_2xx):
            statuses = _merge_statuses(r.summary["threads"])
            failures.append(
                f"gateway {r.phase} {r.scenario} c{r.connections}: socket errors "
                f"{r.summary['errors']}, non-2xx {r.non_2xx} {statuses}"
            )
    for v in ctx.verifications:
        if not v.passed:
            failures.append(f"verification {v.label}: {'; '.join(v.problems[:3])}")
    verified = ctx.verifier is not None
    return {
        "timestamp": started.isoformat(timespec="seconds"),
        "finished": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine,
        "config": {
            "duration_s": args.duration,
            "warmup_s": args.warmup,
            "connections": args.connection_counts,
            "scenarios": args.scenario_list,
            "rounds": args.rounds,
            "users": ctx.layout.users,
            "sessions": ctx.layout.sessions,
            "devices_per_user": ctx.layout.devices,
            "ramp_s": {
                c: ramp_seconds(args, c, measure_threads(args, c)) for c in args.connection_counts
            },
            "measure_threads": {c: measure_threads(args, c) for c in args.connection_counts},
            "wrk": "verify runs: -tC -cC (one connection per thread); measured runs: "
            f"-t{args.threads or 'C'} -cC; --latency --timeout {args.timeout}s",
            "gateway_cmd": args.gateway_cmd,
            "seed": args.seed,
        },
        "summary": summary,
        "gateway_rss_after_mb": gateway_rss_after,
        "verification": {
            "enabled": verified,
            "passed": verified and all(v.passed for v in ctx.verifications),
            "checks": [v.as_dict() for v in ctx.verifications],
        },
        "runs": [r.row() for r in ctx.runs],
        "passed": not failures,
        "failures": failures,
    }


if __name__ == "__main__":
    sys.exit(main())
