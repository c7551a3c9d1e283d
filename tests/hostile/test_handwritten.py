"""The hand-written adversarial cases of cases.py, and every valid command in every form."""

from __future__ import annotations

import pytest

from tests.hostile.cases import ALICE, CASES, android, layer_apns, layer_request, navixy_request
from tests.hostile.harness import BIND, DELETE, FCM, LOGOUT, UNPARSEABLE_FIELD_NAMES_ARE_NOT_ERRORS
from tests.hostile.oracle import exchange, layer_error, navixy_error
from tests.hostile.specs import HashRef

pytestmark = UNPARSEABLE_FIELD_NAMES_ARE_NOT_ERRORS


@pytest.mark.parametrize("case", list(CASES.values()), ids=list(CASES))
def test_adversarial_case(gateway, case):
    world = gateway.world()
    request, intent = case.build(world)
    answer = exchange(gateway, world, request, intent)
    expect = case.expect
    if expect[0] == "ok":
        assert answer.status in {200, 202, 204}, answer.describe()
    elif expect[0] == "navixy":
        if request.method != "HEAD":
            assert navixy_error(answer)["status"]["code"] == expect[1], answer.describe()
    else:
        assert answer.status == expect[1], answer.describe()
        if request.method != "HEAD":
            assert layer_error(answer)["id"] == expect[2], answer.describe()


def test_valid_commands_in_every_form_change_the_database_as_they_say(gateway):
    """The oracle's other half: each valid command, judged by the same checks as the fuzz."""
    for prefix in ("/v2", ""):
        for slash in ("", "/"):
            for form in ("json", "form", "multipart", "query"):
                for action, params in [
                    (
                        BIND,
                        android(
                            token="tok-" + form + prefix.replace("/", "") + slash.replace("/", "s")
                        ),
                    ),
                    (DELETE, (("hash", ALICE),)),
                    (LOGOUT, (("hash", HashRef("bob", "upper")),)),
                ]:
                    world = gateway.world()
                    request, intent = navixy_request(
                        action, form, params, prefix=prefix, slash=slash
                    )(world)
                    before = gateway.pristine()
                    answer = exchange(gateway, world, request, intent)
                    assert answer.status == 200, answer.describe()
                    assert gateway.snapshot() != before
    for route, fields, device in [
        ("register", layer_apns(device_id="seed-device"), None),
        ("register", (("token", FCM), ("type", "gcm"), ("device_id", "new")), None),
        ("unregister", (), "dir/device"),
        ("unregister", (), "日本語 device"),
        ("end_session", (), ALICE),
    ]:
        world = gateway.world()
        request, intent = layer_request(route, fields, device=device)(world)
        answer = exchange(gateway, world, request, intent)
        assert answer.status in {202, 204}, answer.describe()
