"""Scale-out on Ray (optional extra `pip install .[scale]`).

- `ray_local`: start a loopback-only local Ray or join a cluster (`--address`).
- `fleet_ingest`: `offrl-robot ingest --workers N`: one bag per Ray task, merged exactly like a
  serial ingest.
- `sweep`: `offrl-robot sweep`: grid/random search over algorithm x hyper-parameters x seeds x
  datasets with Ray Tune, our Trainer in every trial, checkpoints that survive a killed worker.

Nothing here is imported by the rest of the package: without Ray installed, only these
commands are unavailable.
"""
