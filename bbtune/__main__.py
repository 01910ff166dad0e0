"""`python -m bbtune` is the `bbtune` command."""
import sys

from bbtune.app.cli import main

sys.exit(main())
