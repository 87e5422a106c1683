"""The `digest` command line: one module per command group, gathered by `digest.cli.main`."""
