"""`python -m modelserve`: the `modelserve` command."""

from __future__ import annotations

import sys

from modelserve.cli import main

sys.exit(main())
