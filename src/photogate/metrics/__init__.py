"""Prometheus metrics of the gateway, in three parts:

- :mod:`.events`: the counters and histograms the dispatcher, the API and the webhook bump
  (:class:`GatewayMetrics`); no project imports.
- :mod:`.live`: the collector that reads the running gateway's state at scrape time
  through a small snapshot protocol.
- :mod:`.http`: ``GET /metrics`` (token passed in) and the request-counting middleware.

Only :class:`GatewayMetrics` is re-exported here, so that a module bumping a counter loads
nothing else.
"""

from .events import GatewayMetrics

__all__ = ["GatewayMetrics"]
