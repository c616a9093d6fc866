#!/bin/bash
# Install what tests/test_slurm.py starts: a real single-node SLURM (Debian/Ubuntu packages
# slurmctld, slurmd, slurm-client, munge). Idempotent: quick when they are installed already.
# The packages start no services here; tests/slurm_cluster.py writes its own slurm.conf and
# starts the daemons for the test session.
set -euo pipefail

packages=(slurmctld slurmd slurm-client munge)
missing=()
for package in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q 'install ok installed' ||
        missing+=("$package")
done
if [ "${#missing[@]}" -eq 0 ]; then
    echo "install-slurm: ${packages[*]} already installed"
    exit 0
fi
sudo=()
[ "$(id -u)" -eq 0 ] || sudo=(sudo)
echo "install-slurm: installing ${missing[*]}"
"${sudo[@]}" apt-get update -qq
"${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
    --no-install-recommends "${missing[@]}"
