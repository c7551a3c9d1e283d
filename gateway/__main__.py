"""Runs the gateway's command line: python -m gateway."""

import sys

from gateway.cli import main

sys.exit(main())
