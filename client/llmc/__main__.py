"""``python -m llmc``: the same as the ``llmc`` command."""

from __future__ import annotations

import sys

from llmc.cli import main

sys.exit(main())
