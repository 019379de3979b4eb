"""Access control as an operator sees it: reload its files, ask what authorization decides.

``reload`` re-reads what every ``[auth]`` provider and ``[authz]`` source reads (password,
credentials and ACL files edited in place); a file whose new content is bad keeps its old
content and the call fails saying why (mosquitto reloads its password and ACL files on
SIGHUP; EMQX has reloads in its API). ``check`` answers what the chain
decides now for a client, an action and a topic, and which rule decided: the question an
operator asks when a client is refused (mosquitto has no such command; EMQX's dashboard
has none either).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

from ..access.authn import AccessError
from ..core.channel import CONNECTED, Channel
from ..core.services import ClientInfo
from ..mqtt.reasons import ReasonCode as RC
from ..mqtt.topics import filter_error, has_disallowed_chars, topic_name_error
from .errors import Failed, InvalidArgument, Unavailable
from .listing import Row

if TYPE_CHECKING:
    from ..access.authz import AuthzChain
    from ..access.build import Access
    from ..core.registry import Registry

__all__ = ["ACTIONS", "Acl", "disconnect_revoked"]

log = logging.getLogger("mqttd.mgmt")

#: What ``check`` can ask about: a client publishing, subscribing, or being sent a message.
ACTIONS = ("publish", "subscribe", "deliver")


def disconnect_revoked(registry: Registry, why: str, username: str | None = None
                       ) -> list[str]:
    """Disconnect every connected client (of ``username``, if given) whose password was
    checked against an entry its provider no longer has, or has changed (a user removed
    from the password file, deleted, given a new password): MQTT 5 clients get DISCONNECT
    0x87. mosquitto does the same on reload; without it a removed user stays connected, with
    its rights, until it disconnects. Returns the client ids."""
    kicked = []
    for client_id, owner in list(registry.channels.items()):
        if not isinstance(owner, Channel) or owner.closing:
            continue
        credential = owner.auth_credential
        if credential is None or (username is not None and owner.username != username):
            continue
        provider, entry = credential
        if owner.username is None or provider.entry(owner.username) != entry:
            registry.kick(client_id, RC.NOT_AUTHORIZED, why)
            kicked.append(client_id)
    if kicked:
        log.info("disconnected %d client%s because %s: %s", len(kicked),
                 "" if len(kicked) == 1 else "s", why, ", ".join(kicked[:20])
                 + (" ..." if len(kicked) > 20 else ""))
    return kicked


class Acl:
    """Reload and check of the node's authorization chain."""

    def __init__(self, access: Callable[[], Access | None], registry: Registry) -> None:
        self._access = access
        self.registry = registry

    def _get(self) -> Access:
        access = self._access()
        if access is None:
            raise Unavailable("the node has not started its access control yet")
        return access

    def _chain(self) -> AuthzChain | None:
        return self._get().authz

    def reload(self, by: str) -> Row:
        """Re-read what every authentication provider and authorization source reads (the
        password, credentials and ACL files, as mosquitto's SIGHUP does) and forget every
        cached decision and remembered login. Failed lists every problem (a bad file keeps
        its old content; the others are reloaded); Unavailable when nothing is configured."""
        access = self._get()
        authz = access.authz
        described = [p.description for p in access.authn.providers]
        if authz is not None:
            described += [s.description for s in authz.sources]
        if not described:
            raise Unavailable("no authentication provider or authorization source is "
                              "configured: nothing to reload")
        errors: list[str] = []
        for chain in (access.authn, authz):
            if chain is None:
                continue
            try:
                chain.reload()
            except AccessError as err:
                errors += err.errors
        # Files that did reload may have dropped or changed a connected client's user.
        disconnect_revoked(self.registry, f"its credentials were revoked (reload by {by})")
        if errors:
            log.warning("reload asked by %s failed; the files concerned keep their old "
                        "content: %s", by, "; ".join(errors))
            raise Failed("reload failed; the files concerned keep their old content:\n"
                         + "\n".join(errors), "bad_source")
        log.info("access control reloaded by %s: %s", by, ", ".join(described))
        return {"reloaded": described}

    def check(self, client_id: str, username: str | None, action: str, topic: str) -> Row:
        """What the chain decides now (no cache; the client.check_acl hook is not asked)
        and who decided. A connected client with this id and user name is asked about as
        it is (superuser, client ACL); otherwise a client with just these names."""
        if action not in ACTIONS:
            raise InvalidArgument(f"action {action!r} is not one of {', '.join(ACTIONS)}")
        if action == "subscribe":
            why = filter_error(topic)
        else:
            why = "empty topic" if not topic else topic_name_error(topic)
        if why is None and has_disallowed_chars(topic):
            why = "control or non-character code point"
        if why is not None:
            raise InvalidArgument(f"{topic!r} is not a valid topic "
                                  f"{'filter' if action == 'subscribe' else 'name'}: {why}")
        owner = self.registry.channels.get(client_id)
        live = (isinstance(owner, Channel) and owner.state == CONNECTED
                and owner.username == username)
        info = owner.clientinfo if live and isinstance(owner, Channel) \
            else ClientInfo(client_id, username, "")
        chain = self._chain()
        if chain is None:
            allowed, by = True, "no authorization source is configured"
        else:
            allowed, by = chain.explain(info, action, topic)
        return {"result": "allow" if allowed else "deny", "by": by, "clientid": client_id,
                "username": username, "action": action, "topic": topic,
                "connected": live, "superuser": info.superuser}
