"""Shared test helpers (imported by the tests as ``helpers.<module>``; pytest puts ``tests/`` on ``sys.path``).

- ``meshes``: small procedural meshes in every format, the shared real meshes' manifest
- ``hostile_meshes``: the hostile-mesh corpus (path escapes, bombs, malformed files)
- ``own_generations``: a lab's own generations (YCB scans and corrupted copies, not the validation set)
- ``models``: a rendered preference data set for training tests
- ``scoring``: tiny exported scorer sets, mesh files, a running scorer service
- ``postgres``: a private PostgreSQL cluster for the Label Studio tests
- ``blocked``: an environment in which some packages cannot be imported (the missing-extra tests)
- ``rl_runs``: Hi-GRPO runs in child processes (2-process DDP / FSDP, two torchrun nodes), killed whole on timeout
"""
