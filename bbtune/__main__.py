"""`python -m bbtune` is the `bbtune` command."""
import sys

from bbtune.app.cli import main

if __name__ == "__main__":  # importing the module (the API reference inspects every module) runs nothing
    sys.exit(main())
