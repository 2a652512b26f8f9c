"""The `mcc` subcommands, one module per area; `flows/cli.py` wires them into one app."""
