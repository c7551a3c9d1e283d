"""The database's own cost of a write: PostgreSQL backend CPU per batch and per row.

    .venv/bin/python bench/dbcost.py                 # batches of 1, 32 and 256
    .venv/bin/python bench/dbcost.py --batches 1,8,64,512 --seconds 5

Creates a throwaway database on $DATABASE_URL's server (else the embedded PostgreSQL
that `make bench` uses), applies the schema, seeds the bench's sessions (1,000 users,
2 sessions each) and then, for each batch size, sends batches of Layer registrations
(each user's 8 devices re-registering with fresh tokens, as `make bench` does) through
apply_registration_writes() on one connection, back to back, for --seconds. The
backend's CPU time is read from /proc/<pid>/stat, so the server must run on this
machine. Prints, per batch size, the backend's CPU per batch and per row and the wall
time per batch; a fixed cost per call and a cost per row follow from two sizes.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import asyncpg
import verify
from workload import Layout, device_id

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from gateway.commands import Provider, RegisterToken, SessionRef
from gateway.planning import plan_writes
from gateway.sessions import ResolvedSession
from gateway.store import APPLY_WRITES, apply_schema

TICKS = os.sysconf("SC_CLK_TCK")


def backend_cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / TICKS  # utime, stime


async def measure(
    db_url: str, sessions: Sequence[verify.Session], layout: Layout, size: int, seconds: float
) -> dict[str, Any]:
    conn = await asyncpg.connect(db_url)
    try:
        pid = await conn.fetchval("SELECT pg_backend_pid()")
        keys = [
            (s, device_id(d))
            for s in sessions
            for d in range(layout.devices)
            if layout.session_of_device(s.user_index, d) == s.index
        ]
        ref = SessionRef(b"\0" * 32)  # the plan names sessions by id; the digest is unused
        batches = rows = 0
        cpu0, wall0 = backend_cpu_seconds(pid), time.perf_counter()
        while time.perf_counter() - wall0 < seconds:
            writes = []
            for i in range(size):
                session, device = keys[(rows + i) % len(keys)]
                command = RegisterToken(
                    session=ref,
                    device_id=device,
                    provider=Provider.APNS,
                    token=secrets.token_hex(32),
                )
                writes.append((ResolvedSession(session.db_id, session.user_id), command))
            await conn.fetchval(APPLY_WRITES, plan_writes(writes).document())
            batches += 1
            rows += size
        cpu = backend_cpu_seconds(pid) - cpu0
        wall = time.perf_counter() - wall0
    finally:
        await conn.close()
    return {
        "batch": size,
        "batches": batches,
        "backend_cpu_ms_per_batch": round(cpu / batches * 1e3, 3),
        "backend_cpu_us_per_row": round(cpu / rows * 1e6, 1),
        "wall_ms_per_batch": round(wall / batches * 1e3, 3),
    }


async def run(server_url: str, sizes: Sequence[int], seconds: float) -> list[dict[str, Any]]:
    layout = Layout(1000, 2, 8)
    name, db_url = await verify.create_database(server_url)
    try:
        await apply_schema(db_url)
        sessions = await verify.seed_sessions_copy(db_url, layout, secrets.token_hex(3))
        out = []
        for size in sizes:
            figures = await measure(db_url, sessions, layout, size, seconds)
            verify.log(json.dumps(figures))
            out.append(figures)
        return out
    finally:
        await verify.drop_database(server_url, name)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="PostgreSQL backend CPU per write batch and row.")
    p.add_argument("--batches", default="1,32,256", help="batch sizes, comma-separated")
    p.add_argument("--seconds", type=float, default=5.0, help="per batch size (5)")
    args = p.parse_args(argv)
    server_url = os.environ.get("DATABASE_URL")
    if not server_url:
        from run import database_server

        server_url, _ = database_server()
    sizes = [int(s) for s in args.batches.split(",") if s.strip()]
    figures = asyncio.run(run(server_url, sizes, args.seconds))
    if len(figures) >= 2:
        small, large = figures[0], figures[-1]
        per_row = (
            large["backend_cpu_ms_per_batch"] - small["backend_cpu_ms_per_batch"]
        ) / (large["batch"] - small["batch"])
        fixed = small["backend_cpu_ms_per_batch"] - per_row * small["batch"]
        print(
            f"backend CPU: {fixed * 1e3:.0f} µs per call + {per_row * 1e3:.1f} µs per row "
            f"(from batches of {small['batch']} and {large['batch']})"
        )
    print(json.dumps(figures, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
