#!/usr/bin/env python3
"""A Redis Cluster on loopback (scripts/novajobs_dev/topology.py):
``python scripts/topology.py cluster [--primaries 3] [--replicas 1]``."""

import sys

from novajobs_dev.topology import main

if __name__ == "__main__":
    sys.exit(main())
