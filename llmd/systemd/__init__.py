"""systemd without libsystemd: what the running daemon does, and the install-time units.

- :mod:`llmd.systemd.notify`: ``sd_notify`` datagrams (``READY=1``, ``STATUS=``...).
- :mod:`llmd.systemd.activation`: the listening socket systemd passes (``LISTEN_FDS``).
- :mod:`llmd.systemd.runtime`: watchdog pings, the ``STATUS=`` line, the journal.
- :mod:`llmd.systemd.units`: the user units ``llmd install-service`` writes.
"""
