"""The metrics facade: picks the compiled counter array when available.

``MetricsPy`` always exists; ``MetricsC`` only when the Cython build loaded;
``Metrics`` is the best available. The metric names and their index constants
(``PACKETS_PUBLISH_RECEIVED``, ...) come from ``mqttd._metric_names`` and are
re-exported here, so a caller writes::

    from .metrics import PACKETS_PUBLISH_RECEIVED
    node.metrics.inc(PACKETS_PUBLISH_RECEIVED)

No logic lives here: see ``mqttd/_metrics_py.py``.
"""

from __future__ import annotations

from ._accel import use_c
from ._metric_names import *  # noqa: F403  (NAMES, FAMILIES, COUNT, the index constants)
from ._metrics_py import MetricsPy

if use_c("metrics"):
    from ._speedups._metrics import Metrics as MetricsC

    Metrics = MetricsC
else:
    Metrics = MetricsPy  # type: ignore[assignment,misc]
