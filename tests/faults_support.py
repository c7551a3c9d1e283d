"""The fault-injection harness: a Postgres to crash, the gateway as a process, clients, a model.

The clients keep every answer they get; the model says which stored states
those answers allow, so that a lost write shows as a state no answer explains.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest

from bench.tools import free_port as free_port  # re-exported: the stress tests import it here
from bench.tools import percentile
from gateway.commands import SessionRef
from tests.conftest import ROOT, layer_headers

# Layer's documented ceiling on registrations per user, from the spec rather
# than from gateway.store, so the model does not borrow the code it checks.
MAX_PER_USER = 25

BIND = "/v2/user/session/push_token/bind"
UNBIND = "/v2/user/session/push_token/delete"
LOGOUT = "/v2/user/logout"


async def wait_until(
    condition: Callable[[], Any], *, within: float, interval: float = 0.02, what: str
) -> None:
    """Poll ``condition`` (sync or async) until true; after ``within`` s, fail naming ``what``."""
    deadline = time.monotonic() + within
    while True:
        result = condition()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up after {within:.0f} s waiting for {what}")
        await asyncio.sleep(interval)


def describe_durations(values: Sequence[float]) -> str:
    if not values:
        return "none"
    return (
        f"n={len(values)} p50={statistics.median(values) * 1000:.0f} ms"
        f" p99={percentile(values, 0.99) * 1000:.0f} ms max={max(values) * 1000:.0f} ms"
    )


# ------------------------------------------------------------ the private database


class PrivatePostgres:
    """A PostgreSQL of the tests' own (pgserver's binaries, Unix socket only), to stop and crash.

    Never the suite's shared database: stopping that would fail every other test.
    As root, pgserver runs postgres as the system user 'pgserver', and so must
    every pg_ctl that talks to it.
    """

    def __init__(self) -> None:
        with warnings.catch_warnings():
            # platformdirs warns when XDG_RUNTIME_DIR is unset; the warning is
            # an error under this suite's filterwarnings.
            warnings.simplefilter("ignore")
            import pgserver
            from pgserver._commands import POSTGRES_BIN_PATH

            logging.getLogger("pgserver").setLevel(logging.WARNING)
            # Under /tmp, whose every parent the 'pgserver' user can traverse.
            self.root = Path(tempfile.mkdtemp(prefix="gateway-faults-", dir="/tmp"))
            self._server = pgserver.get_server(  # type: ignore[attr-defined]
                self.root / "pgdata", cleanup_mode="delete"
            )
        self._pg_ctl_path = Path(POSTGRES_BIN_PATH) / "pg_ctl"
        self.pgdata = Path(self._server.pgdata)
        self.log_path = self.pgdata / "log"
        self.socket_dir = Path(self._server.get_postmaster_info().socket_dir)
        self.dsn: str = self._server.get_uri("postgres")
        self._user = "pgserver" if os.geteuid() == 0 else None

    def _pg_ctl(self, *arguments: str, check: bool = True) -> int:
        command = [str(self._pg_ctl_path), "-D", str(self.pgdata), *arguments]
        # Output to a file, not a pipe: pg_ctl's postmaster would inherit a
        # pipe and keep it open (pgserver notes the same hang).
        with tempfile.TemporaryFile() as output:
            result = subprocess.run(  # noqa: S603 - our own binary, our own arguments
                command, stdout=output, stderr=subprocess.STDOUT, user=self._user,
                timeout=120, check=False,
            )
            if check and result.returncode != 0:
                output.seek(0)
                raise RuntimeError(
                    f"{' '.join(command)} failed ({result.returncode}):"
                    f" {output.read().decode(errors='replace')}\n--- server log ---\n"
                    f"{self.log_tail()}"
                )
        return result.returncode

    def is_running(self) -> bool:
        # pg_ctl status: 0 when running, 3 when not.
        return self._pg_ctl("status", check=False) == 0

    def stop(self, mode: str = "fast") -> None:
        self._pg_ctl("-w", "-m", mode, "stop")

    def start(self) -> None:
        # The options pgserver started it with: no TCP, the same socket directory.
        self._pg_ctl(
            "-w", "-o", '-h ""', "-o", f"-k {self.socket_dir}", "-l", str(self.log_path), "start"
        )

    def restart(self, mode: str = "immediate") -> None:
        """Stop (``immediate``: a crash, every backend killed, WAL replayed) and start again."""
        self._pg_ctl("-w", "-m", mode, "-l", str(self.log_path), "restart")

    def processes(self) -> list[int]:
        """The postmaster and its children (backends, checkpointer, walwriter, ...)."""
        postmaster = int((self.pgdata / "postmaster.pid").read_text().split()[0])
        found = [postmaster]
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            # The parent pid is the second field after the parenthesised name.
            if int(stat.rsplit(")", 1)[1].split()[1]) == postmaster:
                found.append(int(entry.name))
        return found

    def freeze(self) -> list[int]:
        """SIGSTOP every process of the server: it hangs as a partitioned host does."""
        frozen = self.processes()
        for pid in frozen:
            os.kill(pid, signal.SIGSTOP)
        return frozen

    @staticmethod
    def thaw(frozen: list[int]) -> None:
        for pid in frozen:
            with suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError as exc:
            return f"(no server log: {exc})"

    def destroy(self) -> None:
        if self.is_running():
            self.stop("immediate")
        # pgserver then tries to stop the postmaster it started (perhaps long
        # gone after our restarts) and logs an error when it cannot.
        pgserver_log = logging.getLogger("pgserver")
        pgserver_log.disabled = True
        try:
            self._server.cleanup()
        finally:
            pgserver_log.disabled = False
        shutil.rmtree(self.root, ignore_errors=True)


@asynccontextmanager
async def registrations_locked(dsn: str) -> AsyncIterator[asyncpg.Connection]:
    """Hold ACCESS EXCLUSIVE on registrations: every write batch waits until the block ends."""
    connection = await asyncpg.connect(dsn)
    try:
        transaction = connection.transaction()
        await transaction.start()
        await connection.execute("LOCK TABLE registrations IN ACCESS EXCLUSIVE MODE")
        try:
            yield connection
        finally:
            await transaction.rollback()
    finally:
        await connection.close()


async def backends_waiting_on_locks(connection: asyncpg.Connection) -> int:
    count: int = await connection.fetchval(
        "SELECT count(*) FROM pg_stat_activity"
        " WHERE wait_event_type = 'Lock' AND pid <> pg_backend_pid()"
    )
    return count


# ------------------------------------------------------------------ the gateway


class GatewayProcess:
    """``python -m gateway serve`` as a real process group on a free port, its log in a file."""

    def __init__(
        self,
        database_url: str,
        log_path: Path,
        *,
        workers: int = 1,
        environment: Mapping[str, str] | None = None,
    ) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        env = {name: value for name, value in os.environ.items() if not name.startswith("GATEWAY_")}
        env.update(
            DATABASE_URL=database_url,
            # Each client session here sends far more than a phone would.
            GATEWAY_RATE_LIMIT="0",
            GATEWAY_DATA_DIR=str(log_path.parent / "gateway-data"),
            **(environment or {}),
        )
        self._log = log_path.open("wb")
        self.process = subprocess.Popen(  # noqa: S603 - the gateway itself, as `make run` starts it
            [
                sys.executable, "-m", "gateway", "serve",
                "--port", str(self.port), "--workers", str(workers),
            ],
            cwd=ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            # Its own process group: worker processes can be killed with it.
            start_new_session=True,
        )

    @property
    def pid(self) -> int:
        return self.process.pid

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def error_lines(self) -> list[str]:
        """Log lines at ERROR or worse, in the JSON format or the plain one."""
        markers = ('"level":"ERROR"', '"level":"CRITICAL"', " ERROR ", " CRITICAL ")
        return [
            line[:2000]
            for line in self.log_text().splitlines()
            if any(marker in line for marker in markers)
        ]

    async def wait_live(self, within: float = 60.0) -> None:
        async def live() -> bool:
            if self.process.poll() is not None:
                raise AssertionError(
                    f"the gateway exited with {self.process.returncode}:\n{self.log_text()}"
                )
            try:
                async with aiohttp.ClientSession() as http, http.get(
                    f"{self.url}/health/live"
                ) as response:
                    return response.status == 200
            except aiohttp.ClientError:
                return False

        await wait_until(live, within=within, interval=0.1, what="the gateway to answer")

    async def wait_exit(self, within: float) -> int:
        await wait_until(
            lambda: self.process.poll() is not None, within=within, interval=0.05,
            what="the gateway to exit",
        )
        returncode: int = self.process.returncode
        return returncode

    def signal(self, signum: int) -> None:
        self.process.send_signal(signum)

    def kill_group(self) -> None:
        """SIGKILL the whole process group: the parent and every worker, as a crash would."""
        with suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)

    def survivors(self) -> list[int]:
        """Processes of the gateway's group still running (a worker, say), zombies aside."""
        found = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                state, _, group = (entry / "stat").read_text().rsplit(")", 1)[1].split()[:3]
            except (OSError, ValueError):
                continue
            if int(group) == self.process.pid and state != "Z":
                found.append(int(entry.name))
        return found

    def rss_bytes(self) -> int:
        """Resident memory of the serving process (one worker), from /proc."""
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        raise AssertionError("no VmRSS in /proc status")

    def close(self) -> None:
        if self.process.poll() is None or self.survivors():
            self.kill_group()
        self.process.wait(timeout=30)
        self._log.close()


@asynccontextmanager
async def running_gateway(
    database_url: str,
    directory: Path,
    *,
    workers: int = 1,
    environment: Mapping[str, str] | None = None,
    name: str = "gateway",
) -> AsyncIterator[GatewayProcess]:
    gateway = GatewayProcess(
        database_url, directory / f"{name}.log", workers=workers, environment=environment
    )
    try:
        await gateway.wait_live()
        yield gateway
    finally:
        gateway.close()


def client_session(limit: int = 0, timeout: float = 30.0) -> aiohttp.ClientSession:
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=limit),
        timeout=aiohttp.ClientTimeout(total=timeout),
    )


# ---------------------------------------------------------------- the clients


class Kind(enum.Enum):
    REGISTER = "Layer POST /push_tokens"
    UNREGISTER = "Layer DELETE /push_tokens/:device_id"
    BIND = "Navixy bind"
    UNBIND = "Navixy delete"
    LOGOUT = "Navixy logout"


@dataclass(frozen=True, slots=True)
class Command:
    kind: Kind
    session: int
    device: str | None = None
    token: str | None = None


class Outcome(enum.Enum):
    ACKNOWLEDGED = "acknowledged (2xx)"
    SESSION_REFUSED = "session refused (nothing written)"
    UNAVAILABLE = "503"
    FAILED = "another error status"
    NOT_DELIVERED = "connection refused (never sent)"
    NO_ANSWER = "connection lost or timed out"


# A command with one of these outcomes may or may not have been applied.
AMBIGUOUS = frozenset({Outcome.UNAVAILABLE, Outcome.FAILED, Outcome.NO_ANSWER})


@dataclass(frozen=True, slots=True)
class Exchange:
    command: Command
    sent_at: float
    answered_at: float
    outcome: Outcome
    status: int | None
    detail: str = ""


@dataclass
class Group:
    """What one client task owns alone: a user, its sessions, its device ids and its tokens.

    Nobody else touches them, so the order of its commands is the order they were
    sent, and a token moves only between this group's own keys.
    """

    index: int
    user: str
    sessions: list[str]
    session_ids: list[int]
    devices: list[str]
    tokens: list[str]


async def make_groups(
    dsn: str, count: int, *, evicting: int = 0, sessions: int = 3, run: str = ""
) -> list[Group]:
    """``count`` groups; the first ``evicting`` have more devices than a user may keep."""
    run = run or os.urandom(3).hex()
    connection = await asyncpg.connect(dsn)
    groups = []
    try:
        for index in range(count):
            user = f"stress-{run}-{index:03d}"
            tokens = [os.urandom(16).hex() for _ in range(sessions)]
            ids = []
            for token in tokens:
                ids.append(
                    await connection.fetchval(
                        "INSERT INTO sessions (token_sha256, user_id, expires_at)"
                        " VALUES ($1, $2, now() + interval '1 day') RETURNING id",
                        SessionRef.from_token(token).token_sha256,
                        user,
                    )
                )
            many = index < evicting
            groups.append(
                Group(
                    index=index,
                    user=user,
                    sessions=tokens,
                    session_ids=ids,
                    devices=[f"dev-{index}-{n}" for n in range(MAX_PER_USER + 5 if many else 3)],
                    tokens=[
                        f"fcm-{run}-{index:03d}-{n:02d}" for n in range(40 if many else 4)
                    ],
                )
            )
    finally:
        await connection.close()
    return groups


def _classify(command: Command, status: int, body: bytes) -> Outcome:
    if command.kind in (Kind.REGISTER, Kind.UNREGISTER):
        if status == 202:
            return Outcome.ACKNOWLEDGED
        if status == 401:
            return Outcome.SESSION_REFUSED
    else:
        if status == 200 and body == b'{"success":true}':
            return Outcome.ACKNOWLEDGED
        if status == 400 and b'"code":4,' in body:
            return Outcome.SESSION_REFUSED
    return Outcome.UNAVAILABLE if status == 503 else Outcome.FAILED


async def send(http: aiohttp.ClientSession, url: str, group: Group, command: Command) -> Exchange:
    """Send one command the way a real client would, and keep what came back."""
    token = group.sessions[command.session]
    sent_at = time.monotonic()
    try:
        match command.kind:
            case Kind.REGISTER:
                request = http.post(
                    f"{url}/push_tokens",
                    json={"token": command.token, "type": "gcm", "device_id": command.device},
                    headers=layer_headers(token),
                )
            case Kind.UNREGISTER:
                request = http.delete(
                    f"{url}/push_tokens/{command.device}", headers=layer_headers(token)
                )
            case Kind.BIND:
                request = http.post(
                    f"{url}{BIND}",
                    json={
                        "hash": token,
                        "application": "navixy_android_viewer",
                        "token": command.token,
                    },
                )
            case Kind.UNBIND:
                request = http.post(f"{url}{UNBIND}", json={"hash": token})
            case Kind.LOGOUT:
                request = http.post(f"{url}{LOGOUT}", json={"hash": token})
        async with request as response:
            body = await response.read()
            status = response.status
    except aiohttp.ClientConnectorError as exc:
        # aiohttp retries an idempotent method (DELETE) once on a new connection
        # when a kept-alive one fails (RFC 9112 9.3.1): the refused connection
        # may be the retry of an attempt that did reach the gateway.
        outcome = Outcome.NO_ANSWER if command.kind is Kind.UNREGISTER else Outcome.NOT_DELIVERED
        return Exchange(command, sent_at, time.monotonic(), outcome, None, str(exc))
    except (aiohttp.ClientError, TimeoutError) as exc:
        detail = f"{type(exc).__name__}: {exc}"
        return Exchange(command, sent_at, time.monotonic(), Outcome.NO_ANSWER, None, detail)
    outcome = _classify(command, status, body)
    detail = "" if outcome is Outcome.ACKNOWLEDGED else body[:300].decode(errors="replace")
    return Exchange(command, sent_at, time.monotonic(), outcome, status, detail)


@dataclass
class Workload:
    """One client task per group, each sending its commands one at a time until told to stop.

    After an error status a client polls /health/ready before going on, as a
    client honouring Retry-After would. After an exchange with no answer it
    stops: the lost request might still be applied after a later one, which
    would make the order of its group's commands unknowable.
    """

    http: aiohttp.ClientSession
    url: str
    groups: list[Group]
    seed: int = 20240601
    logs: dict[int, list[Exchange]] = field(init=False)
    acknowledged: list[Exchange] = field(init=False, default_factory=list)
    _stop: asyncio.Event = field(init=False, default_factory=asyncio.Event)

    def __post_init__(self) -> None:
        self.logs = {group.index: [] for group in self.groups}

    async def run(self) -> None:
        await asyncio.gather(*(self._client(group) for group in self.groups))

    def stop(self) -> None:
        self._stop.set()

    @property
    def exchanges(self) -> list[Exchange]:
        return [exchange for log in self.logs.values() for exchange in log]

    def first_ack_sent_after(self, moment: float) -> Exchange | None:
        later = [e for e in self.acknowledged if e.sent_at >= moment]
        return min(later, key=lambda e: e.answered_at) if later else None

    async def wait_for_more_acks(self, count: int, runner: asyncio.Task[None]) -> None:
        target = len(self.acknowledged) + count
        await wait_until(
            lambda: len(self.acknowledged) >= target or runner.done(),
            within=120, what=f"{target} acknowledged writes",
        )
        if runner.done():
            raise AssertionError("every client stopped early: " + repr(tally(self.exchanges)))

    async def wait_for_ack_sent_after(self, moment: float, within: float) -> Exchange:
        await wait_until(
            lambda: self.first_ack_sent_after(moment) is not None,
            within=within, what="a write sent after the fault to be acknowledged",
        )
        first = self.first_ack_sent_after(moment)
        assert first is not None
        return first

    def _next_command(self, rng: random.Random, group: Group, current: int) -> Command:
        roll = rng.random()
        if roll < 0.02 and current < len(group.sessions) - 1:
            return Command(Kind.LOGOUT, current)
        if roll < 0.45:
            return Command(
                Kind.REGISTER, current, rng.choice(group.devices), rng.choice(group.tokens)
            )
        if roll < 0.58:
            return Command(Kind.UNREGISTER, current, rng.choice(group.devices))
        if roll < 0.88:
            return Command(Kind.BIND, current, token=rng.choice(group.tokens))
        return Command(Kind.UNBIND, current)

    async def _client(self, group: Group) -> None:
        rng = random.Random(self.seed * 1000 + group.index)
        log = self.logs[group.index]
        current = 0
        while not self._stop.is_set():
            command = self._next_command(rng, group, current)
            exchange = await send(self.http, self.url, group, command)
            log.append(exchange)
            if exchange.outcome in (Outcome.NO_ANSWER, Outcome.NOT_DELIVERED):
                return
            if exchange.outcome is Outcome.ACKNOWLEDGED:
                self.acknowledged.append(exchange)
            elif exchange.outcome is not Outcome.SESSION_REFUSED and not await self._ready():
                return
            # A session logged out (or refused: its logout may have committed
            # unanswered) is done with; the next one takes over.
            if command.kind is Kind.LOGOUT or exchange.outcome is Outcome.SESSION_REFUSED:
                if current == len(group.sessions) - 1:
                    return
                current += 1

    async def _ready(self) -> bool:
        while not self._stop.is_set():
            try:
                async with self.http.get(f"{self.url}/health/ready") as response:
                    if response.status == 200:
                        return True
            except (aiohttp.ClientError, TimeoutError):
                return False
            await asyncio.sleep(0.05)
        return False


# ------------------------------------------------------------------- the model

Key = str  # "device <id>" or "binding <session index>"
Registration = tuple[Key, str, int, int]  # key, token, session index, registration order


@dataclass(frozen=True, slots=True)
class GroupState:
    live: frozenset[int]
    registrations: frozenset[Registration]

    def visible(self) -> tuple[frozenset[int], frozenset[tuple[Key, str, int]]]:
        """What the database shows of it: the order of registration is not compared."""
        return self.live, frozenset((key, token, s) for key, token, s, _ in self.registrations)


def apply(state: GroupState, command: Command, order: int) -> tuple[bool, GroupState]:
    """The README's semantics, one command at a time: (accepted, state after)."""
    if command.session not in state.live:
        return False, state
    live = state.live
    held = {key: (token, s, seq) for key, token, s, seq in state.registrations}
    match command.kind:
        case Kind.REGISTER | Kind.BIND:
            assert command.token is not None
            key = (
                f"device {command.device}"
                if command.kind is Kind.REGISTER
                else f"binding {command.session}"
            )
            # One owner per token: its other holder loses it.
            for other in [k for k, (t, _, _) in held.items() if t == command.token and k != key]:
                del held[other]
            held[key] = (command.token, command.session, order)
            while len(held) > MAX_PER_USER:
                del held[min(held, key=lambda k: held[k][2])]
        case Kind.UNREGISTER:
            held.pop(f"device {command.device}", None)
        case Kind.UNBIND:
            held.pop(f"binding {command.session}", None)
        case Kind.LOGOUT:
            live = live - {command.session}
            held = {k: v for k, v in held.items() if v[1] != command.session}
    return True, GroupState(live, frozenset((k, *v) for k, v in held.items()))


# A group whose every exchange failed ambiguously could double its states each
# time; clients back off after a failure, so a handful is what to expect.
MAX_STATES = 20_000


def reachable_states(group: Group, log: Iterable[Exchange]) -> tuple[set[GroupState], str]:
    """Every state the group can be in given what the clients were told, or why there is none."""
    states = {GroupState(frozenset(range(len(group.sessions))), frozenset())}
    for order, exchange in enumerate(log):
        following: set[GroupState] = set()
        for state in states:
            accepted, after = apply(state, exchange.command, order)
            if exchange.outcome is Outcome.ACKNOWLEDGED:
                if accepted:
                    following.add(after)
            elif exchange.outcome is Outcome.SESSION_REFUSED:
                if not accepted:
                    following.add(state)
            elif exchange.outcome is Outcome.NOT_DELIVERED:
                following.add(state)
            else:
                following.update((state, after))
        if not following:
            return set(), (
                f"exchange #{order} ({exchange.command}, answered {exchange.outcome.value}"
                f" {exchange.status} {exchange.detail!r}) contradicts every earlier answer"
            )
        if len(following) > MAX_STATES:
            raise AssertionError(f"group {group.index}: too many possible states to check")
        states = following
    return states, ""


@dataclass
class Verdict:
    groups: int = 0
    acknowledged: int = 0
    ambiguous: int = 0
    lost: int = 0
    # Exchanges with no answer whose write the stored state proves was applied:
    # handled by the gateway, its answer cut off.
    applied_unanswered: list[Exchange] = field(default_factory=list)
    contradictions: list[str] = field(default_factory=list)
    mismatches: list[str] = field(default_factory=list)


async def database_view(
    connection: asyncpg.Connection, groups: Sequence[Group]
) -> dict[int, tuple[frozenset[int], frozenset[tuple[Key, str, int]]]]:
    """Each group's live sessions and registrations as the database holds them now."""
    session_of = {sid: (g.index, n) for g in groups for n, sid in enumerate(g.session_ids)}
    view: dict[int, tuple[set[int], set[tuple[Key, str, int]]]] = {
        g.index: (set(), set()) for g in groups
    }
    for row in await connection.fetch("SELECT id FROM sessions WHERE expires_at > now()"):
        if row["id"] in session_of:
            index, number = session_of[row["id"]]
            view[index][0].add(number)
    rows = await connection.fetch("SELECT session_id, device_id, token FROM registrations")
    for row in rows:
        if row["session_id"] not in session_of:
            continue
        index, number = session_of[row["session_id"]]
        key = f"device {row['device_id']}" if row["device_id"] else f"binding {number}"
        view[index][1].add((key, row["token"], number))
    return {index: (frozenset(live), frozenset(regs)) for index, (live, regs) in view.items()}


async def check_against_model(
    connection: asyncpg.Connection, groups: Sequence[Group], logs: Mapping[int, list[Exchange]]
) -> Verdict:
    return compare(groups, logs, await database_view(connection, groups))


def compare(
    groups: Sequence[Group],
    logs: Mapping[int, list[Exchange]],
    view: Mapping[int, tuple[frozenset[int], frozenset[tuple[Key, str, int]]]],
) -> Verdict:
    """Compare each group's stored state with every state its clients' answers allow.

    A write acknowledged and not followed by an ambiguous command on the same
    key must be there exactly; one followed by an ambiguous command may have
    been overwritten by it. A key whose stored value no reachable state has is
    a lost (or phantom) write.
    """
    verdict = Verdict(groups=len(groups))
    for group in groups:
        log = logs[group.index]
        verdict.acknowledged += sum(
            e.outcome is Outcome.ACKNOWLEDGED and e.command.kind is not Kind.LOGOUT for e in log
        )
        verdict.ambiguous += sum(e.outcome in AMBIGUOUS for e in log)
        states, contradiction = reachable_states(group, log)
        if contradiction:
            verdict.contradictions.append(f"group {group.index}: {contradiction}")
            continue
        visible = {state.visible() for state in states}
        stored = view[group.index]
        if stored in visible:
            if log and log[-1].outcome is Outcome.NO_ANSWER:
                # A client stops at its first unanswered exchange: was it applied?
                before, _ = reachable_states(group, log[:-1])
                if stored not in {state.visible() for state in before}:
                    verdict.applied_unanswered.append(log[-1])
            continue
        live, stored_regs = stored
        stored_by_key = {key: (token, s) for key, token, s in stored_regs}
        keys = set(stored_by_key) | {k for _, regs in visible for k, _, _ in regs}
        lost = []
        for key in sorted(keys):
            allowed = {
                next(((t, s) for k, t, s in regs if k == key), None) for _, regs in visible
            }
            if stored_by_key.get(key) not in allowed:
                lost.append(f"{key}: stored {stored_by_key.get(key)}, allowed {allowed}")
        verdict.lost += len(lost)
        verdict.mismatches.append(
            f"group {group.index} ({group.user}): live sessions {sorted(live)},"
            f" allowed {sorted(sorted(v[0]) for v in visible)}; " + "; ".join(lost)
        )
    return verdict


INVARIANTS = {
    "a token held by two registrations": """
        SELECT provider, token, count(*) FROM registrations
        GROUP BY provider, token HAVING count(*) > 1""",
    "a user with more than 25 registrations": """
        SELECT user_id, count(*) FROM registrations GROUP BY user_id HAVING count(*) > 25""",
    "a registration whose session is gone, expired, or another user's": """
        SELECT r.id, r.user_id, r.session_id FROM registrations AS r
        LEFT JOIN sessions AS s
               ON s.id = r.session_id AND s.user_id = r.user_id AND s.expires_at > now()
        WHERE s.id IS NULL""",
    "a Layer device registered twice": """
        SELECT user_id, device_id FROM registrations WHERE device_id IS NOT NULL
        GROUP BY user_id, device_id HAVING count(*) > 1""",
    "a Navixy session bound twice": """
        SELECT session_id FROM registrations WHERE device_id IS NULL
        GROUP BY session_id HAVING count(*) > 1""",
}


async def invariant_violations(connection: asyncpg.Connection) -> dict[str, list[Any]]:
    found = {}
    for name, query in INVARIANTS.items():
        rows = await connection.fetch(query)
        if rows:
            found[name] = [tuple(row) for row in rows[:5]]
    return found


def tally(exchanges: Iterable[Exchange]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for exchange in exchanges:
        name = exchange.outcome.value
        if exchange.status is not None and exchange.outcome is not Outcome.ACKNOWLEDGED:
            name = f"{name} [{exchange.status}]"
        counts[name] = counts.get(name, 0) + 1
    return dict(sorted(counts.items()))


# ------------------------------------------------------------------ the figures


class Figures:
    """Numbers the tests measured, printed in pytest's terminal summary for the README."""

    def __init__(self, title: str = "fault-tolerance figures") -> None:
        self.title = title
        self.lines: list[str] = []

    def attach(self, config: pytest.Config, name: str) -> None:
        """Have pytest print these figures in its summary (once, whichever test asks first)."""
        if not config.pluginmanager.has_plugin(name):
            config.pluginmanager.register(self, name)

    def add(self, test: str, **values: object) -> None:
        text = "; ".join(f"{name.replace('_', ' ')}: {value}" for name, value in values.items())
        self.lines.append(f"{test}: {text}")
        print(f"{test}: {text}")

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        if self.lines:
            terminalreporter.section(self.title)
            for line in self.lines:
                terminalreporter.write_line(line)
