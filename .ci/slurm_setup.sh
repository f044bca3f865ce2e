#!/usr/bin/env bash
# System packages for the SLURM tests (tests/test_slurm.py) and the script lint: Slurm's
# controller, node daemon and client, munge, and shellcheck, from Debian. Idempotent: when every
# program is already installed it returns at once without touching apt.
# Needs root (CI runs as root). Installs ~6 s on Debian 12 (Slurm 22.05, munge 0.5.15).
set -euo pipefail

programs=(slurmctld slurmd sbatch munged shellcheck)
packages=(slurmctld slurmd slurm-client munge shellcheck)

missing=()
for program in "${programs[@]}"; do
    command -v "$program" >/dev/null 2>&1 || PATH="$PATH:/usr/sbin" command -v "$program" >/dev/null 2>&1 \
        || missing+=("$program")
done
if [ "${#missing[@]}" -eq 0 ]; then
    echo "slurm_setup: already installed (${programs[*]})"
    exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
    echo "slurm_setup: missing ${missing[*]}; run this script as root to install ${packages[*]}" >&2
    exit 1
fi
if ! command -v apt-get >/dev/null 2>&1; then
    echo "slurm_setup: missing ${missing[*]} and no apt-get here; install ${packages[*]} by hand" >&2
    exit 1
fi
echo "slurm_setup: installing ${packages[*]} (missing: ${missing[*]})"
export DEBIAN_FRONTEND=noninteractive
# The slurm-wlm metapackage would pull 43 packages; these five are all the tests need.
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${packages[@]}" >/dev/null
echo "slurm_setup: done"
