"""Built-in feature modules (EMQX's broker modules): delayed publish, topic rewrite,
auto-subscribe, retainer limits, topic metrics and slow subscriptions.

Each module is one file here, configured in its own ``[modules.<name>]`` section
(``enable = true`` loads it at start) and switched on and off at run time with
``mqttd ctl modules load|unload <name>``. A module plugs into the node through the
hook chains (``mqttd/hooks.py``) and a :class:`~mqttd.modules.base.ModuleContext`, as a
plugin does; a module that is not loaded has no callback on any chain, so the broker's
paths pay nothing for it. The node builds the :class:`~mqttd.modules.manager.ModuleManager`
(``mqttd/node.py``); management (``mqttd/mgmt/modules.py``) and ``mqttd ctl`` reach it
from there. See docs/MODULES.md.
"""
