"""Marshmallow fields and the turn of a ValidationError into the gateway's InvalidParameters."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence, Set
from typing import Any
from urllib.parse import parse_qsl

import orjson
from aiohttp import web
from aiohttp.web_protocol import RequestPayloadError
from marshmallow import Schema, ValidationError, fields

from gateway.errors import InvalidParameters, MalformedRequest, Problem

REQUIRED = "is required"

# Where a surface puts the session it read from the request, beside the
# caller's parameters, so the schema's post_load can build a whole command.
# Surfaces overwrite it, so a caller cannot supply it.
SESSION_KEY = "\x00session"

_MESSAGES: dict[str, str | list[Any] | dict[Any, Any]] = {
    "required": REQUIRED,
    "null": "must not be null",
    "invalid": "must be a string",
    "invalid_utf8": "must be valid UTF-8",
}

_JSON_OBJECT_MESSAGES = {**_MESSAGES, "type": "must be a JSON object"}


def one_of(choices: Iterable[str]) -> Callable[[str], str]:
    """A Text check admitting only ``choices``, naming them all when it refuses."""
    allowed = tuple(choices)
    refusal = "must be one of: " + ", ".join(allowed)

    def check(value: str) -> str:
        if value not in allowed:
            raise ValueError(refusal)
        return value

    return check


class Text(fields.String):
    """A string checked and normalised by one of gateway.validation's functions."""

    default_error_messages = _MESSAGES

    def __init__(self, check: Callable[[str], str] | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._check = check

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> str:
        text = super()._deserialize(value, attr, data, **kwargs)
        if self._check is None:
            return text
        try:
            return self._check(text)
        except ValueError as exc:
            raise ValidationError(str(exc)) from None


class JsonObject(fields.Nested):
    """A nested object, also accepted as its JSON text (the form and query-string forms)."""

    default_error_messages = _JSON_OBJECT_MESSAGES

    def _deserialize(
        self,
        value: Any,
        attr: str | None,
        data: Mapping[str, Any] | None,
        partial: bool | Sequence[str] | Set[str] | None = None,
        **kwargs: Any,
    ) -> Any:
        if isinstance(value, str | bytes):
            try:
                value = orjson.loads(value)
            except orjson.JSONDecodeError:
                raise self.make_error("type") from None
        if not isinstance(value, Mapping):
            raise self.make_error("type")
        return super()._deserialize(value, attr, data, partial, **kwargs)


def _flatten(messages: Any, prefix: str = "") -> list[Problem]:
    if isinstance(messages, Mapping):
        problems: list[Problem] = []
        for name, inner in messages.items():
            problems.extend(_flatten(inner, f"{prefix}{name}."))
        return problems
    parameter = prefix[:-1]
    texts = messages if isinstance(messages, list) else [messages]
    return [Problem(parameter, str(text), missing=text == REQUIRED) for text in texts]


def load(schema: Schema, data: Mapping[str, Any]) -> Any:
    """Validate ``data`` into the schema's command, or raise InvalidParameters."""
    try:
        return schema.load(data)
    except ValidationError as exc:
        raise InvalidParameters(_flatten(exc.messages)) from None


async def read_body(request: web.Request) -> bytes:
    """The request body; one its Content-Encoding cannot undo is the caller's error."""
    try:
        return await request.read()
    except RequestPayloadError:
        raise MalformedRequest("the body does not match its Content-Encoding") from None


# A form or query string is percent-encoded ASCII; these are the charsets
# that can honestly be declared for it.
_FORM_CHARSETS = {"", "utf-8", "utf8", "us-ascii", "ascii"}


def decode_pairs(encoded: bytes | str, charset: str | None = None) -> list[tuple[str, str]]:
    """Name/value pairs of a query string or form body, decoded strictly.

    An escape that is not UTF-8 (``%FF``) is refused rather than replaced with
    U+FFFD, which would store a token nobody sent.
    """
    if (charset or "").lower() not in _FORM_CHARSETS:
        raise MalformedRequest(f"charset {charset!r} is not supported; send UTF-8")
    try:
        text = encoded.decode("utf-8") if isinstance(encoded, bytes) else encoded
        return parse_qsl(text, keep_blank_values=True, encoding="utf-8", errors="strict")
    except (UnicodeDecodeError, ValueError):
        raise MalformedRequest("the parameters are not valid percent-encoded UTF-8") from None

