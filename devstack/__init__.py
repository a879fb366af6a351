"""The embedded local AWS (a moto server over real HTTP), its provisioning, and the synthetic generator.

Used by the tests, `make demo` and the benchmarks. Never imported by the delivery path.
"""
