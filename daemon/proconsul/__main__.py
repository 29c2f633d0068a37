"""`python -m proconsul` runs the command line, the same as the `proconsul` script."""

from proconsul.cli.main import main

raise SystemExit(main())
