"""Property-based: hostile requests of every shape, answered in dialect, changing only
what a valid command says."""

from __future__ import annotations

import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st

from tests.hostile.harness import (
    BIND,
    LAYER_ACCEPT,
    UNPARSEABLE_FIELD_NAMES_ARE_NOT_ERRORS,
    Intent,
    LiveGateway,
)
from tests.hostile.oracle import exchange, outcome
from tests.hostile.specs import HashRef, LayerSpec, NavixySpec
from tests.hostile.strategies import (
    FUZZ,
    generic_requests,
    layer_specs,
    navixy_specs,
    spoilers,
    valid_layer_fields,
    valid_navixy_params,
)

pytestmark = UNPARSEABLE_FIELD_NAMES_ARE_NOT_ERRORS


def _exchanged(gateway: LiveGateway, spec: NavixySpec | LayerSpec) -> tuple[str, str]:
    """The spec built against the world and sent: (what it meant to do, how it was answered)."""
    world = gateway.world()
    request, intent = spec.build(world)
    return intent.action, outcome(exchange(gateway, world, request, intent))


@settings(FUZZ, max_examples=800)
@given(spec=navixy_specs())
def test_navixy_answers_hostile_requests_in_dialect_and_changes_only_what_valid_commands_say(
    gateway, spec
):
    event("{}: {}".format(*_exchanged(gateway, spec)))


@settings(FUZZ, max_examples=600)
@given(spec=layer_specs())
def test_layer_answers_hostile_requests_in_dialect_and_changes_only_what_valid_commands_say(
    gateway, spec
):
    event("{}: {}".format(*_exchanged(gateway, spec)))


@settings(FUZZ, max_examples=300)
@given(request=generic_requests())
def test_any_request_at_all_gets_a_well_formed_answer_and_changes_nothing(gateway, request):
    world = gateway.world()
    event(outcome(exchange(gateway, world, request, Intent("none"))))


# One parameter spoilt, the rest valid: where a check missing from a surface shows (the
# stored row is checked against the syntax rules by the oracle).
NAVIXY_SPOILABLE = ["hash", "application", "token", "parameters", "category_filter"]
LAYER_SPOILABLE = ["token", "type", "device_id", "apns_bundle_id", "gcm_sender_id", "ios_version"]


@pytest.mark.parametrize("name", NAVIXY_SPOILABLE)
@settings(FUZZ, max_examples=70)
@given(
    base=valid_navixy_params(),
    form=st.sampled_from(["json", "form", "multipart", "query"]),
    value=spoilers,
)
def test_navixy_bind_with_one_parameter_spoilt(gateway, base, form, name, value):
    params = (*(pair for pair in base if pair[0] != name), (name, value))
    spec = NavixySpec(
        BIND, "/v2", "", form, "GET" if form == "query" else "POST", params, (), None, None, "none"
    )
    event(_exchanged(gateway, spec)[1])


@pytest.mark.parametrize("name", LAYER_SPOILABLE)
@settings(FUZZ, max_examples=60)
@given(fields=valid_layer_fields(), value=spoilers)
def test_layer_register_with_one_field_spoilt(gateway, fields, name, value):
    fields = {**fields, name: value}
    spec = LayerSpec(
        "register",
        "POST",
        None,
        tuple(fields.items()),
        LAYER_ACCEPT,
        ('Layer session-token="{h}"', HashRef("alice")),
        None,
        "none",
    )
    event(_exchanged(gateway, spec)[1])
