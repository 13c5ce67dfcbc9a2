#!/usr/bin/env bash
# Install LocalStack for *host mode* (no Docker) into .venv-localstack/ at the repository root.
#
# LocalStack needs Python >= 3.12 (the wheel claims 3.10 but uses 3.12 syntax), so it lives in its
# own virtualenv, separate from the project's .venv. The test fixture tests/aws_servers.py looks for
# .venv-localstack/bin/python; with it, the @pytest.mark.localstack tests run against a real
# LocalStack started on a free port.
#
# Pins (see /work/shared/notes/local-backends.md): localstack-core 2026.3.0 is the last host-mode
# release checked here; cbor2/cryptography/pyopenssl are held back because newer ones break its
# runtime. About 500 MB. Idempotent: does nothing when the pinned version is already installed.
#
# Usage: localstack/install-host-localstack.sh            (PYTHON=/path/to/python3.12 to choose)
#        LOCALSTACK_VENV=/elsewhere localstack/install-host-localstack.sh
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${LOCALSTACK_VENV:-$ROOT/.venv-localstack}"
LOCALSTACK_VERSION="2026.3.0"
PINS=("localstack-core[runtime]==${LOCALSTACK_VERSION}" "cbor2<6" "cryptography<45" "pyopenssl<25" "service_identity")
MARKER="$VENV/.batchbridge-localstack-${LOCALSTACK_VERSION}"

is_new_enough() {
    "$1" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 12) else 1)' >/dev/null 2>&1
}

if [[ -x "$VENV/bin/python" && -f "$MARKER" ]] \
    && "$VENV/bin/python" -c 'import localstack.runtime.main' >/dev/null 2>&1; then
    echo "LocalStack ${LOCALSTACK_VERSION} is already installed in $VENV"
    exit 0
fi

find_python() {
    local candidates=()
    if [[ -n "${PYTHON:-}" ]]; then
        candidates+=("$PYTHON")
    fi
    local name
    for name in python3.13 python3.12 python3 python; do
        if command -v "$name" >/dev/null 2>&1; then
            candidates+=("$(command -v "$name")")
        fi
    done
    local pyenv_root="${PYENV_ROOT:-$HOME/.pyenv}"
    if [[ -d "$pyenv_root/versions" ]]; then
        local dir
        # newest first
        while IFS= read -r dir; do
            [[ -x "$dir/bin/python" ]] && candidates+=("$dir/bin/python")
        done < <(ls -1d "$pyenv_root"/versions/3.* 2>/dev/null | sort -t. -k2,2nr -k3,3nr)
    fi
    local py
    for py in "${candidates[@]}"; do
        if is_new_enough "$py"; then
            echo "$py"
            return 0
        fi
    done
    return 1
}

if ! PY="$(find_python)"; then
    echo "error: LocalStack host mode needs Python >= 3.12 and none was found." >&2
    echo "       Looked at \$PYTHON, python3.13/python3.12/python3 on PATH and \$PYENV_ROOT/versions." >&2
    echo "       Install one (e.g. 'pyenv install 3.12') or run with PYTHON=/path/to/python3.12." >&2
    exit 1
fi
echo "Using $PY ($("$PY" -c 'import sys; print(sys.version.split()[0])'))"

if [[ ! -x "$VENV/bin/python" ]] || ! is_new_enough "$VENV/bin/python"; then
    rm -rf "$VENV"
    "$PY" -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install --quiet --upgrade pip
"$VENV/bin/python" -m pip install --quiet "${PINS[@]}"
"$VENV/bin/python" -c 'import localstack.runtime.main' # fails loudly when the install is broken
touch "$MARKER"
echo "LocalStack ${LOCALSTACK_VERSION} installed in $VENV"
echo "Run the LocalStack tests with: .venv/bin/pytest -m localstack tests/test_conformance_aws.py tests/test_aws_adapter.py"
