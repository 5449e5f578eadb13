#!/bin/sh
# Fetches the NiiVue browser bundle (npm package @niivue/niivue, BSD-2-Clause) into .cache/niivue/<version>/ and
# keeps only the one self-contained file the review case page's slice viewer needs: package/dist/index.js, an ES
# module with no imports, no chunks and no workers (fflate, gl-matrix, nifti-reader-js, zarrita inlined; no build
# step), served by the server itself (no CDN).
# Idempotent: does nothing when the file is already there.
# Usage: scripts/fetch-niivue.sh [version]   (prints the path of the kept file on its last line)
set -eu

VERSION="${1:-${NIIVUE_VERSION:-0.69.0}}"
SRC=dist/index.js
KEEP=niivue.esm.js
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
CACHE="${NIIVUE_CACHE:-$ROOT/.cache/niivue}"
TARGET="$CACHE/$VERSION"

if [ -f "$TARGET/$KEEP" ]; then
    echo "fetch-niivue: @niivue/niivue@$VERSION already in $TARGET, nothing to do" >&2
    echo "$TARGET/$KEEP"
    exit 0
fi

mkdir -p "$CACHE"
WORK="$(mktemp -d "$CACHE/.fetch.XXXXXX")"
trap 'rm -rf "$WORK"' EXIT
TARBALL="$("$ROOT/scripts/npm-pack.sh" "@niivue/niivue@$VERSION" "$CACHE" "$WORK")"  # about 7 MB
echo "fetch-niivue: extracting package/$SRC from $(basename "$TARBALL")" >&2
tar -xzf "$TARBALL" -C "$WORK" "package/$SRC" package/package.json
[ -s "$WORK/package/$SRC" ] || { echo "fetch-niivue: no $SRC in the tarball" >&2; exit 1; }
# the bundle must stay self-contained: a static import or export-from would need more files beside it
if grep -Eq '^(import|export) [^;]* from ["'\'']' "$WORK/package/$SRC"; then
    echo "fetch-niivue: $SRC imports other modules; this script keeps a single file" >&2; exit 1
fi
# drop the source-map comment: the .map (5 MB) is not kept, and a dangling one only makes devtools complain
sed -i '/^\/\/# sourceMappingURL=/d' "$WORK/package/$SRC"

LICENSE="$(sed -n 's/^ *"license": *"\([^"]*\)".*/\1/p' "$WORK/package/package.json")"
{
    echo "package: @niivue/niivue@$VERSION"
    echo "file: package/$SRC (kept as $KEEP)"
    echo "license: $LICENSE (the npm tarball carries no LICENSE file; text: https://github.com/niivue/niivue/blob/main/LICENSE)"
    echo "tarball_sha256: $(sha256sum "$TARBALL" | cut -d' ' -f1)"
    echo "file_sha256: $(sha256sum "$WORK/package/$SRC" | cut -d' ' -f1)"
    echo "file_bytes: $(wc -c <"$WORK/package/$SRC")"
} >"$WORK/PROVENANCE"

# Move into place only when complete, so that an interrupted run never looks like a finished one.
mkdir -p "$TARGET"
mv "$WORK/PROVENANCE" "$TARGET/PROVENANCE"
mv "$WORK/package/$SRC" "$TARGET/$KEEP"
echo "fetch-niivue: NiiVue $VERSION ($(wc -c <"$TARGET/$KEEP") bytes, $LICENSE) ready in $TARGET" >&2
echo "$TARGET/$KEEP"
