"""The terminal interfaces: the `campaigns` command (cli.py) and the Textual app."""
