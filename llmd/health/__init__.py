"""Health: background probes of every blueprint, their cached state, cooldowns.

- :mod:`llmd.health.monitor`: the scheduler, the probes and the cache.
"""
