"""The benchmark's database side: throwaway database, session seeding, and verification.

Verification compares the ``registrations`` table with :class:`workload.Model` after
every wrk run against the gateway.  See bench/README.md for what each check means.
"""

from __future__ import annotations

import asyncio
import hashlib
import secrets
import subprocess
import sys
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
from workload import APNS_RE, DEVICE_RE, FCM_RE, PROVIDER, Key, Layout, Model

DEFAULT_SERVER_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
MAX_REPORTED = 20


def with_database(url: str, name: str) -> str:
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, "/" + name, parts.query, parts.fragment))


async def create_database(server_url: str) -> tuple[str, str]:
    """Create ``gateway_bench_<random>`` on the server; return (its name, its URL)."""
    name = f"gateway_bench_{secrets.token_hex(4)}"
    conn = await asyncpg.connect(server_url)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    return name, with_database(server_url, name)


async def drop_database(server_url: str, name: str) -> None:
    conn = await asyncpg.connect(server_url)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


async def server_version(url: str) -> str:
    conn = await asyncpg.connect(url)
    try:
        return str(await conn.fetchval("SHOW server_version"))
    finally:
        await conn.close()


@dataclass(frozen=True)
class Session:
    index: int
    token: str
    user_index: int
    user_id: str
    db_id: int


def user_name(tag: str, user: int) -> str:
    return f"bench-{tag}-{user:05d}"


async def _session_ids(conn: asyncpg.Connection, tokens: Sequence[str]) -> dict[bytes, int]:
    digests = [hashlib.sha256(t.encode("ascii")).digest() for t in tokens]
    rows = await conn.fetch(
        "SELECT id, token_sha256 FROM sessions WHERE token_sha256 = ANY($1::bytea[])", digests
    )
    return {bytes(r["token_sha256"]): int(r["id"]) for r in rows}


async def seed_sessions_copy(db_url: str, layout: Layout, tag: str) -> list[Session]:
    """Insert every session in one COPY (the sessions table as schema.sql defines it)."""
    tokens = [secrets.token_hex(16) for _ in range(layout.sessions)]
    expires = datetime.now(UTC) + timedelta(days=1)
    records = [
        (
            hashlib.sha256(tok.encode("ascii")).digest(),
            user_name(tag, layout.user_of_session(s)),
            expires,
        )
        for s, tok in enumerate(tokens)
    ]
    conn = await asyncpg.connect(db_url)
    try:
        await conn.copy_records_to_table(
            "sessions", records=records, columns=["token_sha256", "user_id", "expires_at"]
        )
        ids = await _session_ids(conn, tokens)
    finally:
        await conn.close()
    return _sessions(layout, tag, tokens, ids)


async def seed_sessions_cli(
    db_url: str, layout: Layout, tag: str, command: Sequence[str], env: Mapping[str, str]
) -> list[Session]:
    """Create every session through ``gateway session create USER`` (slow: one process each)."""
    tokens: list[str] = []
    for s in range(layout.sessions):
        user = user_name(tag, layout.user_of_session(s))
        done = await asyncio.to_thread(
            subprocess.run,
            [*command, user, "--ttl", "86400"],
            env=dict(env),
            capture_output=True,
            text=True,
            check=True,
        )
        tokens.append(done.stdout.strip())
    conn = await asyncpg.connect(db_url)
    try:
        ids = await _session_ids(conn, tokens)
    finally:
        await conn.close()
    return _sessions(layout, tag, tokens, ids)


def _sessions(
    layout: Layout, tag: str, tokens: Sequence[str], ids: Mapping[bytes, int]
) -> list[Session]:
    out = []
    for s, tok in enumerate(tokens):
        digest = hashlib.sha256(tok.encode("ascii")).digest()
        if digest not in ids:
            raise RuntimeError(f"session {s} was not found in the sessions table after seeding")
        u = layout.user_of_session(s)
        out.append(Session(s, tok, u, user_name(tag, u), ids[digest]))
    return out


def fake_sessions(layout: Layout, tag: str) -> list[Session]:
    """Sessions for a run without a database (smoke tests against bare servers)."""
    return [
        Session(
            s,
            secrets.token_hex(16),
            layout.user_of_session(s),
            user_name(tag, layout.user_of_session(s)),
            s + 1,
        )
        for s in range(layout.sessions)
    ]


def write_sessions_file(path: Path, sessions: Sequence[Session]) -> None:
    path.write_text("".join(f"{s.token} {s.user_index}\n" for s in sessions), encoding="ascii")


@dataclass
class Verification:
    label: str
    exact: bool = True
    passed: bool = True
    rows: int = 0
    keys_expected: int = 0
    keys_present: int = 0
    last_ack_exact: int = 0
    in_flight_landed: int = 0
    loose_match: int = 0
    duplicate_tokens: int = 0
    duplicate_keys: int = 0
    bad_rows: int = 0
    wrong_token: int = 0
    attempts: int = 1
    problems: list[str] = field(default_factory=list)

    def fail(self, problem: str) -> None:
        self.passed = False
        if len(self.problems) < MAX_REPORTED:
            self.problems.append(problem)

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


class Verifier:
    """Reads the registrations of this run's users and checks them against the model."""

    def __init__(self, db_url: str, layout: Layout, sessions: Sequence[Session]) -> None:
        self.db_url = db_url
        self.layout = layout
        self.sessions = sessions
        self.by_db_id = {s.db_id: s for s in sessions}
        self.user_index = {s.user_id: s.user_index for s in sessions}
        self.users = sorted(self.user_index)

    async def fingerprint(self) -> tuple[int, str]:
        """Changes whenever a registration of this run's users changes."""
        conn = await asyncpg.connect(self.db_url)
        try:
            row = await conn.fetchrow(
                "SELECT count(*) AS n, coalesce(sum(hashtextextended("
                "token || '|' || coalesce(device_id, '') || '|' || session_id, 0)), 0)::text AS h"
                " FROM registrations WHERE user_id = ANY($1::text[])",
                self.users,
            )
        finally:
            await conn.close()
        if row is None:
            raise RuntimeError("the fingerprint query returned no row")
        return int(row["n"]), str(row["h"])

    async def check(
        self, model: Model, label: str, exact: bool = True
    ) -> tuple[Verification, dict[Key, str]]:
        conn = await asyncpg.connect(self.db_url)
        try:
            rows = await conn.fetch(
                "SELECT user_id, session_id, device_id, provider, token FROM registrations"
                " WHERE user_id = ANY($1::text[])",
                self.users,
            )
            # (b) over the whole table, not only this run's users
            dup_tokens = await conn.fetchval(
                "SELECT count(*) FROM (SELECT 1 FROM registrations"
                " GROUP BY provider, token HAVING count(*) > 1) AS d"
            )
            dup_plain = await conn.fetchval(
                "SELECT count(*) FROM (SELECT 1 FROM registrations"
                " GROUP BY token HAVING count(*) > 1) AS d"
            )
        finally:
            await conn.close()
        v, observed = self.judge(
            model, label, [dict(r) for r in rows], int(dup_tokens) + int(dup_plain)
        )
        v.exact = exact
        return v, observed

    def judge(
        self, model: Model, label: str, rows: Sequence[Mapping[str, Any]], duplicates: int
    ) -> tuple[Verification, dict[Key, str]]:
        v = Verification(label, rows=len(rows))
        if duplicates:
            v.duplicate_tokens = duplicates
            v.fail(f"(b) {duplicates} token(s) held by more than one registration")
        observed: dict[Key, str] = {}
        counts: Counter[Key] = Counter()
        for row in rows:
            key = self._row_key(row, v)
            if key is None:
                continue
            counts[key] += 1
            observed[key] = str(row["token"])
        for key, n in counts.items():
            if n > 1:
                v.duplicate_keys += 1
                v.fail(f"(c) {n} rows for key {key}")
        # (e) every key: the database holds exactly what the model allows
        v.keys_expected = sum(1 for st in model.keys.values() if None not in st.allowed)
        v.keys_present = len(observed)
        for key in sorted(set(model.keys) | set(observed)):
            state = model.keys.get(key)
            token = observed.get(key)
            if state is None:
                v.wrong_token += 1
                v.fail(f"(e) key {key} holds {token!r} but the workload never wrote it")
            elif token not in state.allowed:
                v.wrong_token += 1
                shown = sorted(t or "<no row>" for t in state.allowed)[:3]
                v.fail(
                    f"(e) key {key}: database holds {token or '<no row>'!r}, last acknowledged"
                    f" {state.acked!r}, allowed {len(state.allowed)} incl. {shown}"
                )
            elif token is None:
                continue
            elif not state.exact:
                v.loose_match += 1
            elif token == state.acked:
                v.last_ack_exact += 1
            else:
                v.in_flight_landed += 1
        return v, observed

    def _row_key(self, row: Mapping[str, Any], v: Verification) -> Key | None:
        """(d) a row names a known key, of the right user, session, provider and format."""
        user = self.user_index.get(row["user_id"])
        session = self.by_db_id.get(row["session_id"])
        if user is None or session is None or session.user_index != user:
            v.bad_rows += 1
            v.fail(
                f"(d) row of user {row['user_id']!r} names session {row['session_id']}"
                " that is not one of that user's sessions"
            )
            return None
        key: Key
        if row["device_id"] is None:
            key = ("session", session.index)
        else:
            match = DEVICE_RE.fullmatch(row["device_id"])
            if match is None or int(match.group(1)) >= self.layout.devices:
                v.bad_rows += 1
                v.fail(f"(d) unexpected device_id {row['device_id']!r}")
                return None
            device = int(match.group(1))
            key = ("device", user, device)
            if session.index != self.layout.session_of_device(user, device):
                v.bad_rows += 1
                v.fail(
                    f"(d) key {key} registered through session {session.index},"
                    f" expected {self.layout.session_of_device(user, device)}"
                )
                return None
        provider = PROVIDER[key[0]]
        pattern = APNS_RE if provider == "apns" else FCM_RE
        if row["provider"] != provider or not pattern.fullmatch(str(row["token"])):
            v.bad_rows += 1
            v.fail(f"(d) key {key}: provider {row['provider']!r} token {row['token']!r}")
            return None
        return key


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)
