"""The HTTP front end (EMQX's emqx_management REST API, emqx_prometheus and dashboard):
``server`` (the aiohttp listener, its middlewares, ``/metrics`` and the dashboard's
files), ``api`` (the ``/api/v1/`` routes, each rendering what ``mgmt`` returns, and the
OpenAPI document made from them), ``respond`` (JSON, errors, streamed and paged
listings), ``auth`` (API keys and HTTP basic) and ``prometheus`` (the text exposition).

Like ``ctl/``, it asks only the management facade; docs/HTTP.md describes every route.
"""
