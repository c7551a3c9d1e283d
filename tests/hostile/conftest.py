"""The one live gateway all the hostile tests share, and its figures in the summary."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.hostile.harness import FIGURES, LiveGateway


@pytest.fixture(scope="package")
def gateway(request: pytest.FixtureRequest, database_url: str) -> Iterator[LiveGateway]:
    with LiveGateway(database_url) as live:
        yield live
    FIGURES.attach(request.config, "hostile-figures")
    FIGURES.add(
        "hostile requests through LiveGateway.send",
        requests_sent=sum(live.answers.values()),
        answers=dict(sorted(live.answers.items())),
        five_xx_seen=live.answers["5xx"],
    )
