"""Decides what a worker answers about itself: /metrics (its processes added up), /health (alive) and /ready (assigned, restored, not stuck).

On the worker's web server (ENGAGE_HTTP_PORT, bound to ENGAGE_HTTP_BIND), without a token: they tell
nothing of any customer. /ready answers 503 with the reasons until every stage has its partitions
assigned and its tables restored, and again whenever a partition the worker holds has had records
to read without moving on for ENGAGE_STUCK_AFTER_S (the stuck consumer that Faust users report,
a stage stuck on one record, a hung process): a probe finds it, not a person.
"""
from __future__ import annotations

import asyncio
import json

from streams import metrics


def register(engine) -> None:
    app, settings = engine.app, engine.settings

    @app.page("/metrics")
    async def metrics_page(web, request):
        body, content_type = await asyncio.get_running_loop().run_in_executor(None, metrics.exposition)
        return web.bytes(body, content_type=content_type.split(";")[0], headers={"Cache-Control": "no-store"})

    @app.page("/health")
    async def health_page(web, request):
        return web.json({"alive": True})

    @app.page("/ready")
    async def ready_page(web, request):
        found = await asyncio.get_running_loop().run_in_executor(None, metrics.check_ready, settings.stuck_after_s)
        body = {"ready": found.ready, "stages": found.stages, "reasons": found.reasons}
        return web.bytes(json.dumps(body).encode(), content_type="application/json",
                         status=200 if found.ready else 503, headers={"Cache-Control": "no-store"})
