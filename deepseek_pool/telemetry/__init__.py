"""Optional OpenTelemetry: a CLIENT span per call and the GenAI metrics; nothing without it.

Owns :class:`Telemetry` (how a client's telemetry is switched on and where it goes) and
the tiny interface the wire layer calls (:meth:`Telemetry.start` -> a trace, or None when
nothing is recorded). :mod:`~deepseek_pool.telemetry.switch` and
:mod:`~deepseek_pool.telemetry.attributes` never import OpenTelemetry;
:mod:`~deepseek_pool.telemetry.otel` does, and is imported only once telemetry is on
(extra ``deepseek-pool[otel]``).

May import: the foundation (:mod:`deepseek_pool.errors`, :mod:`deepseek_pool.models`) and
OpenTelemetry's API. Imported by the
wire (the attempt loop, the stream), the client and the pool.
"""

from .switch import AUTO, CallTrace, Telemetry, TelemetryLike, resolve_telemetry

__all__ = ["AUTO", "CallTrace", "Telemetry", "TelemetryLike", "resolve_telemetry"]
