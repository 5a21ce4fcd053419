#!/usr/bin/env bash
# Install what the tests need (scripts/setup.sh) and run the whole suite, slow tests included.
# Extra arguments go to pytest, e.g.  bash scripts/test.sh -m "not slow"   (fast tests only)
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
set +e
.venv/bin/python -m pytest "$@"
code=$?
set -e
if [ "$code" -eq 5 ]; then
  echo "pytest collected no tests: that is a failure here" >&2
  exit 1
fi
exit "$code"
