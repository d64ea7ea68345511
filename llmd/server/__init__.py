"""The socket server: connections, the dispatcher that runs their requests, the methods.

- :mod:`llmd.server.connections`: the listening socket and each accepted connection.
- :mod:`llmd.server.methods`: the method table, from wire params to the job manager.
"""
