"""The control plane (EMQX's emqx_ctl): a command registry served on a Unix socket.

``registry`` holds every command with its usage text (what ``mqttd ctl help``
prints and what the parser accepts: one source, so they never disagree),
``commands`` registers the built-in commands, ``server`` serves them on
``<data_dir>/mqttd.sock`` and ``protocol`` is the wire format shared with the
client in :mod:`mqttd.cli.ctl`.
"""
