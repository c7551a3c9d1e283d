"""Pins the syntax rules in gateway.validation."""

from __future__ import annotations

import base64
import sys
import unicodedata

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.validation import (
    DEFAULT_CATEGORIES,
    MAX_ID_LENGTH,
    category_filter_admits,
    check_fcm_token,
    check_identifier,
    check_webpush_auth,
    check_webpush_p256dh,
    normalize_apns_token,
    normalize_category_filter,
    normalize_webpush_endpoint,
)

APNS_TOKEN = "740F4707BEBCF74F9B7C25D48E3358945F6AA01DA5DDB387462C7EAF61BB78AD"
LAYER_TOKEN = "105ebe3fcb7e93efda22257caaf5b9c465043f6d0b2abf3bc8ae7c939655e949"
ENDPOINT = "https://fcm.googleapis.com/fcm/send/f6kicrBn7S0:APA91b"


def b64url(raw: bytes, *, pad: bool = False) -> str:
    text = base64.urlsafe_b64encode(raw).decode("ascii")
    return text if pad else text.rstrip("=")


def real_p256_point() -> bytes:
    key = ec.generate_private_key(ec.SECP256R1()).public_key()
    return key.public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
    )


# --- identifiers -----------------------------------------------------------


def test_identifier_is_returned_unchanged() -> None:
    assert check_identifier("device-42") == "device-42"
    assert check_identifier("com.example.app") == "com.example.app"


def test_identifier_is_not_stripped() -> None:
    assert check_identifier(" padded ") == " padded "


def test_identifier_accepts_non_ascii() -> None:
    assert check_identifier("пользователь-😀") == "пользователь-😀"


def test_empty_identifier_is_rejected() -> None:
    with pytest.raises(ValueError, match="must not be empty"):
        check_identifier("")


def test_identifier_at_max_length_passes() -> None:
    assert check_identifier("x" * MAX_ID_LENGTH) == "x" * MAX_ID_LENGTH


def test_identifier_over_max_length_is_rejected() -> None:
    with pytest.raises(ValueError, match="at most 255 characters"):
        check_identifier("x" * (MAX_ID_LENGTH + 1))


def test_identifier_honours_custom_max_length() -> None:
    assert check_identifier("abcd", max_length=4) == "abcd"
    with pytest.raises(ValueError, match="at most 4 characters"):
        check_identifier("abcde", max_length=4)


@pytest.mark.parametrize("bad", ["a\x00b", "a\tb", "a\nb", "a\x7fb", "a\x85b", "\x1b[31m"])
def test_identifier_with_control_character_is_rejected(bad: str) -> None:
    with pytest.raises(ValueError, match="control characters"):
        check_identifier(bad)


def test_identifier_refuses_exactly_the_unicode_control_category() -> None:
    # The check is a character class; this holds it to Unicode's own Cc list.
    for code in range(sys.maxunicode + 1):
        if 0xD800 <= code <= 0xDFFF:
            continue  # lone surrogates fail earlier, with their own message
        char = chr(code)
        is_control = unicodedata.category(char) == "Cc"
        try:
            check_identifier(f"a{char}b")
        except ValueError as exc:
            assert is_control and "control characters" in str(exc), hex(code)
        else:
            assert not is_control, hex(code)


@pytest.mark.parametrize("bad", ["a\udc80b", "\ud800", "x\udfff"])
def test_identifier_with_lone_surrogate_is_rejected(bad: str) -> None:
    with pytest.raises(ValueError, match="surrogates"):
        check_identifier(bad)


def test_error_message_does_not_echo_input() -> None:
    secret = "s" * 300
    with pytest.raises(ValueError) as info:
        check_identifier(secret)
    assert secret not in str(info.value)


# --- APNs ------------------------------------------------------------------


def test_apns_token_is_lowercased() -> None:
    assert normalize_apns_token(APNS_TOKEN) == APNS_TOKEN.lower()


def test_apns_token_length_is_not_hard_coded_to_64() -> None:
    assert normalize_apns_token("ab" * 16) == "ab" * 16
    assert normalize_apns_token("ab" * 100) == "ab" * 100
    assert normalize_apns_token("ab" * 50) == "ab" * 50


@pytest.mark.parametrize("length", [0, 30, 202])
def test_apns_token_out_of_length_bounds_is_rejected(length: int) -> None:
    with pytest.raises(ValueError, match="between 32 and 200"):
        normalize_apns_token("a" * length)


@pytest.mark.parametrize(
    "bad", ["g" * 64, "0x" + "a" * 62, "a" * 63 + " ", "<" + "a" * 62 + ">", "a" * 63 + "٣"]
)
def test_apns_token_with_non_hex_is_rejected(bad: str) -> None:
    with pytest.raises(ValueError, match="must be hexadecimal"):
        normalize_apns_token(bad)


def test_apns_token_of_odd_length_is_rejected() -> None:
    with pytest.raises(ValueError, match="even number"):
        normalize_apns_token("a" * 65)


# --- FCM -------------------------------------------------------------------


@pytest.mark.parametrize(
    "token",
    [
        "f4be7b9d04da2ce1af111b",
        LAYER_TOKEN,
        "dGVzdA:APA91bH-Ab_cd",
        "a" * 8,
        "a" * 4096,
    ],
)
def test_fcm_token_is_accepted(token: str) -> None:
    assert check_fcm_token(token) == token


@pytest.mark.parametrize("length", [0, 7, 4097])
def test_fcm_token_out_of_length_bounds_is_rejected(length: int) -> None:
    with pytest.raises(ValueError, match="between 8 and 4096"):
        check_fcm_token("a" * length)


@pytest.mark.parametrize(
    "bad", ["abcdefgh+", "abcdefgh/", "abcd efgh", "abcdefgh=", "abcdefgh\x00", "abcdéfgh"]
)
def test_fcm_token_with_foreign_character_is_rejected(bad: str) -> None:
    with pytest.raises(ValueError, match="only letters, digits"):
        check_fcm_token(bad)


# --- Web Push endpoint -----------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        ENDPOINT,
        "https://updates.push.services.mozilla.com/wpush/v2/gAAAAABc?x=1",
        "https://push.example:8443/p/abc",
    ],
)
def test_webpush_endpoint_is_accepted(url: str) -> None:
    assert normalize_webpush_endpoint(url) == url


def test_webpush_endpoint_scheme_is_accepted_in_any_case_and_stored_lowercase() -> None:
    assert normalize_webpush_endpoint("HTTPS://push.example/p") == "https://push.example/p"


@pytest.mark.parametrize(
    "url",
    ["http://push.example/p", "ftp://push.example/p", "//push.example/p", "push.example/p"],
)
def test_webpush_endpoint_must_be_https(url: str) -> None:
    with pytest.raises(ValueError, match="https URL"):
        normalize_webpush_endpoint(url)


@pytest.mark.parametrize("url", ["https:///path", "https://", "https://:443/p"])
def test_webpush_endpoint_without_host_is_rejected(url: str) -> None:
    with pytest.raises(ValueError, match="must have a host"):
        normalize_webpush_endpoint(url)


@pytest.mark.parametrize("url", ["https://user:pass@push.example/p", "https://user@push.example/p"])
def test_webpush_endpoint_with_userinfo_is_rejected(url: str) -> None:
    with pytest.raises(ValueError, match="credentials"):
        normalize_webpush_endpoint(url)


@pytest.mark.parametrize(
    "url",
    [
        "https://push.example/a b",
        "https://push.example/a\tb",
        "https://push.ex\nample/p",
        "https://push.example/p\x00",
        " https://push.example/p",
    ],
)
def test_webpush_endpoint_with_whitespace_or_control_is_rejected(url: str) -> None:
    with pytest.raises(ValueError, match="whitespace or control"):
        normalize_webpush_endpoint(url)


def test_webpush_endpoint_over_2048_characters_is_rejected() -> None:
    base = "https://push.example/"
    assert normalize_webpush_endpoint(base + "a" * (2048 - len(base)))
    with pytest.raises(ValueError, match="at most 2048"):
        normalize_webpush_endpoint(base + "a" * (2049 - len(base)))


@pytest.mark.parametrize("url", ["https://push.example:abc/p", "https://[::1/p"])
def test_webpush_endpoint_malformed_is_rejected(url: str) -> None:
    with pytest.raises(ValueError, match="valid URL"):
        normalize_webpush_endpoint(url)


def test_webpush_endpoint_with_surrogate_is_rejected() -> None:
    with pytest.raises(ValueError, match="surrogates"):
        normalize_webpush_endpoint("https://push.example/\udc80")


# --- Web Push p256dh -------------------------------------------------------


def test_p256dh_real_key_is_accepted_unpadded() -> None:
    raw = real_p256_point()
    assert check_webpush_p256dh(b64url(raw)) == b64url(raw)


def test_p256dh_padding_is_accepted_and_stripped() -> None:
    raw = real_p256_point()
    padded = b64url(raw, pad=True)
    assert padded.endswith("=")
    assert check_webpush_p256dh(padded) == b64url(raw)


def test_p256dh_off_curve_point_is_rejected() -> None:
    off_curve = b"\x04" + (1).to_bytes(32, "big") + (1).to_bytes(32, "big")
    with pytest.raises(ValueError, match="P-256 curve"):
        check_webpush_p256dh(b64url(off_curve))


def test_p256dh_compressed_point_is_rejected() -> None:
    key = ec.generate_private_key(ec.SECP256R1()).public_key()
    compressed = key.public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.CompressedPoint
    )
    with pytest.raises(ValueError, match="65 bytes"):
        check_webpush_p256dh(b64url(compressed))


def test_p256dh_wrong_prefix_byte_is_rejected() -> None:
    raw = b"\x02" + real_p256_point()[1:]
    with pytest.raises(ValueError, match="first byte 0x04"):
        check_webpush_p256dh(b64url(raw))


@pytest.mark.parametrize("size", [0, 16, 64, 66, 200])
def test_p256dh_wrong_length_is_rejected(size: int) -> None:
    with pytest.raises(ValueError, match="65 bytes"):
        check_webpush_p256dh(b64url(b"\x04" * size))


def test_p256dh_standard_base64_alphabet_is_rejected() -> None:
    # Find a key whose encoding uses '-' or '_', then swap to the standard alphabet.
    while True:
        encoded = b64url(real_p256_point())
        if "-" in encoded or "_" in encoded:
            break
    standard = encoded.replace("-", "+").replace("_", "/")
    with pytest.raises(ValueError, match="not '\\+' and '/'"):
        check_webpush_p256dh(standard)


def test_p256dh_garbage_is_rejected() -> None:
    with pytest.raises(ValueError, match="base64url"):
        check_webpush_p256dh("not base64!")


# --- Web Push auth ---------------------------------------------------------


def test_auth_secret_is_accepted_and_canonicalised() -> None:
    raw = bytes(range(16))
    assert check_webpush_auth(b64url(raw)) == b64url(raw)
    assert check_webpush_auth(b64url(raw, pad=True)) == b64url(raw)


@pytest.mark.parametrize("size", [0, 15, 17, 32])
def test_auth_secret_of_wrong_length_is_rejected(size: int) -> None:
    with pytest.raises(ValueError, match="16 bytes"):
        check_webpush_auth(b64url(b"\xfb" * size))


@pytest.mark.parametrize("bad", ["+/+/+/+/+/+/+/+/+/+/+w", "AAAAAAAAAAAAAAAAAAAAA+"])
def test_auth_secret_standard_base64_alphabet_is_rejected(bad: str) -> None:
    with pytest.raises(ValueError, match="base64url"):
        check_webpush_auth(bad)


@pytest.mark.parametrize("bad", ["AAAAAAAAAAAAAAAAAAAAAA=", "AAAAAAAAAAAAAAAAAAAAA=="])
def test_auth_secret_with_wrong_padding_is_rejected(bad: str) -> None:
    with pytest.raises(ValueError, match="padding"):
        check_webpush_auth(bad)


# --- category filter -------------------------------------------------------


def test_default_categories_are_the_six_navixy_ones() -> None:
    assert (
        frozenset(
            {
                "chat_message",
                "history_rule",
                "history_task",
                "history_info",
                "history_service_task",
                "history_work_status",
            }
        )
        == DEFAULT_CATEGORIES
    )


@pytest.mark.parametrize(
    ("raw", "normalized"),
    [
        ("*", "*"),
        (" * ", "*"),
        ("history_task,chat_message", "chat_message,history_task"),
        (" history_task , chat_message ", "chat_message,history_task"),
        ("chat_message,chat_message", "chat_message"),
        ("-history_rule,chat_message", "-chat_message,history_rule"),
        (" - history_rule , chat_message", "-chat_message,history_rule"),
        ("-chat_message", "-chat_message"),
    ],
)
def test_category_filter_is_normalised(raw: str, normalized: str) -> None:
    assert normalize_category_filter(raw) == normalized


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ("", "must not be empty"),
        ("   ", "must not be empty"),
        ("chat_message,,history_rule", "empty items"),
        ("chat_message,", "empty items"),
        (",chat_message", "empty items"),
        ("-", "empty items"),
        ("-*", "must stand alone"),
        ("*,chat_message", "must stand alone"),
        ("chat_message,-history_rule", "may only prefix the whole list"),
        ("--chat_message", "may only prefix the whole list"),
        ("foo", "unknown category 'foo'"),
        ("chat_message,bar", "unknown category 'bar'"),
        ("Chat_Message", "unknown category"),
    ],
)
def test_malformed_category_filter_is_rejected(raw: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        normalize_category_filter(raw)


def test_category_filter_uses_given_known_set() -> None:
    assert normalize_category_filter("b,a", known=frozenset({"a", "b"})) == "a,b"
    with pytest.raises(ValueError, match="unknown category 'chat_message'"):
        normalize_category_filter("chat_message", known=frozenset({"a"}))


def test_category_filter_listing_all_is_not_collapsed_to_star() -> None:
    every = ",".join(sorted(DEFAULT_CATEGORIES))
    assert normalize_category_filter(every) == every


def test_unknown_category_message_is_truncated() -> None:
    with pytest.raises(ValueError) as info:
        normalize_category_filter("z" * 500)
    assert "z" * 500 not in str(info.value)


def test_star_admits_everything() -> None:
    assert category_filter_admits("*", "chat_message")
    assert category_filter_admits("*", "anything_new")


def test_inclusion_filter_admits_only_listed() -> None:
    assert category_filter_admits("chat_message,history_rule", "history_rule")
    assert not category_filter_admits("chat_message,history_rule", "history_task")


def test_exclusion_filter_admits_all_but_listed() -> None:
    assert not category_filter_admits("-chat_message,history_rule", "chat_message")
    assert category_filter_admits("-chat_message,history_rule", "history_task")


CATEGORY_LIST = sorted(DEFAULT_CATEGORIES)
spaces = st.text(alphabet=" ", max_size=2)


@st.composite
def category_filters(draw: st.DrawFn) -> tuple[str, bool | None, frozenset[str]]:
    """A valid raw filter plus its meaning: (text, exclude or None for '*', names)."""
    if draw(st.booleans()) and draw(st.booleans()):
        return draw(spaces) + "*" + draw(spaces), None, frozenset()
    items = draw(st.lists(st.sampled_from(CATEGORY_LIST), min_size=1, max_size=8))
    exclude = draw(st.booleans())
    body = ",".join(draw(spaces) + item + draw(spaces) for item in items)
    prefix = draw(spaces) + "-" + draw(spaces) if exclude else draw(spaces)
    return prefix + body, exclude, frozenset(items)


@settings(database=None, deadline=None)
@given(category_filters(), st.sampled_from([*CATEGORY_LIST, "not_a_category"]))
def test_category_filter_normalisation_is_idempotent_and_preserves_meaning(
    case: tuple[str, bool | None, frozenset[str]], category: str
) -> None:
    raw, exclude, names = case
    normalized = normalize_category_filter(raw)
    assert normalize_category_filter(normalized) == normalized
    expected = True if exclude is None else (category in names) != exclude
    assert category_filter_admits(raw, category) == expected
    assert category_filter_admits(normalized, category) == expected


@settings(database=None, deadline=None)
@given(
    st.lists(st.sampled_from([*CATEGORY_LIST, ",", "-", "*", " ", "x"]), max_size=8).map("".join)
)
def test_category_filter_arbitrary_input_is_rejected_or_idempotent(raw: str) -> None:
    try:
        normalized = normalize_category_filter(raw)
    except ValueError:
        return
    assert normalize_category_filter(normalized) == normalized
    for category in CATEGORY_LIST:
        assert category_filter_admits(raw, category) == category_filter_admits(normalized, category)
