"""One module per ``lam-head`` subcommand (see backend/cli.py)."""
