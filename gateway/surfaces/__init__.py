"""The registry of surfaces: which paths each dialect owns, and how it writes an error.

The error middleware, the protocol's own refusals and the metrics ask here,
and nowhere else, which dialect a request speaks.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from aiohttp import web

from gateway.errors import GatewayError
from gateway.surfaces import internal, layer, navixy


@dataclass(frozen=True, slots=True)
class Surface:
    """A dialect: its name (the metrics' label), the paths it owns, its error renderer."""

    name: str
    owns: Callable[[str], bool]
    render_error: Callable[[GatewayError], web.Response]


def _layer_owns(path: str) -> bool:
    return path.startswith(LAYER_PREFIXES)


# The paths the metrics label as Layer's; Layer also answers every error no
# other surface owns, as the dialect of the root.
LAYER_PREFIXES = ("/push_tokens", "/sessions/")

INTERNAL = Surface("internal", internal.owns, internal.render_error)
NAVIXY = Surface("navixy", navixy.owns, navixy.render_error)
LAYER = Surface("layer", _layer_owns, layer.render_error)

# First owner wins.
SURFACES = (NAVIXY, LAYER, INTERNAL)

# The label of a path no surface owns (health, metrics, the API document).
NO_DIALECT = "other"


def surface_at(path: str) -> Surface | None:
    """The surface that owns ``path``, or None."""
    for surface in SURFACES:
        if surface.owns(path):
            return surface
    return None


def dialect_at(path: str) -> str:
    """The metrics' dialect label for ``path``."""
    surface = surface_at(path)
    return surface.name if surface is not None else NO_DIALECT


def render_error(path: str, exc: GatewayError) -> web.Response:
    """``exc`` in the dialect of ``path``; Layer's where no surface owns it."""
    return (surface_at(path) or LAYER).render_error(exc)
