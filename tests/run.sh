#!/usr/bin/env bash
# Set up everything the tests need and run them: one command on a fresh machine.
#   bash tests/run.sh [pytest args...]
# Creates .venv (the package, editable, with every extra) and .venv-localstack (LocalStack in host
# mode, no Docker), then runs pytest. Backend servers are started by the tests on free ports.
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e '.[dev]'

if [ "${BATCHBRIDGE_SKIP_LOCALSTACK:-0}" != "1" ] && [ -f localstack/install-host-localstack.sh ]; then
  bash localstack/install-host-localstack.sh
fi

export GRPC_VERBOSITY=ERROR
exec .venv/bin/python -m pytest "$@"
