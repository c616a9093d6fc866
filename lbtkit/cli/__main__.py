"""``python -m lbtkit.cli``: the same as ``python -m lbtkit``."""

from lbtkit.cli import main

main()
