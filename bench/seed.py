"""Seeds a database with many live registrations for the fan-out benchmark, fast, with COPY.

    DATABASE_URL=postgresql://... .venv/bin/python bench/seed.py                  # 1M over 200k
    .venv/bin/python bench/seed.py --database-url postgresql://... --registrations 100000 \
        --users 20000

Applies schema.sql, then writes sessions and registrations with COPY (binary, through
asyncpg's copy_records_to_table) and ANALYZEs both tables. The database must hold no
registrations yet. Users are ``user_id(0) .. user_id(users - 1)``; registrations are
spread evenly over them (registrations // users each, the first registrations % users
one more). Each user has one Layer session holding its devices (APNs and FCM, filter
``*``) and one session per Navixy binding (every provider, a mix of filters); the
default sizes make 600,000 sessions. Every session expires in 30 days.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import os
import random
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import asyncpg

from gateway.planning import MAX_REGISTRATIONS_PER_USER
from gateway.store import apply_schema

Row = tuple[Any, ...]

SESSION_TTL_SECONDS = 30 * 86400
# Rows handed to one COPY: enough that per-call overhead vanishes, few enough
# that the seeder's memory stays in the tens of megabytes.
COPY_BATCH = 100_000

# Every second registration of a user is a Navixy binding (on a session of its
# own), the others Layer devices. Bindings take a provider and a filter at
# random (a fixed seed: every run seeds the same rows); with these six filters
# about 87% of all registrations admit chat_message.
NAVIXY_EVERY = 2
NAVIXY_FILTERS = (
    "*",
    "chat_message",
    "chat_message,history_rule",
    "-chat_message",
    "history_info,history_task",
    "-history_info,history_rule",
)
BINDING_PROVIDERS = ("webpush", "webpush", "apns", "fcm", "fcm")
RANDOM_SEED = 20240611
# One subscription's keys for every Web Push registration: fan-out never reads them.
P256DH = "BNcRdreALRFXTkOOUHK1EtK2wtaz5Ry4YfYCA_0QTpQtUbVlUls0VJXg7A8u-Ts1XbjhazAkj7I99e8QcYP7DkM"
AUTH = "tBHItJI5svbpez7KI4CCXg"


def user_id(number: int) -> str:
    """The id of seeded user ``number``; bench/fanout.py draws its audiences from these."""
    return f"user-{number:07d}"


def apns_token(number: int) -> str:
    return f"{number:064x}"


def fcm_token(number: int) -> str:
    # The length of a real FCM registration token (~152 characters).
    return f"f{number:010d}:APA91b" + "x" * 134


def webpush_endpoint(number: int) -> str:
    return f"https://fcm.googleapis.com/fcm/send/f{number:010d}:APA91b" + "y" * 120


@dataclass(frozen=True)
class Layout:
    registrations: int
    users: int

    def count(self, user: int) -> int:
        base, extra = divmod(self.registrations, self.users)
        return base + (1 if user < extra else 0)


def rows(layout: Layout, first_session_id: int) -> Iterator[tuple[list[Row], list[Row]]]:
    """(sessions, registrations) rows, a block of users at a time."""
    rng = random.Random(RANDOM_SEED)
    session_id = first_session_id
    number = 0  # a registration's global number: its token is unique by it
    sessions: list[Row] = []
    registrations: list[Row] = []
    for user in range(layout.users):
        name = user_id(user)
        layer_session = session_id
        sessions.append((layer_session, _digest(layer_session), name))
        session_id += 1
        for position in range(layout.count(user)):
            if position % NAVIXY_EVERY == NAVIXY_EVERY - 1:
                binding_session = session_id
                sessions.append((binding_session, _digest(binding_session), name))
                session_id += 1
                registrations.append(_binding(name, binding_session, number, rng))
            else:
                registrations.append(_device(name, layer_session, position, number))
            number += 1
        if len(registrations) >= COPY_BATCH:
            yield sessions, registrations
            sessions, registrations = [], []
    if sessions:
        yield sessions, registrations


def _digest(session_id: int) -> bytes:
    # Nobody signs in with a seeded session; the digest only has to be unique.
    return hashlib.sha256(b"bench-seed-session-%d" % session_id).digest()


def _device(user: str, session_id: int, position: int, number: int) -> Row:
    device = f"device-{position}"
    if number % 2:
        return (
            user,
            session_id,
            device,
            "apns",
            apns_token(number),
            "com.example.app",
            None,
            "17.4",
            None,
            None,
            "*",
        )
    return (
        user,
        session_id,
        device,
        "fcm",
        fcm_token(number),
        None,
        "123456789012",
        None,
        None,
        None,
        "*",
    )


def _binding(user: str, session_id: int, number: int, rng: random.Random) -> Row:
    category_filter = rng.choice(NAVIXY_FILTERS)
    provider = rng.choice(BINDING_PROVIDERS)
    token = {"webpush": webpush_endpoint, "apns": apns_token, "fcm": fcm_token}[provider](number)
    keys = (P256DH, AUTH) if provider == "webpush" else (None, None)
    return (user, session_id, None, provider, token, None, None, None, *keys, category_filter)


REGISTRATION_COLUMNS = [
    "user_id",
    "session_id",
    "device_id",
    "provider",
    "token",
    "apns_bundle_id",
    "gcm_sender_id",
    "ios_version",
    "webpush_p256dh",
    "webpush_auth",
    "category_filter",
]


def log(message: str) -> None:
    print(f"[seed {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


async def seed(dsn: str, registrations: int, users: int) -> dict[str, float]:
    """Seed ``dsn``; returns the counts and how long each step took."""
    if users < 1 or registrations < users:
        raise ValueError("need at least one user and one registration per user")
    if -(-registrations // users) > MAX_REGISTRATIONS_PER_USER:
        raise ValueError(f"at most {MAX_REGISTRATIONS_PER_USER} registrations per user")
    started = time.perf_counter()
    await apply_schema(dsn)
    connection = await asyncpg.connect(dsn)
    try:
        if await connection.fetchval("SELECT EXISTS (SELECT 1 FROM registrations)"):
            raise SystemExit("the database already holds registrations; seed an empty one")
        first = await connection.fetchval("SELECT coalesce(max(id), 0) + 1 FROM sessions")
        expires_at = await connection.fetchval(
            "SELECT now() + make_interval(secs => $1)", SESSION_TTL_SECONDS
        )
        session_count = 0
        async with connection.transaction():
            for sessions, block in rows(Layout(registrations, users), first):
                await connection.copy_records_to_table(
                    "sessions",
                    records=[(*session, expires_at) for session in sessions],
                    columns=["id", "token_sha256", "user_id", "expires_at"],
                )
                await connection.copy_records_to_table(
                    "registrations", records=block, columns=REGISTRATION_COLUMNS
                )
                session_count += len(sessions)
            # COPY wrote the ids itself: move the identity past them.
            await connection.execute(
                "SELECT setval(pg_get_serial_sequence('sessions', 'id'), max(id)) FROM sessions"
            )
        copied = time.perf_counter()
        await connection.execute("ANALYZE sessions")
        await connection.execute("ANALYZE registrations")
    finally:
        await connection.close()
    done = time.perf_counter()
    return {
        "registrations": registrations,
        "users": users,
        "sessions": session_count,
        "copy_seconds": round(copied - started, 2),
        "analyze_seconds": round(done - copied, 2),
        "total_seconds": round(done - started, 2),
    }


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Seed registrations for bench/fanout.py.")
    p.add_argument(
        "--database-url",
        default=os.environ.get("DATABASE_URL"),
        help="target database (DATABASE_URL)",
    )
    p.add_argument("--registrations", type=int, default=1_000_000, help="(1,000,000)")
    p.add_argument("--users", type=int, default=200_000, help="(200,000)")
    args = p.parse_args(argv)
    if not args.database_url:
        p.error("give --database-url or set DATABASE_URL")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    log(f"seeding {args.registrations:,} registrations over {args.users:,} users")
    figures = asyncio.run(seed(args.database_url, args.registrations, args.users))
    log(", ".join(f"{key} {value:,}" for key, value in figures.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
