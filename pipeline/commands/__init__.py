"""The click commands the package installs as console scripts ([project.scripts] in pyproject.toml).

| script | module | also runs as |
|---|---|---|
| `log-replay` | `replay.py` | `python jobs/replay.py` (`ray job submit -- python jobs/replay.py ...`) |
| `log-consumer` | `consumer.py` (and `consumer.lambda_handler`, what a Lambda image runs) | `python -m jobs.consumer` |
| `log-tenants` | `tenants.py` | `python jobs/tenants.py` |
| `log-inventory` | `inventory.py` | `python jobs/inventory.py` |

Each module only reads options, calls the library and picks the exit code (`pipeline.cli`); `jobs/*.py`
are thin wrappers around them for a checkout or an image that runs scripts by path.
"""
