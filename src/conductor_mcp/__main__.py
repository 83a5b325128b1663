"""`python -m conductor_mcp`: the command line, as the `mcp-conductor` script runs it."""

import sys

from .surfaces.cli import main

sys.exit(main())
