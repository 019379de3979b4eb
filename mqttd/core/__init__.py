"""The broker proper (EMQX's emqx app core): channel, session, registry, dispatch, router,
retainer. Synchronous: no sockets, no event loop; time and timers are injected
(``core/services.py``), so the whole core runs in unit tests without a loop.
"""
