"""The control plane (EMQX's emqx_ctl): a command table served on a Unix socket.

``table`` is the command table (each command's usage text is both what
``mqttd ctl help`` prints and what the parser accepts: one source, so they
never disagree), ``commands`` fills it with the built-in commands and renders
what :mod:`mqttd.mgmt` answers, ``context`` is what a handler writes to (text,
tables paged over snapshots, JSON), ``server`` serves a table on
``<data_dir>/mqttd.sock`` and ``protocol`` is the wire format shared with the
client in :mod:`mqttd.cli.ctl`.
"""
