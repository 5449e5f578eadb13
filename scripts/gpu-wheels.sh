#!/usr/bin/env bash
# The wheels `make gpu-check` needs on a GPU machine that has Python 3.12, torch and numpy but no network and none of
# MONAI, pytorch-ignite or pydantic (README: The GPU check). Downloads them into .whl/ (git-ignored, about 5 MB) for
# CPython 3.12 on x86-64 Linux; carry .whl with the checkout and install them there with
#   python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl
set -euo pipefail
cd "$(dirname "$0")/.."
WHEELS=.whl
# The versions of constraints.txt: the machine runs the code this checkout tests.
pin() { grep -i "^$1==" constraints.txt | head -1; }
rm -rf "$WHEELS" && mkdir -p "$WHEELS"
for package in monai pytorch-ignite pydantic pydantic_core annotated-types typing-inspection; do
  spec=$(pin "$package")
  [ -n "$spec" ] || { echo "gpu-wheels: $package is not pinned in constraints.txt" >&2; exit 1; }
  .venv/bin/python -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    --platform any -d "$WHEELS" "$spec" 2>&1 | { grep -v "^WARNING: Location 'file:" || true; }
done
du -sh "$WHEELS" | sed 's/^/gpu-wheels: /'
ls "$WHEELS"
