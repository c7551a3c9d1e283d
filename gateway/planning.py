"""The net effect of a batch of writes, worked out before any SQL runs (no database here)."""

from __future__ import annotations

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
    """The net effect of a batch of writes, equal to running them one at a time in order."""

    delete_devices: list[tuple[str, str]] = field(default_factory=list)
    # (user, session) of each Navixy binding to remove.
    delete_bindings: list[tuple[str, int]] = field(default_factory=list)
    # (provider, token, keep_user, keep_device, keep_session) per token registered.
    release_tokens: list[tuple[str, str, str | None, str | None, int | None]] = field(
        default_factory=list
    )
    # In arrival order: the per-user limit evicts the least recently registered.
    upserts: list[tuple[ResolvedSession, RegisterToken]] = field(default_factory=list)
    lock_keys: list[int] = field(default_factory=list)
    session_ids: list[int] = field(default_factory=list)

    def document(self) -> str:
        """The plan as apply_registration_writes() in schema.sql reads it."""
        return orjson.dumps(
            {
                "sessions": self.session_ids,
                "locks": self.lock_keys,
                "delete_devices": [
                    {"user_id": user, "device_id": device} for user, device in self.delete_devices
                ],
                "delete_bindings": [
                    {"user_id": user, "session_id": session_id}
                    for user, session_id in self.delete_bindings
                ],
                "release": [
                    dict(zip(_RELEASE_FIELDS, release, strict=True))
                    for release in self.release_tokens
                ],
                "upserts": [
                    _upsert(position, session, command)
                    for position, (session, command) in enumerate(self.upserts)
                ],
                "max_per_user": MAX_REGISTRATIONS_PER_USER,
            }
        ).decode()


_RELEASE_FIELDS = ("provider", "token", "keep_user", "keep_device", "keep_session")


def _upsert(position: int, session: ResolvedSession, command: RegisterToken) -> dict[str, Any]:
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
        "webpush_p256dh": command.webpush.p256dh if command.webpush else None,
        "webpush_auth": command.webpush.auth if command.webpush else None,
        "category_filter": command.category_filter,
    }


RegistrationKey = tuple[str, str, str | int]


def _key(session: ResolvedSession, command: WriteCommand) -> RegistrationKey:
    if command.device_id is None:
        return (session.user_id, "session", session.id)
    return (session.user_id, "device", command.device_id)


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
            plan.upserts.append((session, command))
        elif command.device_id is None:
            plan.delete_bindings.append((session.user_id, session.id))
        else:
            plan.delete_devices.append((session.user_id, command.device_id))

    for (provider, token), index in last_for_token.items():
        session, command = writes[index]
        if index in final_indexes:
            keep: tuple[str | None, str | None, int | None]
            if command.device_id is None:
                keep = (session.user_id, None, session.id)
            else:
                keep = (session.user_id, command.device_id, None)
        else:
            keep = (None, None, None)
        plan.release_tokens.append((provider, token, *keep))

    plan.session_ids = sorted({session.id for session, _ in writes})
    plan.lock_keys = sorted(
        {lock_key("user", session.user_id) for session, _ in writes}
        | {lock_key("token", provider, token) for provider, token in last_for_token}
    )
    return plan
