"""Every aiohttp AppKey of the gateway, in one place."""

from __future__ import annotations

from aiohttp import web

from gateway.config import Settings
from gateway.executor import Executor
from gateway.probes import DatabaseProbe
from gateway.ratelimit import RateLimiter
from gateway.store import Store

SETTINGS = web.AppKey("settings", Settings)
EXECUTOR = web.AppKey("executor", Executor)
RATE_LIMITER = web.AppKey("rate_limiter", RateLimiter)
# The internal API's store, on its own pool (see gateway.lifecycle.database_ctx).
INTERNAL_STORE = web.AppKey("internal_store", Store)
# What health and metrics see of the public store and of the internal one.
DATABASE_PROBE = web.AppKey("database_probe", DatabaseProbe)
INTERNAL_PROBE = web.AppKey("internal_probe", DatabaseProbe)
