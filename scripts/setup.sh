#!/usr/bin/env bash
# Prepare this checkout on a Debian 12 machine (as root): Debian packages that jobns and
# its tests need, then a virtualenv in .venv with jobns installed (editable) into it.
#   scripts/setup.sh            runtime only (what the demo needs)
#   scripts/setup.sh --tests    also the test tools, Slurm 22.05, munge, gcc, libslurm-dev,
#                               libpam0g-dev
set -euo pipefail
cd "$(dirname "$0")/.."
want_tests=0
[ "${1:-}" = "--tests" ] && want_tests=1

if [ "$(id -u)" != 0 ]; then
    echo "setup.sh: run as root (jobns creates namespaces and mounts)" >&2
    exit 2
fi

pkgs=(util-linux procps)
if [ $want_tests = 1 ]; then
    pkgs+=(gcc libc6-dev e2fsprogs slurmctld slurmd slurm-client munge libslurm-dev libpam0g-dev)
fi
python=${JOBNS_PYTHON:-python3}
if ! "$python" -c 'import sys; assert sys.version_info >= (3, 11)' 2>/dev/null; then
    pkgs+=(python3)
    python=python3
fi
if ! "$python" -c 'import venv, ensurepip' 2>/dev/null; then
    pkgs+=(python3-venv)
fi
missing=()
for p in "${pkgs[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    echo "setup.sh: installing Debian packages: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    # Debian's postinst scripts would start system munge/slurm daemons; the tests run
    # their own instances, so keep package installation from starting services.
    cleanup_rc=0
    if [ ! -e /usr/sbin/policy-rc.d ]; then
        printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
        chmod 755 /usr/sbin/policy-rc.d
        cleanup_rc=1
    fi
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    [ $cleanup_rc = 1 ] && rm -f /usr/sbin/policy-rc.d
fi

if [ ! -x .venv/bin/python ]; then
    "$python" -m venv .venv
fi
stamp=.venv/.jobns-installed
extras=""
[ $want_tests = 1 ] && extras="[test]"
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ] || \
   { [ -n "$extras" ] && ! grep -Fqx "$extras" "$stamp"; }; then
    .venv/bin/python -m pip install -q --disable-pip-version-check -e ".$extras"
    echo "$extras" > "$stamp"
fi
# Byte-compile now: the CLI runs on every job start, and an environment with
# PYTHONDONTWRITEBYTECODE would otherwise recompile jobns on every run.
.venv/bin/python -m compileall -q src >/dev/null
echo "setup.sh: ready: $(pwd)/.venv/bin/jobns"
