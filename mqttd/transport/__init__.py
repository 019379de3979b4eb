"""The only code on client sockets: connections (asyncio protocols) and rate limiters.
TLS, WebSocket and PROXY protocol transports belong here and share the channel's lifecycle.
"""
