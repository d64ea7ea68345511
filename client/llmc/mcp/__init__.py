"""``llmc mcp``: a Model Context Protocol server on stdio that hands every tool call to llmd.

- :mod:`llmc.mcp.server`: the protocol side (stdin, stdout, versions, dispatch).
- :mod:`llmc.mcp.schemas`: the tools as listed, with their JSON Schemas.
- :mod:`llmc.mcp.calls`: carrying a call out against llmd (connections, progress, cancel).
- :mod:`llmc.mcp.tools`: tool arguments checked and results built (pure).
- :mod:`llmc.mcp.longwork`: fan-out ``start``, ``wait``, ``jobs`` and ``peek``.
- :mod:`llmc.mcp.tasks`: MCP tasks (2025-11-25 utility, 2026-07-28 extension).

Nothing is imported here: ``llmc mcp`` loads only what it uses.
"""
