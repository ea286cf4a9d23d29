"""tunerctl's commands by group; each `cmd_*` takes the parsed arguments and returns an exit code.
cli.py holds the parser and dispatches to them."""
