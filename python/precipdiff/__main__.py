"""Allow ``python -m precipdiff``."""

from precipdiff.cli.main import main

raise SystemExit(main())
