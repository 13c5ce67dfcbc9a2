#!/bin/sh
# Install batchbridge from a source tree into a virtual environment. The Dockerfile's install step,
# and what tests/test_deploy.py runs, so the image installs exactly what is tested.
#   deploy/install.sh PREFIX SOURCE [EXTRAS]
# PREFIX: the virtual environment (made when absent); SOURCE: the project directory;
# EXTRAS: pip extras, default "all" (every backend, serve, the PostgreSQL outbox store).
# pip's own settings (PIP_INDEX_URL, PIP_NO_INDEX, ...) pass through from the environment.
set -eu
prefix=${1:?usage: install.sh PREFIX SOURCE [EXTRAS]}
src=${2:?usage: install.sh PREFIX SOURCE [EXTRAS]}
extras=${3:-all}
python=${PYTHON:-python3}

[ -x "$prefix/bin/python" ] || "$python" -m venv "$prefix"
"$prefix/bin/python" -m pip install --no-cache-dir --disable-pip-version-check -q "$src[$extras]"
# fail the build here, not at the first request: the entry point exists and its imports work
"$prefix/bin/batchbridge" serve --help >/dev/null
"$prefix/bin/python" -c "import batchbridge.core.serve, batchbridge.core.store_postgres"
