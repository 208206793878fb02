"""Subcommands of ``eventbot``: each module registers one."""
