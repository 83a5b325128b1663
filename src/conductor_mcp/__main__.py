"""`python -m conductor_mcp`: the command line, as the `conductor-mcp` script runs it."""

import sys

from .surfaces.cli import main

sys.exit(main())
