"""Entry point of the frozen (PyInstaller) proconsul: the same `main` as the console script."""

import sys

from proconsul.cli.main import main

if __name__ == "__main__":
    sys.exit(main())
