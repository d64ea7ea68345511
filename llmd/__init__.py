"""llmd: LLM command-line agents as one supervised local service."""

__version__ = "0.1.0"
