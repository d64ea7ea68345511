"""llmc: the bundled command-line client of llmd (stdlib only, quick to start)."""

__version__ = "0.1.0"
