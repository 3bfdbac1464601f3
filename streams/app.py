"""Decides how the worker's Faust app is built: the broker it joins, its web server (the context service only), no tables."""
from __future__ import annotations

from dataclasses import dataclass

import faust

from streams import clients
from streams.settings import Settings


@dataclass
class Engine:
    """The Faust app (the context service's web server, and the stages' processes kept running) and what they share."""

    settings: Settings
    app: faust.App
    codec: object
    detection: object = None  # the service running detection's process (streams/detection/agent.py), in a worker
    data: object = None  # the one running the data stage (streams/data/agent.py)
    decision: object = None  # the one running the decision stage (streams/decision/agent.py)
    after_decision: object = None  # the one running delivery, attribution and learning (streams/after_decision.py)


def build_app(settings: Settings) -> Engine:
    app = faust.App(
        settings.app_id,
        **clients.faust_broker(settings),  # brokers and SASL/TLS credentials, as every other client
        # no tables and no agents: every stage runs, with its state, in a process of its own (streams/runtime/)
        store="memory://",
        datadir=str(settings.data_dir),
        topic_partitions=settings.partitions,
        topic_replication_factor=settings.replication,
        broker_session_timeout=settings.session_timeout_ms / 1000.0,
        # a third of the session, as Kafka advises (Faust's default is a fixed 3 s)
        broker_heartbeat_interval=min(3.0, settings.session_timeout_ms / 3000.0),
        producer_acks=-1,
        # the context service (streams/data/context.py) only: Faust's own pages would show table
        # contents to anyone (/table) or describe the cluster (/router, /graph, /stats)
        web_enabled=settings.http_port > 0,
        web_port=settings.http_port or 6066,
        web_bind=settings.http_bind,
        canonical_url=settings.advertised_url,
        web_tables_enabled=False,
        web_router_enabled=False,
        web_graph_enabled=False,
        web_stats_enabled=False,
    )
    return Engine(settings=settings, app=app, codec=clients.codec(settings))


__all__ = ["Engine", "build_app"]
