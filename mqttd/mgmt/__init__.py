"""Management (EMQX's emqx_mgmt): every operator query and action on a running node, once.

Front ends (``mqttd ctl`` today, an HTTP API later) call the facade,
:class:`mqttd.mgmt.api.Management`, and render what it returns: plain data
(row dicts, lists, :class:`~mqttd.mgmt.listing.Listing` snapshots to page
over) or a :class:`~mqttd.mgmt.errors.MgmtError` to word in their own way.
They never see a channel, a connection or the server.

One module per area: ``clients``, ``sessions``, ``subscriptions``,
``routes``, ``retained``, ``listeners``, ``trace``, ``plugins``, ``log``,
``vm``, ``status`` (node, broker, stats, metrics). ``control`` is the seam
to the process layer (listeners, stopping), implemented by ``mqttd.server``.

This package module imports nothing on purpose: front ends that only need the
errors or the listing types (``mgmt.errors``, ``mgmt.listing``) load no more.
"""
