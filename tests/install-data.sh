#!/bin/bash
# Install the real data set the Fashion-MNIST tests read: Debian's dataset-fashion-mnist (the
# four IDX .gz files in /usr/share/datasets/fashion-mnist). Idempotent: quick when it is
# installed already. tests/test_data.py skips without it, and fails instead when CI=true or
# LBTKIT_REQUIRE_DATA=1.
set -euo pipefail

package=dataset-fashion-mnist
if dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q 'install ok installed'; then
    echo "install-data: $package already installed"
    exit 0
fi
sudo=()
[ "$(id -u)" -eq 0 ] || sudo=(sudo)
echo "install-data: installing $package"
"${sudo[@]}" apt-get update -qq
"${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
    --no-install-recommends "$package"
