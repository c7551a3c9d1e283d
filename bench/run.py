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

This file runs the whole: arguments, the database, the order of the runs and their
verification.  The pieces: wrk.py drives wrk, servers.py starts and watches the servers,
verify.py checks the database, report.py writes the results, the table and the chart.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import resource
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import report
import verify
from servers import ROOT, DatabaseBackends, Server, command, settle
from tools import free_port
from verify import Session, Verification, Verifier, log
from workload import KEY_KIND, SCENARIOS, Layout, Model
from wrk import (
    Wrk,
    WrkRun,
    cells,
    ensure_wrk,
    measure_threads,
    merge_statuses,
    ramp_seconds,
)

BENCH = Path(__file__).resolve().parent
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
    p.add_argument(
        "--workers", type=int, default=1, help="gateway worker processes (1); req/s per worker"
    )
    p.add_argument(
        "--flood",
        type=int,
        default=10,
        help="seconds of the rate-limit flood after the cells (10; 0 skips it)",
    )
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


def raise_fd_limit(connections: int) -> int:
    """Children inherit it: wrk and the servers each need a socket per connection."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = max(soft, min(hard, 65536)) if hard != resource.RLIM_INFINITY else max(soft, 65536)
    if want != soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    if want < connections + 256:
        log(f"warning: RLIMIT_NOFILE {want} is tight for {connections} connections")
    return want


def database_server() -> tuple[str, str]:
    """(server URL, where it came from): DATABASE_URL, else the embedded PostgreSQL."""
    override = os.environ.get("DATABASE_URL")
    if override:
        return override, "DATABASE_URL"
    from gateway.embedded import start_embedded

    url = start_embedded(EMBEDDED_DATA_DIR)
    return url, f"embedded ({EMBEDDED_DATA_DIR / 'postgres'})"


async def server_setting(url: str, name: str) -> str:
    import asyncpg

    conn = await asyncpg.connect(url)
    try:
        return str(await conn.fetchval(f"SHOW {name}"))
    finally:
        await conn.close()


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


FLOOD_CONNECTIONS = 64


def run_flood(ctx: Context) -> WrkRun:
    """One session's worth of requests from every connection, against the gateway only.

    Past its burst the session gets 429 for nearly every request: the run's CPU per
    request is what a refusal costs, set beside a write's (layer_post at 64
    connections). Not verified against the model (one key, written by the few
    requests the limit lets through), only for its statuses.
    """
    args = ctx.args
    log(f"layer_flood x {FLOOD_CONNECTIONS} connections, one session")
    threads = measure_threads(args, FLOOD_CONNECTIONS)
    ramp = ramp_seconds(args, FLOOD_CONNECTIONS, threads)
    r = ctx.wrk.run(
        ctx.gateway, "layer_flood", FLOOD_CONNECTIONS, threads, args.flood, "measure", 1, ramp
    )
    ctx.runs.append(r)
    log(
        f"  gateway flood   {r.rps:9.0f} req/s  p99 {r.latency_ms()['p99']:7.1f} ms"
        f"  statuses {merge_statuses(r.summary['threads'])}"
    )
    return r


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
        gateway_cmd = args.gateway_cmd + (f" --workers {args.workers}" if args.workers > 1 else "")
        gateway = Server(
            "gateway", command(gateway_cmd, port=free_port()), env, logs / f"{tag}-gateway.log"
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
        if db_name is not None:
            ctx.wrk.database = DatabaseBackends(db_name)
        for scenario, conns in cells(args):
            for round_ in range(1, args.rounds + 1):
                log(f"{scenario} x {conns} connections (round {round_}/{args.rounds})")
                run_one(ctx, bare, scenario, conns, round_)
                run_one(ctx, gateway, scenario, conns, round_)
        # Last: the flood writes one key of layer_post's, outside the model.
        flood = run_flood(ctx) if args.flood > 0 else None
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

    results = report.build_results(
        args,
        ctx.layout,
        ctx.runs,
        ctx.verifications,
        ctx.verifier is not None,
        started,
        report.machine_info(wrk_bin, pg_version, pg_server),
        gateway_rss_after,
    )
    results["workers"] = args.workers
    results["flood"] = report.flood_summary(flood, ctx.runs, args.workers)
    if results["flood"] is not None and not results["flood"]["passed"]:
        results["passed"] = False
        results["failures"].append("the flood got answers other than 202 and 429")
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


if __name__ == "__main__":
    sys.exit(main())
