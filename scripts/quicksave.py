#!/usr/bin/env python3
"""Ask the running training node for a manual checkpoint (same as `soulsai quicksave`)."""

import sys

from soulsai.cli import main

if __name__ == "__main__":
    sys.argv = ["soulsai", "quicksave", *sys.argv[1:]]
    main()
