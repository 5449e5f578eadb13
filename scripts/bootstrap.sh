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
# pip speaks only of errors (-q); a machine's pip configuration can name a find-links folder that is not there, and
# pip warns of it on every call: those lines are dropped.
pip_quiet() {
  "$VENV/bin/python" -m pip "$@" -q 2>&1 | { grep -v "^WARNING: Location 'file:" || true; }
}
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"

# The installer: uv (Astral's, from PyPI) installs the same pins in about half pip's time (71 s against 122 s on 2
# cores; most of pip's goes to reading the indexes' pages); pip itself where uv cannot be had. uv does not read pip's
# configuration, so the machine's (a local wheel folder, local indexes, a constraint file) is handed to it.
UV_VERSION=0.13.10
uv_args=()
installer=pip
if pip_quiet install "uv==$UV_VERSION" >/dev/null 2>&1 && [ -x "$VENV/bin/uv" ]; then
  installer=uv
  while IFS= read -r arg; do uv_args+=("$arg"); done < <("$VENV/bin/python" - <<'PY'
import subprocess, sys
listed = subprocess.run([sys.executable, "-m", "pip", "config", "list"], capture_output=True, text=True).stdout
flags = {"find-links": "--find-links", "index-url": "--index-url", "extra-index-url": "--extra-index-url",
         "constraint": "--constraint"}
seen = set()
for line in listed.splitlines():
    key, _, value = line.partition("=")
    flag = flags.get(key.rsplit(".", 1)[-1])
    for item in value.strip().strip("'\"").split():
        if flag and (flag, item) not in seen:
            seen.add((flag, item))
            print(flag)
            print(item)
PY
  )
else
  echo "bootstrap: uv $UV_VERSION cannot be installed here; pip installs instead (about twice as long)"
fi
install() {
  if [ "$installer" = uv ]; then
    "$VENV/bin/uv" pip install -q --python "$VENV/bin/python" --compile-bytecode --index-strategy unsafe-best-match \
      ${uv_args[@]+"${uv_args[@]}"} "$@"
  else
    pip_quiet install "$@"
  fi
}
uninstall() {
  if [ "$installer" = uv ]; then
    "$VENV/bin/uv" pip uninstall -q --python "$VENV/bin/python" "$@"
  else
    pip_quiet uninstall -y "$@"
  fi
}

echo "bootstrap: 1/3 installing torch (CPU), monai, monailabel and the pinned requirements ($installer) ..."
# torch sits on the same command line as monailabel (requirements.txt) so the CPU build is kept.
install -r requirements.txt -r requirements-test.txt -c constraints.txt \
  || { echo "bootstrap: $installer install failed" >&2; exit 1; }
echo "bootstrap: 2/3 installing TotalSegmentator's class table ..."
# TotalSegmentator's class table (models/pretrained/label_maps: the shipped map is checked against it); without its
# dependencies, which are for rendering and conversion (vtk, fury, dipy, ...) and are not needed here.
install --no-deps -c constraints.txt totalsegmentator \
  || { echo "bootstrap: $installer install totalsegmentator failed" >&2; exit 1; }
echo "bootstrap: 3/3 removing torchvision and mlflow, which monailabel's monai extras bring and nothing here uses"
# torchvision: a CUDA build that cannot import beside CPU torch. mlflow: training never tracks to it (mlflow 3 refuses
# MONAI Label's file store; amoslabel/server/launch.py turns tracking off), yet MONAI imports it whenever it is there,
# about 1 s of CPU in every process that imports MONAI (servers, trainings, cohort workers, commands).
uninstall torchvision mlflow mlflow-skinny mlflow-tracing
"$VENV/bin/python" -c "import monailabel, monai, torch, SimpleITK, nibabel, yaml, pydantic, nnunetv2, totalsegmentator.map_to_binary; print('bootstrap: torch', torch.__version__, '| monai', monai.__version__, '| monailabel', monailabel.__version__)"
echo "$want" > "$STAMP"
