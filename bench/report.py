"""Renders bench results: the stdout table and results.png."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def table(results: dict[str, Any]) -> str:
    head = (
        f"{'scenario':<17}{'conns':>6} | {'bare req/s':>10}{'p50 ms':>8}{'p99 ms':>8}{'err':>5}"
        f" | {'gw req/s':>9}{'p50 ms':>8}{'p99 ms':>8}{'err':>5}{'non2xx':>7}"
        f" | {'gw/bare':>7} | {'gw RSS MB':>11}{'cpu µs/req':>11}"
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
