"""Reports a bench run: results.json's contents, the stdout table and results.png."""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import statistics
import subprocess
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from servers import ROOT, psutil
from verify import Verification
from workload import Layout
from wrk import WrkRun, cells, measure_threads, merge_statuses, ramp_seconds

FLOOD = "layer_flood"


def flood_summary(
    flood: WrkRun | None, wrk_runs: Sequence[WrkRun], workers: int
) -> dict[str, Any] | None:
    """The flood's figures beside a write's: layer_post's at the same connection count."""
    if flood is None:
        return None
    statuses = merge_statuses(flood.summary["threads"])
    refusal = flood.row()["cpu_us_per_request"]
    writes = [
        r.row()["cpu_us_per_request"]
        for r in wrk_runs
        if r.server == "gateway"
        and r.phase == "measure"
        and r.scenario == "layer_post"
        and r.connections == flood.connections
    ]
    write = statistics.median([w for w in writes if w is not None] or [0]) or None
    return {
        "connections": flood.connections,
        "rps": round(flood.rps, 1),
        "rps_per_worker": round(flood.rps / workers, 1),
        "latency_ms": flood.latency_ms(),
        "statuses": statuses,
        "socket_errors": flood.socket_errors,
        "cpu_us_per_request": refusal,
        "write_cpu_us_per_request": write,
        "refusal_over_write": round(refusal / write, 3) if refusal and write else None,
        "passed": flood.socket_errors == 0 and set(statuses) <= {"202", "429"},
    }


def table(results: dict[str, Any]) -> str:
    workers = int(results.get("workers", 1))
    head = (
        f"{'scenario':<17}{'conns':>6} | {'bare req/s':>10}{'p50 ms':>8}{'p99 ms':>8}{'err':>5}"
        f" | {'gw req/s':>9}{'p50 ms':>8}{'p99 ms':>8}{'err':>5}{'non2xx':>7}"
        f" | {'gw/bare':>7} | {'gw RSS MB':>11}{'cpu µs/req':>11}{'db µs/req':>10}"
        + (f"{'req/s/worker':>13}" if workers > 1 else "")
    )
    lines = [head, "-" * len(head)]
    for cell in results["summary"]:
        b, g = cell["bare"], cell["gateway"]
        ratio = cell["ratio_rps"]
        lines.append(
            f"{cell['scenario']:<17}{cell['connections']:>6} | {b['rps']:>10.0f}{b['p50_ms']:>8.2f}"
            f"{b['p99_ms']:>8.1f}{b['socket_errors'] + b['non_2xx']:>5}"
            f" | {g['rps']:>9.0f}{g['p50_ms']:>8.2f}{g['p99_ms']:>8.1f}{g['socket_errors']:>5}"
            f"{g['non_2xx']:>7} | {(f'{ratio:.2f}' if ratio is not None else '-'):>7}"
            f" | {g['rss_min_mb']:>5.0f}-{g['rss_max_mb']:<5.0f}{_num(g['cpu_us_per_request']):>11}"
            f"{_num(g.get('database_cpu_us_per_request')):>10}"
            + (f"{g['rps'] / workers:>13.0f}" if workers > 1 else "")
        )
    v = results["verification"]
    if not v["enabled"]:
        lines.append("verification: skipped (no database)")
    elif not v["checks"]:
        lines.append("verification: no gateway runs")
    else:
        checks = v["checks"]
        exact = [c for c in checks if c["exact"]]
        loose = [c for c in checks if not c["exact"]]
        lines.append(
            f"verification: {'PASSED' if v['passed'] else 'FAILED'} - {len(exact)} exact checks"
            f" ({sum(c['last_ack_exact'] for c in exact)} key checks on the last acknowledged"
            f" token, {sum(c['in_flight_landed'] for c in exact)} on the token in flight at"
            f" stop), {len(loose)} loose checks after measured runs; final state"
            f" {checks[-1]['rows']} rows"
        )
    flood = results.get("flood")
    if flood is not None:
        lines.append(
            f"rate-limit flood (one session, {flood['connections']} connections):"
            f" {flood['rps']:.0f} req/s, {flood['statuses']}, p99"
            f" {flood['latency_ms']['p99']:.1f} ms; CPU per refusal"
            f" {_num(flood['cpu_us_per_request'])} µs against"
            f" {_num(flood['write_cpu_us_per_request'])} µs per write:"
            f" {flood['refusal_over_write'] or 0:.2f} x"
        )
    lines.append(f"overall: {'PASSED' if results['passed'] else 'FAILED'}")
    return "\n".join(lines)


def chart(results: dict[str, Any], path: Path) -> str | None:
    """Throughput and p99 bars, bare vs gateway, per scenario and connection count."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "matplotlib is not installed: no chart (pip install matplotlib)"

    cells = results["summary"]
    labels = [
        f"{c['scenario']}\n{c['connections']} conns\ngw/bare {c['ratio_rps'] or 0:.2f}"
        for c in cells
    ]
    xs = list(range(len(cells)))
    width = 0.38
    fig, (ax_rps, ax_p99) = plt.subplots(1, 2, figsize=(max(8, 2.6 * len(cells)), 5.5))
    for ax, metric, title, unit in (
        (ax_rps, "rps", "Throughput (higher is better)", "requests / s"),
        (ax_p99, "p99_ms", "p99 latency (lower is better, log scale)", "ms"),
    ):
        bare = [c["bare"][metric] for c in cells]
        gw = [c["gateway"][metric] for c in cells]
        bars_b = ax.bar(
            [x - width / 2 for x in xs], bare, width, label="bare aiohttp", color="#9aa5b1"
        )
        bars_g = ax.bar([x + width / 2 for x in xs], gw, width, label="gateway", color="#2b6cb0")
        fmt = "%.0f" if metric == "rps" else "%.1f"
        ax.bar_label(bars_b, fmt=fmt, fontsize=7)
        ax.bar_label(bars_g, fmt=fmt, fontsize=7)
        ax.set_xticks(xs, labels, fontsize=8)
        ax.set_title(title)
        ax.set_ylabel(unit)
        if metric == "p99_ms":
            ax.set_yscale("log")
        ax.grid(axis="y", alpha=0.3)
        ax.legend(fontsize=8)
    m = results["machine"]
    fig.suptitle(
        f"push-token gateway vs bare aiohttp — {results['config']['duration_s']} s runs, "
        f"{m.get('cpus')} CPUs, {results['timestamp']}",
        fontsize=10,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return f"chart: {path}"


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}"


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


def _median_cell(runs: list[WrkRun]) -> dict[str, Any]:
    def med(values: list[float]) -> float:
        return float(statistics.median(values))

    cpu = [r.cpu_cores * 1e6 / r.rps for r in runs if r.cpu_cores is not None and r.rps]
    cores = [r.cpu_cores for r in runs if r.cpu_cores is not None]
    db = [
        r.database_cpu_cores * 1e6 / r.rps
        for r in runs
        if r.database_cpu_cores is not None and r.rps
    ]
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
        "database_cpu_us_per_request": round(med(db), 1) if db else None,
    }


def build_results(
    args: argparse.Namespace,
    layout: Layout,
    wrk_runs: Sequence[WrkRun],
    verifications: Sequence[Verification],
    verified: bool,
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
                for r in wrk_runs
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
    for r in wrk_runs:
        # The flood's 429s are its point; flood_summary judges its statuses.
        if r.server == "gateway" and r.scenario != FLOOD and (r.socket_errors or r.non_2xx):
            statuses = merge_statuses(r.summary["threads"])
            failures.append(
                f"gateway {r.phase} {r.scenario} c{r.connections}: socket errors "
                f"{r.summary['errors']}, non-2xx {r.non_2xx} {statuses}"
            )
    for v in verifications:
        if not v.passed:
            failures.append(f"verification {v.label}: {'; '.join(v.problems[:3])}")
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
            "users": layout.users,
            "sessions": layout.sessions,
            "devices_per_user": layout.devices,
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
            "passed": verified and all(v.passed for v in verifications),
            "checks": [v.as_dict() for v in verifications],
        },
        "runs": [r.row() for r in wrk_runs],
        "passed": not failures,
        "failures": failures,
    }
