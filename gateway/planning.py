"""The net effect of a batch of writes, worked out before any SQL runs (no database here)."""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson

from gateway.commands import RegisterToken, WriteCommand
from gateway.sessions import ResolvedSession

# Layer's documented ceiling: registering a 26th token unregisters the oldest.
MAX_REGISTRATIONS_PER_USER = 25


def lock_key(*parts: str) -> int:
    """A stable signed 64-bit advisory-lock key for a user or a token."""
    digest = hashlib.blake2b("\x00".join(parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


@dataclass
class WritePlan:
    """The net effect of a batch of writes, equal to running them one at a time in order.

    Its lists hold the entries of apply_registration_writes()'s document
    (schema.sql) as they are sent: planning builds them directly, so a batch
    is walked once to find each key's and token's last command and once to
    write the entries, with no tuples in between.
    """

    delete_devices: list[dict[str, Any]] = field(default_factory=list)
    # Each Navixy binding to remove: its user and session.
    delete_bindings: list[dict[str, Any]] = field(default_factory=list)
    # Per token registered: who keeps it (nobody when its last command lost its key).
    release_tokens: list[dict[str, Any]] = field(default_factory=list)
    # In arrival order: the per-user limit evicts the least recently registered.
    upserts: list[dict[str, Any]] = field(default_factory=list)
    lock_keys: list[int] = field(default_factory=list)
    session_ids: list[int] = field(default_factory=list)

    def document(self) -> str:
        """The plan as apply_registration_writes() in schema.sql reads it."""
        return orjson.dumps(
            {
                "sessions": self.session_ids,
                "locks": self.lock_keys,
                "delete_devices": self.delete_devices,
                "delete_bindings": self.delete_bindings,
                "release": self.release_tokens,
                "upserts": self.upserts,
                "max_per_user": MAX_REGISTRATIONS_PER_USER,
            }
        ).decode()


def _upsert(position: int, session: ResolvedSession, command: RegisterToken) -> dict[str, Any]:
    webpush = command.webpush
    return {
        "position": position,
        "user_id": session.user_id,
        "session_id": session.id,
        "device_id": command.device_id,
        "provider": command.provider.value,
        "token": command.token,
        "apns_bundle_id": command.apns_bundle_id,
        "gcm_sender_id": command.gcm_sender_id,
        "ios_version": command.ios_version,
        "webpush_p256dh": webpush.p256dh if webpush else None,
        "webpush_auth": webpush.auth if webpush else None,
        "category_filter": command.category_filter,
    }


RegistrationKey = tuple[str, str, str | int]


def _key(session: ResolvedSession, command: WriteCommand) -> RegistrationKey:
    if command.device_id is None:
        return (session.user_id, "session", session.id)
    return (session.user_id, "device", command.device_id)


# A batch's users repeat from batch to batch (the same apps re-register), and a
# user's lock key is a pure function of the id: kept, it costs a dict lookup.
@functools.lru_cache(maxsize=65536)
def _user_lock_key(user_id: str) -> int:
    return lock_key("user", user_id)


def plan_writes(writes: Sequence[tuple[ResolvedSession, WriteCommand]]) -> WritePlan:
    """Reduce a batch to its net effect.

    The last command for a key wins. A token registered anywhere in the batch
    leaves its earlier holders even when a later command moves it on again, and
    ends up only with the key whose command registered it last, if that command
    is still the key's last one.
    """
    last_for_key: dict[RegistrationKey, int] = {}
    last_for_token: dict[tuple[str, str], int] = {}
    for index, (session, command) in enumerate(writes):
        last_for_key[_key(session, command)] = index
        if isinstance(command, RegisterToken):
            last_for_token[(command.provider.value, command.token)] = index

    plan = WritePlan()
    final_indexes = set(last_for_key.values())
    # In index order, so upserts keep the order the commands arrived in.
    for index in sorted(final_indexes):
        session, command = writes[index]
        if (
            isinstance(command, RegisterToken)
            and last_for_token[(command.provider.value, command.token)] == index
        ):
            plan.upserts.append(_upsert(len(plan.upserts), session, command))
        elif command.device_id is None:
            plan.delete_bindings.append({"user_id": session.user_id, "session_id": session.id})
        else:
            plan.delete_devices.append(
                {"user_id": session.user_id, "device_id": command.device_id}
            )

    locks = {_user_lock_key(session.user_id) for session, _ in writes}
    for (provider, token), index in last_for_token.items():
        locks.add(lock_key("token", provider, token))
        session, command = writes[index]
        kept = index in final_indexes
        plan.release_tokens.append(
            {
                "provider": provider,
                "token": token,
                "keep_user": session.user_id if kept else None,
                "keep_device": command.device_id if kept else None,
                "keep_session": session.id if kept and command.device_id is None else None,
            }
        )

    plan.session_ids = sorted({session.id for session, _ in writes})
    plan.lock_keys = sorted(locks)
    return plan
