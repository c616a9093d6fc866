"""``python -m lbtkit`` (and ``accelerate launch -m lbtkit run ...``)."""

from lbtkit.cli import main

main()
