"""Sightline's appliance: what runs beside the agent rather than in the app.

- ``stack``: the compose stack run from the binaries the machine has (``sightline stack``);
- ``demo``: the demo shop, its worker and load, and the terminal view (``sightline demo``);
- ``doctor``, ``alerts``, ``hints``, ``rules``, ``grafana``: the commands of those names;
- ``queries``: the PromQL of the golden signals, shared by the dashboards and the
  terminal view.

The agent (``pip install sightline``) has none of this; its ``sightline`` command finds
these commands through the ``sightline.commands`` entry point (``cli.register``).
"""
