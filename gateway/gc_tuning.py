"""The garbage collector tuned for a server process, applied in every worker once it has started."""

from __future__ import annotations

import gc

from aiohttp import web

# Generation 0 is collected each time the tracked objects allocated minus
# those freed reach this number. Python's default, 700, is below a server's
# own in-flight working set: a request in flight holds ~11 tracked objects of
# its own (its aiohttp request and message, their headers, the handler's
# coroutine and task, the command, the group-commit future), so 64 requests in
# flight already hold 700 and 1,024 hold ~11,000. Each such young collection
# finds nearly nothing to free and promotes the live requests, and every
# hundredth one walks the whole heap: under `make bench` at 64 connections
# (Layer POST, 10 s) the default made ~730 young collections, ~70 of
# generation 1 and 6 full ones of 18-22 ms each (the p99), ~3 µs of CPU per
# request in all. At 50,000, four times the working set of 1,024 connections,
# the same run made ~105 young collections of at most 0.26 ms and no full one
# but the collect() below.
GEN0_THRESHOLD = 50_000


def tune_for_serving() -> None:
    """Freeze what start-up built and collect young objects less often.

    Everything alive once the app has started (modules, the app, its pools,
    compiled schemas and regexes) lives as long as the process: frozen, it is
    never walked again, so the full collections that remain cost a walk of
    what requests left behind, not of the whole heap.
    """
    gc.collect()
    gc.freeze()
    _, gen1, gen2 = gc.get_threshold()
    gc.set_threshold(GEN0_THRESHOLD, gen1, gen2)


async def tune_after_startup(_: web.Application) -> None:
    tune_for_serving()
