"""Tenant management: what `log-tenants` (`pipeline.commands.tenants`) does, as a library (CONTRACTS.md §3).

`tables` opens a tenant table and says which shape it has, or why it cannot be used; `listing` shows every
tenant and its deliveries; `migrate` copies a v1 table into a v2 one. Every item is read and written through
`pipeline.tenants` (`parse_delivery`, `delivery_item`), the one definition of the schema, so the CLI, the
delivery path and the replay agree on what a valid delivery is.

Each result has `to_json()` (what `--json` prints, stable for scripts) and `render()` (the human table).
"""
