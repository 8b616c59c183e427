"""`python -m refinery_trainer` is `refinery-train` (used by local mode to reach the same Python)."""

import sys

from .cli import main

sys.exit(main())
