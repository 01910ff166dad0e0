"""`python -m bbtune` is the `bbtune` command."""
import sys

from .cli import main

sys.exit(main())
