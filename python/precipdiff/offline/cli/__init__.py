"""Command-line interface: one module per subcommand (see :mod:`precipdiff.offline.cli.main`)."""
