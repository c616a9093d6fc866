"""``python -m lbtkit`` (and ``accelerate launch -m lbtkit run ...``)."""

from lbtkit.signals import exit_interrupted_during_startup

# Before the CLI and torch are imported: a SIGTERM from here on ends with exit 75.
exit_interrupted_during_startup()

from lbtkit.cli import main  # noqa: E402

main()
