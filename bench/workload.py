"""The benchmark workload, mirrored from ``bench/lua/common.lua``, and the expected state.

wrk runs with one connection per thread, keys are partitioned over threads, and every
request is a pure function of (run, thread, request number).  From the few numbers each
thread reports (requests sent, which request numbers got no answer or a non-2xx answer)
this module replays exactly what was sent and folds it into :class:`Model`: for every
key, the token the database must hold (the last acknowledged one) plus the few tokens
that may legitimately have landed after it (the request still in flight when wrk
stopped, and any request whose answer never came).

Keep this file and ``common.lua`` in step: a divergence shows up at once as a
verification failure, never as a silent pass.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

M: Final = 2147483647  # Park-Miller minimal standard generator
A: Final = 48271

FCM_PAD: Final = (
    "APA91bHbenchbenchbenchbench_filler-0123456789abcdefghijklmnopqrstuvwxyz"
    "ABCDEFGHIJKLMNOPQRSTUVWXYZ_filler-0123456789abcdefghijklmnopqrstuvwxyz"
    "-pad_0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ"
)
APNS_PAD: Final = "be7c4a11f00dcafe0123456789abcdef01234567"
FCM_LEN: Final = 152

APNS_RE: Final = re.compile(r"[0-9a-f]{64}")
FCM_RE: Final = re.compile(r"[A-Za-z0-9_:-]{40,160}")
DEVICE_RE: Final = re.compile(r"bench-device-(\d+)")

SCENARIOS: Final = ("layer_post", "navixy_post_json", "navixy_get")
# Which key a scenario writes, and the provider its rows must carry.
KEY_KIND: Final = {"layer_post": "device", "navixy_post_json": "session", "navixy_get": "session"}
PROVIDER: Final = {"device": "apns", "session": "fcm"}

# ("device", user_index, device_number) or ("session", session_index)
Key = tuple[str, int] | tuple[str, int, int]


def apns_token(run: int, tid: int, i: int) -> str:
    return f"{run:08x}{tid:08x}{i:08x}{APNS_PAD}"


def fcm_token(run: int, tid: int, i: int) -> str:
    head = f"bench{run:x}_{tid:x}_{i:x}:"
    return head + FCM_PAD[: FCM_LEN - len(head)]


def device_id(device: int) -> str:
    return f"bench-device-{device}"


@dataclass(frozen=True)
class Layout:
    """The key space: users, their sessions and their Layer devices."""

    users: int
    sessions_per_user: int
    devices: int

    @property
    def sessions(self) -> int:
        return self.users * self.sessions_per_user

    def session_of_device(self, user: int, device: int) -> int:
        """Each device always registers through the same session of its user."""
        return user * self.sessions_per_user + device % self.sessions_per_user

    def user_of_session(self, session: int) -> int:
        return session // self.sessions_per_user

    def key_count(self, kind: str) -> int:
        return self.users * self.devices if kind == "device" else self.sessions

    def thread_keys(self, kind: str, tid: int, nthreads: int) -> list[Key]:
        """The keys thread ``tid`` (1-based) owns: global key j with j % nthreads == tid - 1."""
        keys: list[Key] = []
        for j in range(tid - 1, self.key_count(kind), nthreads):
            if kind == "device":
                keys.append(("device", j // self.devices, j % self.devices))
            else:
                keys.append(("session", j))
        return keys


def token_for(kind: str, run: int, tid: int, i: int) -> str:
    return apns_token(run, tid, i) if kind == "device" else fcm_token(run, tid, i)


def replay(
    layout: Layout, kind: str, run: int, tid: int, nthreads: int, sent: int
) -> Iterator[tuple[int, Key, str]]:
    """(request number, key, token) for requests 1..sent of one wrk thread, as Lua made them."""
    keys = layout.thread_keys(kind, tid, nthreads)
    rng = (run * 7919 + tid * 104729) % M or 1
    for i in range(1, sent + 1):
        rng = rng * A % M
        yield i, keys[rng % len(keys)], token_for(kind, run, tid, i)


@dataclass
class KeyState:
    """What the database may hold for one key (``None``: no row)."""

    allowed: set[str | None] = field(default_factory=lambda: {None})
    acked: str | None = None  # the last acknowledged token, when exactly known
    exact: bool = True  # False after a run whose answers could not be matched
    floating: set[str] = field(default_factory=set)  # unanswered: may land at any time


@dataclass
class RunFold:
    """What one wrk run contributed to the model."""

    exact: bool = True
    requests: int = 0
    acknowledged: int = 0
    in_flight_at_end: int = 0
    unanswered: int = 0
    non_2xx: int = 0
    validation_calls: int = 0
    keys_touched: int = 0


class Model:
    """Per key, the exact set of tokens the database may hold after every run so far."""

    def __init__(self, layout: Layout) -> None:
        self.layout = layout
        self.keys: dict[Key, KeyState] = {}

    def fold_exact(
        self,
        scenario: str,
        run: int,
        nthreads: int,
        threads: Sequence[Mapping[str, Any]],
        socket_errors: int,
    ) -> RunFold:
        """A run with one connection per thread: every answer is matched to its request."""
        kind = KEY_KIND[scenario]
        out = RunFold()
        touched: set[Key] = set()
        for report in threads:
            tid = int(report["tid"])
            sent = int(report["sent"])
            answered = int(report["answered"])
            lost = {int(i) for i in report["lost"]}
            bad = {int(i) for i in report["bad"][0::2]}  # flat (request, status) pairs
            # wrk calls request() once in the first thread's state to validate the
            # script and never sends it: it shows up as request 1 of thread 1, unanswered.
            # Only with no socket error can that be the sole explanation.
            skip_first = tid == 1 and 1 in lost and socket_errors == 0
            if skip_first:
                lost.discard(1)
                out.validation_calls += 1
            in_flight = sent if answered != sent else None
            for i, key, token in replay(self.layout, kind, run, tid, nthreads, sent):
                if skip_first and i == 1:
                    continue
                out.requests += 1
                touched.add(key)
                state = self.keys.setdefault(key, KeyState())
                if i in lost:
                    out.unanswered += 1
                    state.floating.add(token)
                    state.allowed.add(token)
                elif i == in_flight:
                    # never answered: it may land now, later, or never
                    out.in_flight_at_end += 1
                    state.floating.add(token)
                    state.allowed.add(token)
                elif i in bad:
                    out.non_2xx += 1
                    state.allowed.add(token)
                else:
                    out.acknowledged += 1
                    state.acked = token
                    state.exact = True
                    state.allowed = {token, *state.floating}
        out.keys_touched = len(touched)
        return out

    def fold_loose(
        self, scenario: str, run: int, nthreads: int, threads: Sequence[Mapping[str, Any]]
    ) -> RunFold:
        """A run with several connections per thread: only counts are known per thread.

        A key may end on any token sent for it in this run; it may keep its earlier
        value only if every one of its requests could be among the thread's unanswered
        or non-2xx ones.
        """
        kind = KEY_KIND[scenario]
        out = RunFold(exact=False)
        for report in threads:
            tid = int(report["tid"])
            sent = int(report["sent"])
            ok = int(report["ok"])
            # The validation call (request 1 of thread 1) is counted in ``sent``.
            slack = sent - ok
            out.requests += sent
            out.acknowledged += ok
            out.non_2xx += int(report["responded"]) - ok
            per_key: dict[Key, set[str]] = {}
            for _, key, token in replay(self.layout, kind, run, tid, nthreads, sent):
                per_key.setdefault(key, set()).add(token)
            for key, tokens in per_key.items():
                state = self.keys.setdefault(key, KeyState())
                keep = state.allowed if len(tokens) <= slack else set()
                state.allowed = {*tokens, *keep, *state.floating}
                state.acked = None
                state.exact = False
            out.keys_touched += len(per_key)
        return out

    def observe(self, observed: Mapping[Key, str]) -> None:
        """Collapse every key to what the database was seen to hold (after it checked out)."""
        for key, state in self.keys.items():
            token = observed.get(key)
            if token is not None:
                state.floating.discard(token)  # a request lands at most once
            state.acked = token
            state.exact = True
            state.allowed = {token, *state.floating}
