"""Entry point of `python -m tools.blockmap`."""

from tools.blockmap.cli import main

main(prog_name="python -m tools.blockmap")
