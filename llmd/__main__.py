"""``python -m llmd``."""

import sys

from llmd.cli import main

sys.exit(main())
