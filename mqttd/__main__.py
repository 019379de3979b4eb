"""``python -m mqttd`` is the ``mqttd`` command."""

from .cli import main

main()
