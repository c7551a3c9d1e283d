"""The wrk driver: one wrk run of a scenario's Lua script against a server, its figures
(from the Lua summary: the window, latency, statuses) and the run plan."""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from servers import HOST, DatabaseBackends, Sampler, Server
from verify import log
from workload import Layout

LUA = Path(__file__).resolve().parent / "lua"


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
    database_cpu_cores: float | None = None
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
            "statuses": merge_statuses(threads),
            "rss_mb": {"min": self.rss_min_mb, "max": self.rss_max_mb},
            "cpu_cores": None if self.cpu_cores is None else round(self.cpu_cores, 3),
            "cpu_us_per_request": (
                round(self.cpu_cores * 1e6 / rps, 1) if self.cpu_cores is not None and rps else None
            ),
            "database_cpu_cores": (
                None if self.database_cpu_cores is None else round(self.database_cpu_cores, 3)
            ),
            "database_cpu_us_per_request": (
                round(self.database_cpu_cores * 1e6 / rps, 1)
                if self.database_cpu_cores is not None and rps
                else None
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


def merge_statuses(threads: Sequence[dict[str, Any]]) -> dict[str, int]:
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
        # The backends of the bench database, sampled beside the gateway (not bare).
        self.database: DatabaseBackends | None = None

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
        database = self.database if server.name == "gateway" else None
        with Sampler(server, database) as sampler:
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
            database_cpu_cores=sampler.cpu_cores(t0, t1, database=True) if database else None,
        )


def ramp_seconds(args: argparse.Namespace, connections: int, threads: int) -> float:
    """How long after launch the window opens: wrk's threads and connections come up."""
    if args.ramp is not None:
        return float(args.ramp)
    return 1.0 + connections / (512 if threads == connections else 1024)


def measure_threads(args: argparse.Namespace, connections: int) -> int:
    threads = int(args.threads)
    return connections if threads <= 0 else min(threads, connections)


def cells(args: argparse.Namespace) -> Iterator[tuple[str, int]]:
    for scenario in args.scenario_list:
        for conns in args.connection_counts:
            yield scenario, conns
