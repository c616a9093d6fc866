"""What a new user meets first: the version, the help of every command."""

from __future__ import annotations

import lbtkit


def test_version_flag_prints_the_package_version(cli):
    result = cli("--version", check=0)
    assert result.stdout.strip() == f"lbtkit {lbtkit.__version__}"
