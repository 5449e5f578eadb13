#!/usr/bin/env bash
# Create the project's environment in .venv from nothing, or reuse it when it is already complete.
# "Complete" means: the install below finished and recorded a stamp of the files that define it.
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=.venv
STAMP="$VENV/.amoslabel-complete"
want=$(cat requirements.txt requirements-test.txt constraints.txt scripts/bootstrap.sh | sha256sum | cut -c1-16)

if [ -x "$VENV/bin/python" ] && [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$want" ] \
   && "$VENV/bin/python" -c "import monailabel, torch, SimpleITK" 2>/dev/null; then
  exit 0
fi

PY=$(command -v python3.11 || command -v python3)
if ! "$PY" -c 'import sys; sys.exit(0 if sys.version_info[:2] == (3, 11) else 1)'; then
  echo "bootstrap: Python 3.11 is required (found $("$PY" --version 2>&1))." >&2
  exit 1
fi

echo "bootstrap: creating the environment in $VENV (a few minutes the first time) ..."
rm -f "$STAMP"
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
# torch sits on the same command line as monailabel (requirements.txt) so pip keeps the CPU build.
"$VENV/bin/python" -m pip install --progress-bar on -r requirements.txt -r requirements-test.txt -c constraints.txt \
  2>&1 | { grep -v "^WARNING: Location 'file:" || true; } || { echo "bootstrap: pip install failed" >&2; exit 1; }
# TotalSegmentator's class table (models/pretrained/label_maps: the shipped map is checked against it); without its
# dependencies, which are for rendering and conversion (vtk, fury, dipy, ...) and are not needed here.
"$VENV/bin/python" -m pip install --no-deps -q -c constraints.txt totalsegmentator \
  || { echo "bootstrap: pip install totalsegmentator failed" >&2; exit 1; }
# monai[torchvision] drags in a CUDA torchvision that cannot import beside CPU torch; nothing here uses it.
"$VENV/bin/python" -m pip uninstall -y -q torchvision
"$VENV/bin/python" -c "import monailabel, monai, torch, SimpleITK, nibabel, yaml, pydantic, nnunetv2, totalsegmentator.map_to_binary; print('bootstrap: torch', torch.__version__, '| monai', monai.__version__, '| monailabel', monailabel.__version__)"
echo "$want" > "$STAMP"
