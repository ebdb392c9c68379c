"""``python -m superduper_transformers.cli``: the same as ``python -m superduper_transformers``."""

import sys

from superduper_transformers.cli import main

if __name__ == "__main__":
    sys.exit(main())
