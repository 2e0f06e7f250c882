"""The `ctpipe` command line: argument parsing and handlers only, nothing else.

`main.py` assembles every area's subcommands; `common.py` holds what they share."""
