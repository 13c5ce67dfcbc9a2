"""Subcommands of the ``batchbridge`` CLI, one module per group."""
