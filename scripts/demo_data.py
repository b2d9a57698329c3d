#!/usr/bin/env python3
"""Demo data (scripts/novajobs_dev/demo_data.py): ``python scripts/demo_data.py --help``."""

import sys

from novajobs_dev.demo_data import main

if __name__ == "__main__":
    sys.exit(main())
