"""The `pbkfs` command (click) and the text/JSON formatters of `show` (layer 11 of 11).

Owns argument parsing, user-facing messages and exit statuses; every command
is a thin call into the layers below (view, recovery, mount). The mount
process itself is imported only for `--foreground`, so the other commands
never load pyfuse3. May import every layer.
"""
