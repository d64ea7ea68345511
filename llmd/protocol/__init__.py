"""The wire protocol, sans I/O: bytes in, messages out, replies back to bytes.

- :mod:`llmd.protocol.framing`: NDJSON and LSP framing of a byte stream, with size limits.
- :mod:`llmd.protocol.jsonrpc`: JSON-RPC 2.0 messages decoded and checked, replies encoded
  (large strings spliced in a slice at a time).
"""
