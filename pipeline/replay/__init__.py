"""The replay job: list a tenant's window, plan balanced work units, deliver them on Ray workers.

Only `workers.py` and `job.py` import Ray; listing, planning, rate arithmetic and reporting are plain
Python, so the core library and the consumer image stay free of it.
"""
