"""The socket server: the listening socket, its connections, the dispatcher, the methods.

- :mod:`llmd.server.listener`: binding the socket safely (one daemon per path), or adopting
  the one systemd passed.
- :mod:`llmd.server.connections`: each accepted connection: peer check, framing,
  concurrent requests, replies and notifications sent.
- :mod:`llmd.server.dispatch`: the JSON-RPC dispatcher under trio (handlers, batches,
  ``$/cancelRequest``).
- :mod:`llmd.server.methods`: the method table, from wire params to the job manager.
"""
