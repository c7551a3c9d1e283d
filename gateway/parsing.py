"""Marshmallow fields and the turn of a ValidationError into the gateway's InvalidParameters."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping, Sequence, Set
from typing import Any
from urllib.parse import parse_qsl

import orjson
from aiohttp import web
from aiohttp.web_protocol import RequestPayloadError
from marshmallow import Schema, ValidationError, fields
from marshmallow.validate import OneOf

from gateway import validation
from gateway.errors import InvalidParameters, MalformedRequest, Problem, RequestTooLarge

REQUIRED = "is required"
REPEATED = "is given more than once"

_MESSAGES: dict[str, str | list[Any] | dict[Any, Any]] = {
    "required": REQUIRED,
    "null": "must not be null",
    "invalid": "must be a string",
    "invalid_utf8": "must be valid UTF-8",
}

_JSON_OBJECT_MESSAGES = {**_MESSAGES, "type": "must be a JSON object"}


def one_of(choices: Iterable[str]) -> OneOf:
    """A validator admitting only ``choices``, naming them all when it refuses."""
    return OneOf(tuple(choices), error="must be one of: {choices}")


def rule(check: Callable[[str], object]) -> Callable[[str], None]:
    """One of gateway.validation's checks that only refuses, as a marshmallow validator."""

    def validate(value: str) -> None:
        try:
            check(value)
        except ValueError as exc:
            raise ValidationError(str(exc)) from None

    return validate


class Text(fields.String):
    """marshmallow's String, with the gateway's wording of its refusals."""

    default_error_messages = _MESSAGES


def identifier(*, metadata: dict[str, Any] | None = None, **kwargs: Any) -> Text:
    """A field holding an opaque id: validation.check_identifier's rule, stated for OpenAPI too."""
    return Text(
        validate=rule(validation.check_identifier),
        metadata={**validation.IDENTIFIER_JSON_SCHEMA, **(metadata or {})},
        **kwargs,
    )


class Normalized(Text):
    """A string rewritten by one of gateway.validation's functions (lowercased, re-encoded).

    Only for a check that rewrites the value: one that only refuses is a
    validator on a Text (``validate=rule(check)``).
    """

    def __init__(self, normalize: Callable[[str], str], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._normalize = normalize

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> str:
        text = super()._deserialize(value, attr, data, **kwargs)
        try:
            return self._normalize(text)
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
                parsed = orjson.loads(value)
            except orjson.JSONDecodeError:
                raise self.make_error("type") from None
            # orjson has vouched for the text, its UTF-8 included.
            repeated = repeated_key(value if isinstance(value, str) else value.decode())
            if repeated is not None:
                raise ValidationError({repeated: [REPEATED]})
            value = parsed
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


async def read_body(request: web.Request, limit: int | None = None) -> bytes:
    """The request body; one its Content-Encoding cannot undo is the caller's error.

    With ``limit``, read here up to that many bytes rather than with
    request.read(), which the app's client_max_size bounds (sized for the
    public dialects, far too small for a sender's audience).
    """
    try:
        if limit is None:
            return await request.read()
        if request.content_length is not None and request.content_length > limit:
            raise RequestTooLarge(f"the body must be at most {limit} bytes")
        body = bytearray()
        async for chunk in request.content.iter_chunked(64 * 1024):
            body += chunk
            if len(body) > limit:
                raise RequestTooLarge(f"the body must be at most {limit} bytes")
        return bytes(body)
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


# orjson keeps the last of a repeated key without a word, and no fast parser
# reports one; the standard library's C scanner, told to hand each object over
# as its pairs, can. It is only a check, run after orjson has parsed (and
# vouched for) the text, and costs a few microseconds on a registration's body.
class _Repeated(Exception):
    pass


def _refuse_repeats(pairs: list[tuple[str, Any]]) -> None:
    if len(pairs) != len(dict(pairs)):
        raise _Repeated


class _Object(dict[str, Any]):
    repeated: str | None = None


def _marked(pairs: list[tuple[str, Any]]) -> _Object:
    found = _Object()
    for name, value in pairs:
        if name in found and found.repeated is None:
            found.repeated = name
        found[name] = value
    return found


_CHECK = json.JSONDecoder(object_pairs_hook=_refuse_repeats)
_MARK = json.JSONDecoder(object_pairs_hook=_marked)


def repeated_key(text: str) -> str | None:
    """The dotted path of the first key an object of this valid JSON repeats, or None.

    Keys compare after unescaping ("hash" and "h\\u0061sh" are one key), as
    every JSON reader sees them.
    """
    try:
        _CHECK.decode(text)
    except _Repeated:
        pass
    except RecursionError:
        raise MalformedRequest("the body is nested too deeply") from None
    else:
        return None
    # Only for a body that repeats a key: parse again, keeping where.
    pending: list[tuple[str, Any]] = [("", _MARK.decode(text))]
    while pending:
        prefix, value = pending.pop(0)
        if isinstance(value, _Object):
            if value.repeated is not None:
                return prefix + value.repeated
            pending.extend((f"{prefix}{name}.", item) for name, item in value.items())
        elif isinstance(value, list):
            pending.extend((f"{prefix}{index}.", item) for index, item in enumerate(value))
    raise AssertionError("a repeated key was seen, then not found")


def json_object(raw: bytes) -> dict[str, Any]:
    """A body that must be one JSON object whose objects name each key once."""
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise MalformedRequest("the body is not valid JSON") from None
    if not isinstance(body, dict):
        raise MalformedRequest("the body must be a JSON object")
    repeated = repeated_key(raw.decode())
    if repeated is not None:
        raise InvalidParameters([Problem(repeated, REPEATED)])
    return body


async def read_json_object(request: web.Request, limit: int | None = None) -> dict[str, Any]:
    """The request body as one JSON object whose objects name each key once (see read_body)."""
    return json_object(await read_body(request, limit))
