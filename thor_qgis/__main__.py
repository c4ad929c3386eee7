"""``python -m thor_qgis grid …``: see :mod:`thor_qgis.cli`."""
import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
