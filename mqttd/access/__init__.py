"""Access control (EMQX's emqx_authn / emqx_authz, mosquitto's password and ACL files):
the authentication chain (``authn``), the authorization chain (``authz``), their
providers and sources (one module each), the banned table and flapping detection.

``build_access(settings)`` builds both chains from ``[auth]``/``[authz]``/``[flapping]``;
the node hands them to the broker, which calls them through the ``Authenticator`` and
``Authorizer`` protocols of ``core/services.py``.
"""
