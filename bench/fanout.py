"""Fan-out latency and memory: POST /internal/v1/targets against a seeded database.

    .venv/bin/python bench/fanout.py                      # throwaway database, 1M over 200k
    .venv/bin/python bench/fanout.py --registrations 100000 --users 20000
    DATABASE_URL=postgresql://... .venv/bin/python bench/fanout.py   # an existing database

Without DATABASE_URL (or --database-url) it creates ``gateway_fanout_<random>`` on
--admin-url, seeds it with bench/seed.py and drops it at the end. With one, it seeds that
database only when it holds no registrations. Then it starts the gateway
(``python -m gateway serve``) with a fresh GATEWAY_ADMIN_TOKEN and, for each audience
size, times fan-outs for random audiences of seeded users, from sending the request to
the last byte of the NDJSON answer (after one untimed run per size). The gateway's RSS
is sampled every 50 ms (psutil) throughout; for each size the peak over its runs is
reported beside the RSS just before them and the idle RSS after start-up. Prints the
figures, and writes them as JSON with --json.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib
import json
import os
import platform
import random
import secrets
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import aiohttp
import asyncpg
import orjson
import seed
from tools import free_port, percentile

from gateway.store import apply_schema

# psutil ships no type hints; it is only ever used through this handle.
psutil: Any = importlib.import_module("psutil")

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
HOST = "127.0.0.1"
ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
RSS_INTERVAL = 0.05
# (audience size, timed repetitions): fewer for the large ones, which take seconds.
DEFAULT_PLAN = "1:200,1000:50,100000:7"


def log(message: str) -> None:
    print(f"[fanout {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# ------------------------------------------------------------------ database


def with_database(dsn: str, name: str) -> str:
    return urlunsplit(urlsplit(dsn)._replace(path=f"/{name}"))


async def _admin(dsn: str, statement: str) -> None:
    connection = await asyncpg.connect(dsn)
    try:
        await connection.execute(statement)
    finally:
        await connection.close()


@contextlib.contextmanager
def throwaway_database(admin_url: str, keep: bool) -> Iterator[str]:
    name = f"gateway_fanout_{secrets.token_hex(4)}"
    asyncio.run(_admin(admin_url, f'CREATE DATABASE "{name}"'))
    log(f"created database {name}")
    try:
        yield with_database(admin_url, name)
    finally:
        if keep:
            log(f"kept database {name}")
        else:
            asyncio.run(_admin(admin_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
            log(f"dropped database {name}")


async def seeded_users(dsn: str) -> int:
    """How many seeded users the database holds, once the schema is in place."""
    await apply_schema(dsn)
    connection = await asyncpg.connect(dsn)
    try:
        count: int = await connection.fetchval(
            "SELECT count(DISTINCT user_id) FROM registrations WHERE user_id LIKE 'user-%'"
        )
        return count
    finally:
        await connection.close()


# ------------------------------------------------------------------ the gateway


class Gateway:
    """``python -m gateway serve`` on a free port, its log in a temporary file."""

    def __init__(self, dsn: str, admin_token: str) -> None:
        self.port = free_port()
        self.log = tempfile.NamedTemporaryFile(prefix="fanout-gateway-", suffix=".log")  # noqa: SIM115
        env = {**os.environ, "DATABASE_URL": dsn, "GATEWAY_ADMIN_TOKEN": admin_token}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "gateway", "serve", "--host", HOST, "--port", str(self.port)],
            cwd=ROOT,
            env=env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.url = f"http://{HOST}:{self.port}"

    def wait_ready(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise SystemExit(f"the gateway exited with {self.proc.returncode}:\n{self.tail()}")
            with contextlib.suppress(OSError), socket.create_connection((HOST, self.port), 0.2):
                return
            time.sleep(0.1)
        raise SystemExit(f"the gateway did not start within {timeout} s:\n{self.tail()}")

    def tail(self, lines: int = 30) -> str:
        text = Path(self.log.name).read_text(errors="replace").splitlines()
        return "\n".join(text[-lines:])

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


class RssSampler(threading.Thread):
    """The gateway process's resident set size every RSS_INTERVAL, with a movable mark."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.process = psutil.Process(pid)
        self.samples: list[tuple[float, int]] = []
        self._halt = threading.Event()

    def run(self) -> None:
        while not self._halt.is_set():
            try:
                rss = int(self.process.memory_info().rss)
            except psutil.Error:
                return
            self.samples.append((time.monotonic(), rss))
            self._halt.wait(RSS_INTERVAL)

    def stop(self) -> None:
        self._halt.set()
        self.join()

    def peak(self, start: float, end: float) -> int:
        window = [rss for at, rss in self.samples if start <= at <= end]
        return max(window) if window else 0

    def latest(self) -> int:
        return self.samples[-1][1] if self.samples else 0


# ------------------------------------------------------------------ measuring


@dataclass
class Audience:
    size: int
    repeats: int
    seconds: list[float] = field(default_factory=list)
    first_byte_seconds: list[float] = field(default_factory=list)
    targets: list[int] = field(default_factory=list)
    bytes: list[int] = field(default_factory=list)
    rss_before: int = 0
    rss_peak: int = 0

    def summary(self) -> dict[str, Any]:
        return {
            "users": self.size,
            "runs": len(self.seconds),
            "p50_ms": round(percentile(self.seconds, 0.5) * 1000, 2),
            "p99_ms": round(percentile(self.seconds, 0.99) * 1000, 2),
            "max_ms": round(max(self.seconds) * 1000, 2),
            "first_byte_p50_ms": round(percentile(self.first_byte_seconds, 0.5) * 1000, 2),
            "targets_mean": round(statistics.fmean(self.targets)),
            "mb_mean": round(statistics.fmean(self.bytes) / 1e6, 2),
            "rss_before_mb": round(self.rss_before / 2**20, 1),
            "rss_peak_mb": round(self.rss_peak / 2**20, 1),
        }


async def fan_out(
    session: aiohttp.ClientSession, url: str, key: str, users: list[str], category: str
) -> tuple[float, float, int, int]:
    """(seconds to the last byte, seconds to the first, targets, bytes) of one fan-out."""
    body = orjson.dumps({"users": users, "category": category})
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    started = time.perf_counter()
    first_byte = 0.0
    lines = size = 0
    async with session.post(f"{url}/internal/v1/targets", data=body, headers=headers) as response:
        if response.status != 200:
            raise SystemExit(f"fan-out answered {response.status}: {await response.text()}")
        async for chunk in response.content.iter_any():
            if not size:
                first_byte = time.perf_counter() - started
            size += len(chunk)
            lines += chunk.count(b"\n")
    return time.perf_counter() - started, first_byte or time.perf_counter() - started, lines, size


async def measure(
    url: str,
    key: str,
    plan: list[Audience],
    users: int,
    category: str,
    rss: RssSampler,
    rng: random.Random,
) -> None:
    timeout = aiohttp.ClientTimeout(total=600)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        for audience in plan:
            size = min(audience.size, users)
            audience.rss_before = rss.latest()
            window_start = time.monotonic()
            # One untimed run: the first use of a connection prepares the statement.
            sample = [seed.user_id(n) for n in rng.sample(range(users), size)]
            await fan_out(session, url, key, sample, category)
            for _ in range(audience.repeats):
                sample = [seed.user_id(n) for n in rng.sample(range(users), size)]
                seconds, first, lines, nbytes = await fan_out(session, url, key, sample, category)
                audience.seconds.append(seconds)
                audience.first_byte_seconds.append(first)
                audience.targets.append(lines)
                audience.bytes.append(nbytes)
            await asyncio.sleep(2 * RSS_INTERVAL)
            audience.rss_peak = rss.peak(window_start, time.monotonic())
            log(f"{size:>7,} users: " + json.dumps(audience.summary()))


def parse_plan(text: str) -> list[Audience]:
    plan = []
    for item in text.split(","):
        size, _, repeats = item.partition(":")
        plan.append(Audience(int(size), int(repeats or 5)))
    return plan


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Measure fan-out latency and the gateway's memory.")
    p.add_argument(
        "--database-url",
        default=os.environ.get("DATABASE_URL"),
        help="a database to use (DATABASE_URL); else a throwaway one on --admin-url",
    )
    p.add_argument("--admin-url", default=ADMIN_URL, help=f"where to create it ({ADMIN_URL})")
    p.add_argument("--registrations", type=int, default=1_000_000, help="to seed (1,000,000)")
    p.add_argument("--users", type=int, default=200_000, help="to seed (200,000)")
    p.add_argument(
        "--plan",
        default=DEFAULT_PLAN,
        help=f"audience:runs pairs, comma-separated ({DEFAULT_PLAN})",
    )
    p.add_argument("--category", default="chat_message")
    p.add_argument("--seed", type=int, default=1, help="random seed for the audiences (1)")
    p.add_argument("--keep-db", action="store_true", help="do not drop the throwaway database")
    p.add_argument("--json", type=Path, help="also write the figures here")
    return p.parse_args(argv)


def run(args: argparse.Namespace, dsn: str) -> dict[str, Any]:
    figures: dict[str, Any] = {
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
        },
    }
    users = asyncio.run(seeded_users(dsn))
    if users == 0:
        log(f"seeding {args.registrations:,} registrations over {args.users:,} users")
        figures["seed"] = asyncio.run(seed.seed(dsn, args.registrations, args.users))
        log(f"seeded: {figures['seed']}")
        users = args.users
    else:
        log(f"using the {users:,} seeded users already there")
    key = secrets.token_hex(16)
    gateway = Gateway(dsn, key)
    try:
        gateway.wait_ready()
        sampler = RssSampler(gateway.proc.pid)
        sampler.start()
        time.sleep(1)
        figures["rss_idle_mb"] = round(sampler.latest() / 2**20, 1)
        plan = parse_plan(args.plan)
        try:
            asyncio.run(
                measure(
                    gateway.url, key, plan, users, args.category, sampler, random.Random(args.seed)
                )
            )
        finally:
            sampler.stop()
        figures["category"] = args.category
        figures["audiences"] = [audience.summary() for audience in plan]
        figures["runs"] = [asdict(audience) for audience in plan]
        figures["machine"]["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    finally:
        gateway.stop()
    return figures


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.database_url:
        figures = run(args, args.database_url)
    else:
        with throwaway_database(args.admin_url, args.keep_db) as dsn:
            figures = run(args, dsn)
    print(json.dumps({k: v for k, v in figures.items() if k != "runs"}, indent=2))
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
