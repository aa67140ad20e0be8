#!/usr/bin/env bash
# The whole test suite, as CI runs it: set up (Debian packages, .venv), then pytest.
# Extra arguments go to pytest (e.g. scripts/test.sh tests/unit -x).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh --tests
exec .venv/bin/python -m pytest -ra -q -p no:cacheprovider "$@"
