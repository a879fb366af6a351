"""One object to each of its tenant's deliveries: which take it (`routing`, pure), what it did there
(`results`, pure values), and the engine that reads, decodes, sends and records it (`engine`).

The types and the routing import without the engine, so a caller that only names an object or reads a
result (the consumer's events, the report, the status) does not load the sinks.
"""
