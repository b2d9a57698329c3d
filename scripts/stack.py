#!/usr/bin/env python3
"""The local stack (scripts/novajobs_dev/stack.py): ``python scripts/stack.py up|env|down``."""

import sys

from novajobs_dev.stack import main

if __name__ == "__main__":
    sys.exit(main())
