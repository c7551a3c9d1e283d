"""Fault tolerance, with real processes: the database stopped, frozen and crashed, the gateway
terminated and killed under load, a connection dying after its commit, a flood past the queue.

The tests share a PostgreSQL of this module's own, which they stop, freeze and
crash; the gateway runs as `python -m gateway serve`, as in production. Waits
are polls with deadlines; durations are measured to be reported, and asserted
only against generous bounds. `make stress` runs these tests (over a minute,
so not in `make test`) and prints the figures at the end.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import orjson
import pytest

from gateway.commands import Provider, RegisterToken, SessionRef
from gateway.store import Store, apply_schema, create_pool
from tests.conftest import layer_headers
from tests.faults_support import (
    BIND,
    Command,
    Exchange,
    Figures,
    Group,
    Kind,
    Outcome,
    PrivatePostgres,
    Verdict,
    Workload,
    backends_waiting_on_locks,
    check_against_model,
    client_session,
    compare,
    describe_durations,
    invariant_violations,
    make_groups,
    registrations_locked,
    running_gateway,
    tally,
    wait_until,
)

pytestmark = pytest.mark.stress

FIGURES = Figures()

# Concurrent clients in the load tests, and the acknowledged writes to wait for
# before each fault: enough that every client is mid-stream when it strikes.
CLIENTS = 32
ACKS_BEFORE_FAULT = 1500

# gateway.cli gives aiohttp this long to finish in-flight requests on SIGTERM.
SHUTDOWN_TIMEOUT = 30


@pytest.fixture(scope="module")
def figures(request: pytest.FixtureRequest) -> Figures:
    FIGURES.attach(request.config, "fault-figures")
    return FIGURES


@pytest.fixture(scope="module")
def private_postgres() -> Iterator[PrivatePostgres]:
    server = PrivatePostgres()
    try:
        asyncio.run(apply_schema(server.dsn))
        yield server
    finally:
        server.destroy()


@pytest.fixture
async def postgres(private_postgres: PrivatePostgres) -> PrivatePostgres:
    """The private server, running, its tables empty."""
    if not private_postgres.is_running():
        await asyncio.to_thread(private_postgres.start)
    connection = await asyncpg.connect(private_postgres.dsn)
    try:
        await connection.execute("TRUNCATE registrations, sessions")
    finally:
        await connection.close()
    return private_postgres


async def new_session(dsn: str, user: str) -> str:
    token = os.urandom(16).hex()
    connection = await asyncpg.connect(dsn)
    try:
        await connection.execute(
            "INSERT INTO sessions (token_sha256, user_id, expires_at)"
            " VALUES ($1, $2, now() + interval '1 day')",
            SessionRef.from_token(token).token_sha256,
            user,
        )
    finally:
        await connection.close()
    return token


@dataclass
class Answer:
    status: int | None
    body: Any
    seconds: float
    retry_after: str | None = None
    error: str = ""


async def _timed(request: Any) -> Answer:
    started = time.monotonic()
    try:
        async with request as response:
            raw = await response.read()
            body = orjson.loads(raw) if raw else None
            return Answer(
                response.status, body, time.monotonic() - started,
                response.headers.get("Retry-After"),
            )
    except (aiohttp.ClientError, TimeoutError) as exc:
        return Answer(None, None, time.monotonic() - started, error=f"{type(exc).__name__}: {exc}")


def fcm(label: str, number: int) -> str:
    return f"fcm-{label}-{number:05d}"


async def layer_register(
    http: aiohttp.ClientSession, url: str, session: str, device: str, token: str
) -> Answer:
    return await _timed(
        http.post(
            f"{url}/push_tokens",
            json={"token": token, "type": "gcm", "device_id": device},
            headers=layer_headers(session),
        )
    )


async def navixy_bind(http: aiohttp.ClientSession, url: str, session: str, token: str) -> Answer:
    return await _timed(
        http.post(
            f"{url}{BIND}",
            json={"hash": session, "application": "navixy_android_viewer", "token": token},
        )
    )


async def health(http: aiohttp.ClientSession, url: str, which: str) -> Answer:
    return await _timed(http.get(f"{url}/health/{which}"))


def is_layer_503(answer: Answer) -> bool:
    return (
        answer.status == 503
        and answer.body["id"] == "service_unavailable"
        and answer.retry_after is not None
    )


def is_navixy_14(answer: Answer) -> bool:
    return (
        answer.status == 503
        and answer.body["success"] is False
        and answer.body["status"]["code"] == 14
    )


async def _judge(
    dsn: str, groups: Sequence[Group], logs: Mapping[int, list[Exchange]]
) -> tuple[Verdict, dict[str, list[Any]], int]:
    """The model's verdict on the database, the invariants it breaks, its registrations."""
    connection = await asyncpg.connect(dsn)
    try:
        verdict = await check_against_model(connection, groups, logs)
        broken = await invariant_violations(connection)
        stored: int = await connection.fetchval("SELECT count(*) FROM registrations")
    finally:
        await connection.close()
    return verdict, broken, stored


# ------------------------------------------------------------ 1. database outage


@pytest.mark.parametrize("mode", ["fast", "immediate"])
async def test_database_outage_answers_503_promptly_and_recovers_without_restart(
    postgres: PrivatePostgres, tmp_path, figures: Figures, mode: str
):
    dsn = postgres.dsn
    session = await new_session(dsn, "outage")
    async with running_gateway(dsn, tmp_path) as gateway, client_session() as http:
        url = gateway.url
        assert (await layer_register(http, url, session, "dev-before", fcm("a", 0))).status == 202
        assert (await navixy_bind(http, url, session, fcm("b", 0))).status == 200

        await asyncio.to_thread(postgres.stop, mode)

        layer, navixy = [], []
        for n in range(1, 11):
            answer = await layer_register(http, url, session, f"dev-down-{n}", fcm("a", n))
            assert is_layer_503(answer), answer
            layer.append(answer.seconds)
            answer = await navixy_bind(http, url, session, fcm("b", n))
            assert is_navixy_14(answer), answer
            navixy.append(answer.seconds)
        # A burst at once, as a fleet of phones retrying together sends.
        burst = await asyncio.gather(
            *(
                layer_register(http, url, session, f"dev-down-{n}", fcm("a", n))
                for n in range(11, 61)
            )
        )
        assert all(is_layer_503(answer) for answer in burst), burst
        ready = await health(http, url, "ready")
        live = await health(http, url, "live")
        assert ready.status == 503, ready
        assert live.status == 200, live
        slowest = max([*layer, *navixy, *(a.seconds for a in burst), ready.seconds])
        assert slowest < 5, f"an answer during the outage took {slowest:.1f} s"

        await asyncio.to_thread(postgres.start)
        back = time.monotonic()
        attempts = 0

        async def written() -> bool:
            nonlocal attempts
            attempts += 1
            answer = await layer_register(http, url, session, "dev-after", fcm("a", 99))
            assert answer.status in (202, 503), answer
            return answer.status == 202

        await wait_until(written, within=10, what="the first write after Postgres came back")
        recovered = time.monotonic() - back
        assert (await navixy_bind(http, url, session, fcm("b", 99))).status == 200
        assert (await health(http, url, "ready")).status == 200
        errors = gateway.error_lines()

    connection = await asyncpg.connect(dsn)
    try:
        rows = await connection.fetch("SELECT device_id FROM registrations")
    finally:
        await connection.close()
    devices = {row["device_id"] for row in rows}
    # Postgres was down throughout, so no refused write can have landed.
    assert devices == {"dev-before", "dev-after", None}
    assert not errors, errors
    figures.add(
        f"database outage (pg_ctl stop -m {mode})",
        layer_503=describe_durations(layer),
        navixy_code_14=describe_durations(navixy),
        burst_of_50_layer_503=describe_durations([a.seconds for a in burst]),
        health_ready_503=f"{ready.seconds * 1000:.0f} ms",
        time_to_recover=f"{recovered:.2f} s after Postgres was back ({attempts} polls)",
    )


async def test_a_hung_database_gets_503s_within_the_timeouts_and_recovers(
    postgres: PrivatePostgres, tmp_path, figures: Figures
):
    """Postgres frozen (SIGSTOP), as behind a network partition: nothing is refused, nothing
    answers, so only the gateway's own timeouts end the wait."""
    dsn = postgres.dsn
    session = await new_session(dsn, "hung")
    async with running_gateway(dsn, tmp_path) as gateway, client_session(timeout=60) as http:
        url = gateway.url
        assert (await layer_register(http, url, session, "dev-before", fcm("h", 0))).status == 202
        frozen = postgres.freeze()
        try:
            waits = [
                *(layer_register(http, url, session, f"dev-hung-{n}", fcm("h", n)) for n in (1, 2)),
                navixy_bind(http, url, session, fcm("hb", 1)),
                health(http, url, "ready"),
            ]
            answers = await asyncio.wait_for(asyncio.gather(*waits), 60)
            live = await health(http, url, "live")
        finally:
            postgres.thaw(frozen)
        back = time.monotonic()

        async def written() -> bool:
            answer = await layer_register(http, url, session, "dev-after", fcm("h", 99))
            return answer.status == 202

        await wait_until(written, within=10, what="the first write after Postgres thawed")
        recovered = time.monotonic() - back
        errors = gateway.error_lines()

    *writes, bind, ready = answers
    assert all(map(is_layer_503, writes)), writes
    assert is_navixy_14(bind), bind
    assert ready.status == 503, ready
    assert live.status == 200 and live.seconds < 2, live
    slowest = max(answer.seconds for answer in answers)
    assert slowest < 30, f"an answer took {slowest:.1f} s while Postgres hung"
    assert not errors, errors
    figures.add(
        "database hung (SIGSTOP on every postgres process)",
        layer_503=describe_durations([a.seconds for a in writes]),
        navixy_code_14=f"{bind.seconds:.1f} s",
        health_ready_503=f"{ready.seconds:.1f} s",
        health_live=f"{live.status} in {live.seconds * 1000:.0f} ms",
        time_to_recover=f"{recovered:.2f} s after SIGCONT",
    )


# ------------------------------------------------- 2. crashes under concurrent load


async def test_no_acknowledged_write_is_lost_when_the_database_crashes_under_load(
    postgres: PrivatePostgres, tmp_path, figures: Figures
):
    dsn = postgres.dsn
    groups = await make_groups(dsn, CLIENTS, evicting=4)
    windows: list[tuple[float, float, float]] = []
    async with running_gateway(dsn, tmp_path, workers=2) as gateway, client_session() as http:
        workload = Workload(http, gateway.url, groups)
        runner = asyncio.create_task(workload.run())
        started = time.monotonic()
        try:
            for _ in range(2):
                await workload.wait_for_more_acks(ACKS_BEFORE_FAULT, runner)
                began = time.monotonic()
                await asyncio.to_thread(postgres.restart, "immediate")
                ready = time.monotonic()
                first = await workload.wait_for_ack_sent_after(ready, within=10)
                windows.append((began, ready, first.answered_at))
            await workload.wait_for_more_acks(ACKS_BEFORE_FAULT, runner)
        finally:
            workload.stop()
            await asyncio.wait_for(runner, 60)
        duration = time.monotonic() - started
        errors = gateway.error_lines()

    verdict, broken, _ = await _judge(dsn, groups, workload.logs)

    exchanges = workload.exchanges
    during = [
        e for began, _, recovered in windows for e in exchanges if began <= e.sent_at <= recovered
    ]
    unexpected = [
        e for e in exchanges
        if e.outcome not in (Outcome.ACKNOWLEDGED, Outcome.UNAVAILABLE, Outcome.SESSION_REFUSED)
    ]
    figures.add(
        "database crash-restarts under load (2 x pg_ctl restart -m immediate, 2 workers,"
        f" {CLIENTS} clients)",
        requests_sent=len(exchanges),
        outcomes=tally(exchanges),
        requests_during_the_outages=len(during),
        failed_during_the_outages=sum(e.outcome is not Outcome.ACKNOWLEDGED for e in during),
        five_xx_seen=sum((e.status or 0) >= 500 for e in exchanges),
        acknowledged_writes_checked=verdict.acknowledged,
        ambiguous=verdict.ambiguous,
        writes_lost=verdict.lost,
        time_to_recover=", ".join(
            f"{recovered - ready:.2f} s ({recovered - began:.2f} s from the crash)"
            for began, ready, recovered in windows
        ),
        load_duration=f"{duration:.1f} s",
    )
    assert not verdict.contradictions, verdict.contradictions[:5]
    assert verdict.lost == 0 and not verdict.mismatches, verdict.mismatches[:5]
    assert not broken, broken
    assert not unexpected, unexpected[:5]
    assert not errors, errors


# ------------------------------------------------------------ 3. the gateway stopped


async def test_sigterm_answers_every_in_flight_write_and_writes_the_queue(
    postgres: PrivatePostgres, tmp_path, figures: Figures
):
    dsn = postgres.dsn
    pending = 20
    overflow = 5
    sessions = [await new_session(dsn, f"term-{n}") for n in range(pending + overflow + 1)]
    environment = {"GATEWAY_MAX_PENDING_WRITES": str(pending)}
    async with running_gateway(dsn, tmp_path, environment=environment) as gateway, \
            client_session() as http:

        def register(n: int) -> asyncio.Task[Answer]:
            return asyncio.create_task(
                layer_register(http, gateway.url, sessions[n], f"dev-{n}", fcm("term", n))
            )

        async with registrations_locked(dsn) as lock:
            first = register(0)
            await wait_until(
                lambda: backends_waiting_on_locks(lock), within=10,
                what="the first write batch to block on the lock",
            )
            queued = [register(n) for n in range(1, pending + overflow + 1)]
            # The queue holds `pending` commands and refuses the rest at once:
            # once `overflow` refusals are in, the others are all inside the
            # gateway, waiting on the write in front of them.
            await wait_until(
                lambda: sum(task.done() for task in queued) >= overflow, within=10,
                what=f"{overflow} writes to be refused",
            )
            refused = [task.result() for task in queued if task.done()]
            assert len(refused) == overflow and all(map(is_layer_503, refused)), refused
            in_flight = [first, *(task for task in queued if not task.done())]

            signalled = time.monotonic()
            gateway.signal(signal.SIGTERM)

            async def stopped_listening() -> bool:
                return not await _accepts(gateway.port)

            await wait_until(stopped_listening, within=10, what="the gateway to stop listening")
            assert not any(task.done() for task in in_flight)
        # The lock is gone: the blocked batch commits, then the queue behind it.
        answers = await asyncio.wait_for(asyncio.gather(*in_flight), 30)
        code = await gateway.wait_exit(within=45)
        exited = time.monotonic() - signalled
        errors = gateway.error_lines()

    assert [a.status for a in answers] == [202] * (pending + 1), answers
    assert code == 0, gateway.log_text()
    assert exited < SHUTDOWN_TIMEOUT
    connection = await asyncpg.connect(dsn)
    try:
        stored = await connection.fetchval("SELECT count(*) FROM registrations")
    finally:
        await connection.close()
    assert stored == pending + 1
    assert not errors, errors
    figures.add(
        "SIGTERM with writes in flight",
        in_flight_answered_2xx=f"{len(answers)} of {pending + 1}",
        written=stored,
        exit_code=code,
        exit_after_sigterm=f"{exited:.2f} s (shutdown timeout 30 s)",
    )


async def _accepts(port: int) -> bool:
    try:
        _, writer = await asyncio.open_connection("127.0.0.1", port)
    except OSError:
        return False
    writer.close()
    await writer.wait_closed()
    return True


@dataclass
class Struck:
    """A load run ended by a signal: the clients' answers, and how the gateway went."""

    workload: Workload
    groups: list[Group]
    exit_code: int
    struck_at: float
    exit_seconds: float
    errors: list[str]
    survivors: list[int]


async def _load_until_signal(
    postgres: PrivatePostgres, tmp_path: Path, fault: signal.Signals
) -> Struck:
    """Run the workload on a 2-worker gateway, send it ``fault`` mid-stream, and let it end."""
    dsn = postgres.dsn
    groups = await make_groups(dsn, CLIENTS, evicting=4)
    async with running_gateway(dsn, tmp_path, workers=2) as gateway, client_session() as http:
        workload = Workload(http, gateway.url, groups)
        runner = asyncio.create_task(workload.run())
        try:
            await workload.wait_for_more_acks(ACKS_BEFORE_FAULT, runner)
            struck_at = time.monotonic()
            if fault is signal.SIGKILL:
                gateway.kill_group()
            else:
                gateway.signal(fault)
            code = await gateway.wait_exit(within=45)
            exit_seconds = time.monotonic() - struck_at
            survivors = gateway.survivors()
            # Each client ends on its own once the port refuses it.
            await wait_until(runner.done, within=30, what="every client to end")
        finally:
            workload.stop()
            await asyncio.wait_for(runner, 30)
        errors = gateway.error_lines()
    return Struck(workload, groups, code, struck_at, exit_seconds, errors, survivors)


async def test_sigterm_under_load_exits_0_with_every_acknowledged_write_stored(
    postgres: PrivatePostgres, tmp_path, figures: Figures
):
    run = await _load_until_signal(postgres, tmp_path, signal.SIGTERM)
    verdict, broken, _ = await _judge(postgres.dsn, run.groups, run.workload.logs)
    exchanges = run.workload.exchanges
    # A request written as the gateway closes its idle kept-alive connections
    # is never read, so gets no answer: a client's to retry. One the gateway
    # did handle must have been answered.
    cut = [e for e in exchanges if e.outcome is Outcome.NO_ANSWER and e.sent_at < run.struck_at]
    figures.add(
        f"SIGTERM under load (2 workers, {CLIENTS} clients)",
        requests_sent=len(exchanges),
        answers_after_sigterm=tally(e for e in exchanges if e.answered_at >= run.struck_at),
        sent_before_sigterm_and_unanswered=len(cut),
        unanswered_but_applied=len(verdict.applied_unanswered),
        acknowledged_writes_checked=verdict.acknowledged,
        writes_lost=verdict.lost,
        exit_code=run.exit_code,
        exit_after_sigterm=f"{run.exit_seconds:.2f} s",
    )
    assert run.exit_code == 0
    assert run.exit_seconds < SHUTDOWN_TIMEOUT
    assert not verdict.applied_unanswered, verdict.applied_unanswered
    assert not run.survivors, "a worker outlived the gateway's parent process"
    assert not verdict.contradictions, verdict.contradictions[:5]
    assert verdict.lost == 0 and not verdict.mismatches, verdict.mismatches[:5]
    assert not broken, broken
    assert not [e for e in exchanges if e.outcome is Outcome.FAILED]
    assert not run.errors, run.errors


async def test_sigkill_under_load_leaves_no_half_applied_command(
    postgres: PrivatePostgres, tmp_path, figures: Figures
):
    run = await _load_until_signal(postgres, tmp_path, signal.SIGKILL)
    verdict, broken, stored = await _judge(postgres.dsn, run.groups, run.workload.logs)
    exchanges = run.workload.exchanges
    figures.add(
        f"SIGKILL under load (2 workers, {CLIENTS} clients)",
        requests_sent=len(exchanges),
        acknowledged_writes_checked=verdict.acknowledged,
        cut_off_by_the_kill=sum(e.outcome is Outcome.NO_ANSWER for e in exchanges),
        of_which_applied=len(verdict.applied_unanswered),
        writes_lost=verdict.lost,
        registrations_stored=stored,
        invariants_broken=len(broken),
    )
    assert run.exit_code == -signal.SIGKILL
    assert not verdict.contradictions, verdict.contradictions[:5]
    assert verdict.lost == 0 and not verdict.mismatches, verdict.mismatches[:5]
    assert not broken, broken
    # The database it left behind serves a new gateway at once.
    async with running_gateway(postgres.dsn, tmp_path, name="after-kill") as gateway, \
            client_session() as http:
        group = run.groups[-1]
        answer = await layer_register(
            http, gateway.url, group.sessions[-1], "dev-after-kill", fcm("kill", 1)
        )
        assert answer.status == 202, answer


# --------------------------------------------- 4. a connection dying after its commit


def _register(session: str, device: str, token: str) -> RegisterToken:
    return RegisterToken(
        session=SessionRef.from_token(session), device_id=device, provider=Provider.FCM, token=token
    )


async def test_a_committed_write_is_a_success_even_when_releasing_its_connection_fails(
    postgres: PrivatePostgres, monkeypatch: pytest.MonkeyPatch
):
    dsn = postgres.dsn
    session = await new_session(dsn, "release")
    real_release = asyncpg.pool.Pool.release
    failed = []

    async def release_then_fail(self: asyncpg.Pool, connection: Any, **kwargs: Any) -> None:
        await real_release(self, connection, **kwargs)
        failed.append(1)
        raise asyncpg.ConnectionDoesNotExistError(
            "connection was closed in the middle of operation"
        )

    pool = await create_pool(dsn, min_size=1, max_size=1)
    try:
        store = Store(pool)
        monkeypatch.setattr(asyncpg.pool.Pool, "release", release_then_fail)
        outcomes = await store.apply_writes([_register(session, "dev-1", fcm("rel", 1))])
        monkeypatch.undo()
        assert failed, "the release path was not taken"
        assert outcomes == [None]
        assert await store.apply_writes([_register(session, "dev-2", fcm("rel", 2))]) == [None]
    finally:
        await pool.close()
    connection = await asyncpg.connect(dsn)
    try:
        rows = await connection.fetch("SELECT device_id, token FROM registrations ORDER BY 1")
    finally:
        await connection.close()
    assert [tuple(r) for r in rows] == [("dev-1", fcm("rel", 1)), ("dev-2", fcm("rel", 2))]


async def test_a_committed_write_is_a_success_when_its_backend_dies_before_release(
    postgres: PrivatePostgres, monkeypatch: pytest.MonkeyPatch
):
    dsn = postgres.dsn
    session = await new_session(dsn, "terminated")
    real_release = asyncpg.pool.Pool.release
    admin = await asyncpg.connect(dsn)
    terminated: list[bool] = []

    async def terminate_then_release(self: asyncpg.Pool, connection: Any, **kwargs: Any) -> None:
        if not terminated:
            pid = connection.get_server_pid()
            terminated.append(await admin.fetchval("SELECT pg_terminate_backend($1)", pid))
            await wait_until(
                connection.is_closed, within=5, what="the client to see its connection die"
            )
        await real_release(self, connection, **kwargs)

    pool = await create_pool(dsn, min_size=1, max_size=1)
    try:
        store = Store(pool)
        monkeypatch.setattr(asyncpg.pool.Pool, "release", terminate_then_release)
        outcomes = await store.apply_writes([_register(session, "dev-1", fcm("term", 1))])
        monkeypatch.undo()
        assert terminated == [True]
        assert outcomes == [None]
        # The pool replaced the dead connection.
        assert await store.apply_writes([_register(session, "dev-2", fcm("term", 2))]) == [None]
    finally:
        await pool.close()
        await admin.close()
    connection = await asyncpg.connect(dsn)
    try:
        count = await connection.fetchval("SELECT count(*) FROM registrations")
    finally:
        await connection.close()
    assert count == 2


# ------------------------------------------------------------------- 5. overload


async def test_a_flood_past_the_write_queue_gets_quick_503s_with_bounded_memory(
    postgres: PrivatePostgres, tmp_path, figures: Figures
):
    dsn = postgres.dsn
    pending = 50
    flood = 1000
    users = 40
    sessions = [await new_session(dsn, f"flood-{n}") for n in range(users)]
    environment = {"GATEWAY_MAX_PENDING_WRITES": str(pending)}
    async with running_gateway(dsn, tmp_path, environment=environment) as gateway, \
            client_session() as http:
        url = gateway.url

        async def register(n: int) -> Answer:
            return await layer_register(
                http, url, sessions[n % users], f"dev-{n}", fcm("flood", n)
            )

        # Every session once, so that the flood measures writes, not session lookups.
        for n in range(users):
            assert (await register(n)).status == 202
        baseline = gateway.rss_bytes()
        peak = baseline
        sampling = True

        async def sample() -> None:
            nonlocal peak
            while sampling:
                peak = max(peak, gateway.rss_bytes())
                await asyncio.sleep(0.05)

        sampler = asyncio.create_task(sample())
        connections = asyncio.Semaphore(200)

        async def one(n: int) -> Answer:
            async with connections:
                return await register(n)

        async with registrations_locked(dsn) as lock:
            first = asyncio.create_task(register(users))
            await wait_until(
                lambda: backends_waiting_on_locks(lock), within=10,
                what="the first write batch to block on the lock",
            )
            started = time.monotonic()
            tasks = [asyncio.create_task(one(n)) for n in range(users + 1, users + 1 + flood)]
            await wait_until(
                lambda: sum(task.done() for task in tasks) >= flood - pending, within=30,
                what=f"{flood - pending} writes to be refused",
            )
            flooded = time.monotonic() - started
            refused = [task.result() for task in tasks if task.done()]
            live = await health(http, url, "live")
            waiting = [task for task in tasks if not task.done()]
            assert not first.done()
        released = time.monotonic()
        answers = await asyncio.wait_for(asyncio.gather(first, *waiting), 30)
        drained = time.monotonic() - released
        after = await register(users + flood + 1)
        sampling = False
        await sampler
        settled = gateway.rss_bytes()

    assert len(refused) == flood - pending
    assert all(map(is_layer_503, refused)), [a for a in refused if not is_layer_503(a)][:5]
    slowest = max(a.seconds for a in refused)
    assert slowest < 2, f"a refusal took {slowest:.2f} s"
    assert live.status == 200 and live.seconds < 2, live
    assert [a.status for a in answers] == [202] * (pending + 1), answers
    assert after.status == 202, after
    growth = peak - baseline
    assert growth < 64 * 2**20, f"RSS grew by {growth / 2**20:.0f} MiB during the flood"
    figures.add(
        f"overload (GATEWAY_MAX_PENDING_WRITES={pending}, writes blocked by a table lock)",
        flood=f"{flood} writes from 200 connections in {flooded:.2f} s",
        refused_503=f"{len(refused)} ({describe_durations([a.seconds for a in refused])})",
        queued_then_written=len(answers),
        queue_written_after_the_block_ended=f"{drained:.2f} s",
        health_live_during_the_flood=f"{live.status} in {live.seconds * 1000:.0f} ms",
        rss=f"{baseline / 2**20:.0f} MiB before, {peak / 2**20:.0f} MiB peak,"
        f" {settled / 2**20:.0f} MiB after",
    )


# ------------------------------------------------- the checker itself can fail


def _group(devices: int = 3) -> Group:
    return Group(
        index=0, user="u", sessions=["s0", "s1"], session_ids=[10, 11],
        devices=[f"d{n}" for n in range(devices)], tokens=["t0", "t1"],
    )


def _said(outcome: Outcome, kind: Kind, session: int = 0, device: str | None = None,
          token: str | None = None) -> Exchange:
    return Exchange(Command(kind, session, device, token), 0.0, 0.0, outcome, None)


def _verdict(log: list[Exchange], live: set[int], stored: set[tuple[str, str, int]]) -> Verdict:
    return compare([_group(30)], {0: log}, {0: (frozenset(live), frozenset(stored))})


ACK = Outcome.ACKNOWLEDGED


def test_the_model_flags_an_acknowledged_write_that_is_missing_or_stale():
    log = [
        _said(ACK, Kind.REGISTER, device="d0", token="t0"),
        _said(ACK, Kind.REGISTER, device="d0", token="t1"),
    ]
    assert _verdict(log, {0, 1}, {("device d0", "t1", 0)}).lost == 0
    assert _verdict(log, {0, 1}, set()).lost == 1
    assert _verdict(log, {0, 1}, {("device d0", "t0", 0)}).lost == 1


def test_the_model_allows_either_state_after_an_unanswered_write():
    log = [
        _said(ACK, Kind.REGISTER, device="d0", token="t0"),
        _said(Outcome.UNAVAILABLE, Kind.UNREGISTER, device="d0"),
    ]
    assert _verdict(log, {0, 1}, set()).lost == 0
    assert _verdict(log, {0, 1}, {("device d0", "t0", 0)}).lost == 0
    # A refused connection never reached the gateway: the write must still be there.
    log[1] = _said(Outcome.NOT_DELIVERED, Kind.UNREGISTER, device="d0")
    assert _verdict(log, {0, 1}, set()).lost == 1


def test_the_model_moves_a_token_and_ends_a_sessions_registrations_with_it():
    log = [
        _said(ACK, Kind.REGISTER, device="d0", token="t0"),
        _said(ACK, Kind.BIND, session=1, token="t0"),
        _said(ACK, Kind.REGISTER, session=1, device="d1", token="t1"),
        _said(ACK, Kind.LOGOUT, session=1),
    ]
    assert _verdict(log, {0}, set()).lost == 0
    assert _verdict(log, {0}, {("device d0", "t0", 0)}).lost == 1
    assert _verdict(log, {0, 1}, {("binding 1", "t0", 1), ("device d1", "t1", 1)}).mismatches


def test_the_model_evicts_the_least_recently_registered_past_25():
    group = _group(30)
    log = [
        _said(ACK, Kind.REGISTER, device=f"d{n}", token=f"t{n}") for n in range(26)
    ]
    stored = {(f"device d{n}", f"t{n}", 0) for n in range(1, 26)}
    view = {0: (frozenset({0, 1}), frozenset(stored))}
    assert compare([group], {0: log}, view).lost == 0


def test_the_model_finds_an_answer_no_history_explains():
    log = [_said(Outcome.SESSION_REFUSED, Kind.BIND, token="t0")]
    assert _verdict(log, {0, 1}, set()).contradictions
