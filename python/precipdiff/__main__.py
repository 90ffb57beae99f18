"""Allow ``python -m precipdiff``."""

from precipdiff.offline.cli.main import main

raise SystemExit(main())
