"""``python -m superduper_transformers``: the command line (see :mod:`superduper_transformers.cli`).

``python -m superduper_transformers --version`` prints the version and the folder the
package is imported from: a quick check that this project (and not an earlier plugin
of the same name from PyPI) is the one installed.
"""

import sys

from superduper_transformers.cli import main

if __name__ == "__main__":
    sys.exit(main())
