"""Per-client and per-topic traces (EMQX's emqx_tracer): the manager, packet formatting, sinks."""
