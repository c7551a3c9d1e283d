"""Two small tools the benchmarks and the tests share: a free port, a percentile.

The bench scripts import this as ``tools`` (they run as ``python bench/run.py``, with
bench/ on the path); the tests as ``bench.tools``, from the repository's root.
"""

from __future__ import annotations

import math
import socket
from collections.abc import Sequence


def free_port(host: str = "127.0.0.1") -> int:
    """A port nothing listens on now, for a server about to be started on ``host``."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        return int(probe.getsockname()[1])


def percentile(values: Sequence[float], fraction: float) -> float:
    """Nearest rank: the smallest value with at least ``fraction`` (0 to 1) of the values
    at or below it, so with fewer than 100 values p99 is the largest. NaN for none."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    # Rounded first: 0.07 * 100 is 7.000000000000001, whose ceiling would be 8.
    rank = math.ceil(round(fraction * len(ordered), 9))
    return ordered[min(len(ordered), max(rank, 1)) - 1]
