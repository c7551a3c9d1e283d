"""A throwaway certificate authority for the fake push services (trustme).

Its certificate goes in a file that the gateway is given as
GATEWAY_PUSH_CA_FILE, so every test that reaches a fake over TLS exercises
the setting that adds a CA to the system's.
"""

from __future__ import annotations

import ssl
from pathlib import Path

import trustme


class TestCA:
    __test__ = False  # not a pytest class

    def __init__(self, directory: Path) -> None:
        self._ca = trustme.CA()
        self.ca_file = directory / "push-ca.pem"
        self._ca.cert_pem.write_to_path(str(self.ca_file))

    def server_context(self, *names: str, alpn: tuple[str, ...] = ("http/1.1",)) -> ssl.SSLContext:
        """A server-side context with a certificate for ``names``."""
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self._ca.issue_cert(*names).configure_cert(context)
        context.set_alpn_protocols(list(alpn))
        return context
