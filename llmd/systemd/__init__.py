"""systemd without libsystemd: what the running daemon does, and the install-time units.

- :mod:`llmd.systemd.notify`: ``sd_notify`` datagrams.
- :mod:`llmd.systemd.activation`: socket activation, watchdog, status, unit files.
"""
