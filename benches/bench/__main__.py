"""`python3 -m bench` (from benches/): the benchmark's entry point."""

import sys

from .cli import main

sys.exit(main())
