"""Every aiohttp AppKey of the gateway, in one place."""

from __future__ import annotations

from aiohttp import web

from gateway.config import Settings
from gateway.executor import Executor
from gateway.ratelimit import RateLimiter
from gateway.store import Store

SETTINGS = web.AppKey("settings", Settings)
EXECUTOR = web.AppKey("executor", Executor)
RATE_LIMITER = web.AppKey("rate_limiter", RateLimiter)
# The internal API's store, on its own pool (see gateway.app.database_ctx).
INTERNAL_STORE = web.AppKey("internal_store", Store)
