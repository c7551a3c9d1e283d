"""Delivery throughput: one notification to 100,000 APNs targets (and a mixed one) against fakes.

    make bench-delivery
    .venv/bin/python bench/delivery.py --targets 20000 --mixed 6000   # smaller

A private PostgreSQL (pgserver, as the fault tests use) holds the queue so
that its CPU is ours alone. The fake providers (tests/fakes) run in this
process; one `python -m gateway deliver` process sends (--processes for more). Reported per run:
enqueue time (the POST's one INSERT ... SELECT, committed), pushes/s from
the commit to the last 200, p50/p99 from the commit to the fake's 200, the
worker's peak RSS (psutil, sampled every 100 ms), and the database's CPU per
delivery. Then the fake APNs alone under h2load (Debian's nghttp2-client),
for the ratio of our pushes/s to the fake's own ceiling.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import json
import os
import shutil
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

# As bench/servers.py: psutil ships no type information.
psutil: Any = importlib.import_module("psutil")

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from gateway.commands import FindTargets, SendNotification  # noqa: E402
from gateway.delivery.webpush import generate_vapid_key  # noqa: E402
from gateway.store import Store, apply_schema, create_pool  # noqa: E402
from tests.fakes import apns as fake_apns  # noqa: E402
from tests.fakes.apns import FakeApns  # noqa: E402
from tests.fakes.fcm import FakeFcm  # noqa: E402
from tests.fakes.tls import TestCA  # noqa: E402
from tests.fakes.webpush import FakeWebPush  # noqa: E402
from tests.faults_support import PrivatePostgres  # noqa: E402


def cpu_seconds(postgres: PrivatePostgres) -> float:
    """CPU the server's processes used, reaped backends included."""
    total = 0.0
    pids = postgres.processes()
    for pid in pids:
        try:
            times = psutil.Process(pid).cpu_times()
        except psutil.Error:
            continue
        total += times.user + times.system
        if pid == pids[0]:
            total += times.children_user + times.children_system
    return total


async def populate(dsn: str, apns: int, fcm: int, webpush: list[tuple[str, str, str]]) -> None:
    import asyncpg

    connection = await asyncpg.connect(dsn)
    try:
        await connection.execute("TRUNCATE registrations, sessions, notifications CASCADE")
        total = apns + fcm + len(webpush)
        await connection.execute(
            "INSERT INTO sessions (token_sha256, user_id, expires_at)"
            " SELECT sha256(('bench-' || g)::bytea), 'u' || g, now() + interval '1 day'"
            " FROM generate_series(1, $1) AS g",
            total,
        )
        await connection.execute(
            "INSERT INTO registrations (user_id, session_id, device_id, provider, token)"
            " SELECT user_id, id, 'phone', 'apns', lpad(to_hex(id), 64, '0') FROM sessions"
            " WHERE id <= (SELECT min(id) FROM sessions) + $1 - 1",
            apns,
        )
        await connection.execute(
            "INSERT INTO registrations (user_id, session_id, device_id, provider, token)"
            " SELECT user_id, id, 'android', 'fcm', 'fcm-bench:' || id FROM sessions"
            " WHERE id > (SELECT min(id) FROM sessions) + $1 - 1"
            "   AND id <= (SELECT min(id) FROM sessions) + $1 + $2 - 1",
            apns,
            fcm,
        )
        if webpush:
            first = await connection.fetchval("SELECT min(id) FROM sessions") + apns + fcm
            await connection.executemany(
                "INSERT INTO registrations (user_id, session_id, device_id, provider, token,"
                " webpush_p256dh, webpush_auth)"
                " SELECT user_id, id, 'browser', 'webpush', $2, $3, $4 FROM sessions WHERE id = $1",
                [(first + n, *sub) for n, sub in enumerate(webpush)],
            )
        await connection.execute("VACUUM ANALYZE registrations")
    finally:
        await connection.close()


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


async def one_run(
    name: str,
    postgres: PrivatePostgres,
    env: dict[str, str],
    users: int,
    received: Any,
    processes: int,
) -> dict[str, Any]:
    """Enqueue one notification to ``users`` users, deliver it with ``processes`` workers."""
    dsn = postgres.dsn
    workers = [
        await asyncio.create_subprocess_exec(
            sys.executable,
            *("-m", "gateway", "deliver"),
            cwd=ROOT,
            env={**os.environ, "DATABASE_URL": dsn, **env},
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
        )
        for _ in range(processes)
    ]
    watched = [psutil.Process(worker.pid) for worker in workers]
    peak_rss = 0
    await asyncio.sleep(2)  # the workers' start-up and their first idle claims
    idle_rss = max(process.memory_info().rss for process in watched)
    pool = await create_pool(dsn, min_size=1, max_size=1)
    try:
        store = Store(pool)
        cpu_before = cpu_seconds(postgres)
        worker_before = sum(sum(process.cpu_times()[:2]) for process in watched)
        fakes_before = sum(psutil.Process().cpu_times()[:2])
        started = time.monotonic()
        queued = await store.enqueue_notification(
            SendNotification(
                audience=FindTargets(tuple(f"u{n}" for n in range(1, users + 1)), "chat_message"),
                exclude_users=(),
                message={"title": "Bench", "body": "One of many", "data": {"k": "v"}},
                overrides={},
                ttl_seconds=3600,
                priority="high",
                collapse_key=None,
            )
        )
        committed = time.monotonic()
        while True:
            peak_rss = max(peak_rss, *(process.memory_info().rss for process in watched))
            if received() >= queued.targets:
                async with pool.acquire() as connection:
                    pending = await connection.fetchval(
                        "SELECT count(*) FROM deliveries WHERE state = 'pending'"
                    )
                if pending == 0:
                    break
            await asyncio.sleep(0.1)
        finished = time.monotonic()
        cpu_after = cpu_seconds(postgres)
        worker_cpu = sum(sum(process.cpu_times()[:2]) for process in watched) - worker_before
        fakes_cpu = sum(psutil.Process().cpu_times()[:2]) - fakes_before
    finally:
        await pool.close()
        for worker in workers:
            worker.send_signal(signal.SIGTERM)
        for worker in workers:
            await worker.wait()
    return {
        "run": name,
        "worker_processes": processes,
        "targets": queued.targets,
        "enqueue_s": round(committed - started, 3),
        "commit_to_last_200_s": round(finished - committed, 2),
        "pushes_per_s": round(queued.targets / (finished - committed)),
        "committed_at": committed,
        # Per process, the largest.
        "worker_rss_idle_mib": round(idle_rss / 2**20, 1),
        "worker_rss_peak_mib": round(peak_rss / 2**20, 1),
        "db_cpu_per_delivery_us": round((cpu_after - cpu_before) / queued.targets * 1e6, 1),
        "worker_cpu_per_delivery_us": round(worker_cpu / queued.targets * 1e6, 1),
        # The fakes run in this process; their checks (JWT, decryption) cost too.
        "fakes_cpu_per_delivery_us": round(fakes_cpu / queued.targets * 1e6, 1),
    }


async def h2load_ceiling(fake: FakeApns, requests: int) -> dict[str, Any]:
    """The fake APNs alone, under h2load with the headers the gateway sends."""
    h2load = shutil.which("h2load")
    if h2load is None:
        return {"h2load": "not installed (apt-get install -y nghttp2-client)"}
    from gateway.delivery.apns import TokenSigner

    signer = TokenSigner.from_file(str(fake.key_file), fake_apns.KEY_ID, fake_apns.TEAM_ID)
    with tempfile.NamedTemporaryFile("wb", suffix=".json", delete=False) as body:
        body.write(b'{"aps":{"alert":{"title":"Bench","body":"One of many"}},"k":"v"}')
    headers = {
        "authorization": f"bearer {signer.current()}",
        "apns-topic": fake_apns.TOPIC,
        "apns-push-type": "alert",
        "apns-priority": "10",
        "apns-expiration": str(int(time.time()) + 3600),
        "apns-id": "1b4d2e6a-1c1e-4f73-9f7e-0c2b1b1f4b9e",
    }
    arguments = [h2load, "-n", str(requests), "-c", "1", "-m", "100", "-d", body.name]
    for name, value in headers.items():
        arguments += ["-H", f"{name}: {value}"]
    arguments.append(f"https://127.0.0.1:{fake.port}/3/device/{'ab' * 32}")
    process = await asyncio.create_subprocess_exec(
        *arguments, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    output = (await process.communicate())[0].decode()
    os.unlink(body.name)
    summary: dict[str, Any] = {"h2load": " ".join(arguments[:8]) + " ..."}
    for line in output.splitlines():
        if line.startswith("finished in"):
            # "finished in 5.21s, 19193.35 req/s, 1.12MB/s"
            summary["ceiling_req_per_s"] = round(float(line.split(",")[1].split()[0]))
        if line.startswith("status codes:"):
            summary["status_codes"] = line.split(":", 1)[1].strip()
    return summary


async def main(arguments: argparse.Namespace) -> dict[str, Any]:
    postgres = PrivatePostgres()
    directory = Path(tempfile.mkdtemp(prefix="gateway-bench-delivery-"))
    try:
        await apply_schema(postgres.dsn)
        ca = TestCA(directory)
        public_key = generate_vapid_key(directory / "vapid.pem")
        apns = FakeApns(ca, directory, max_streams=1000)
        fcm = FakeFcm(ca, directory)
        webpush = FakeWebPush(ca, public_key)
        for fake in (apns, fcm, webpush):
            await fake.start()
        env = {
            **apns.env(),
            **fcm.env(),
            "GATEWAY_VAPID_PRIVATE_KEY": str(directory / "vapid.pem"),
            "GATEWAY_VAPID_SUBJECT": "mailto:bench@example.com",
            "GATEWAY_PUSH_RESOLVE": ",".join((apns.resolve, fcm.resolve, webpush.resolve)),
            "GATEWAY_DELIVERY_CONCURRENCY": str(arguments.concurrency),
        }
        results: dict[str, Any] = {"runs": []}

        await populate(postgres.dsn, arguments.targets, 0, [])
        run = await one_run(
            "apns",
            postgres,
            env,
            arguments.targets,
            lambda: len(apns.received),
            arguments.processes,
        )
        committed = run.pop("committed_at")
        latencies = [r.at - committed for r in apns.received]
        run["p50_commit_to_200_s"] = round(statistics.median(latencies), 2)
        run["p99_commit_to_200_s"] = round(percentile(latencies, 0.99), 2)
        results["runs"].append(run)

        third = arguments.mixed // 3
        apns.received.clear()
        subscriptions = [webpush.subscribe() for _ in range(third)]
        await populate(
            postgres.dsn,
            third,
            third,
            [(s.endpoint, s.p256dh, s.auth) for s in subscriptions],
        )
        run = await one_run(
            "mixed",
            postgres,
            env,
            3 * third,
            lambda: len(apns.received) + len(fcm.received) + len(webpush.received),
            arguments.processes,
        )
        committed = run.pop("committed_at")
        latencies = [r.at - committed for r in apns.received]
        run["apns_p99_commit_to_200_s"] = round(percentile(latencies, 0.99), 2)
        run["by_provider"] = {
            "apns": len(apns.received),
            "fcm": len(fcm.received),
            "webpush": len(webpush.received),
        }
        results["runs"].append(run)

        apns.received.clear()
        results["fake_apns_alone"] = await h2load_ceiling(apns, arguments.h2load_requests)
        ceiling = results["fake_apns_alone"].get("ceiling_req_per_s")
        if ceiling:
            results["apns_ratio_to_ceiling"] = round(
                results["runs"][0]["pushes_per_s"] / ceiling, 2
            )
        results["machine"] = {
            "cpus": os.cpu_count(),
            "load_average": [round(x, 2) for x in os.getloadavg()],
        }
        for fake in (apns, fcm, webpush):
            await fake.close()
        return results
    finally:
        postgres.destroy()
        shutil.rmtree(directory, ignore_errors=True)


def _arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--targets", type=int, default=100_000, help="APNs targets of run 1")
    parser.add_argument("--mixed", type=int, default=30_000, help="targets of the mixed run")
    parser.add_argument("--concurrency", type=int, default=256, help="sends in flight per provider")
    parser.add_argument(
        "--processes", type=int, default=1, help="`gateway deliver` processes sharing the queue"
    )
    parser.add_argument("--h2load-requests", type=int, default=100_000)
    parser.add_argument("--json", type=Path, help="also write the figures here")
    return parser.parse_args()


if __name__ == "__main__":
    options = _arguments()
    figures = asyncio.run(main(options))
    text = json.dumps(figures, indent=2)
    print(text)
    if options.json is not None:
        options.json.write_text(text + "\n")
