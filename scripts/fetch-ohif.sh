#!/bin/sh
# Fetches the prebuilt OHIF viewer (npm package @ohif/app, whose package/dist/ is a built viewer: no build step)
# into .cache/ohif/<version>/dist. Idempotent: does nothing when dist/index.html is already there.
# Usage: scripts/fetch-ohif.sh [version]   (prints the dist folder on its last line)
set -eu

VERSION="${1:-${OHIF_VERSION:-3.13.2}}"
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
CACHE="${OHIF_CACHE:-$ROOT/.cache/ohif}"
TARGET="$CACHE/$VERSION"

if [ -f "$TARGET/dist/index.html" ]; then
    echo "fetch-ohif: @ohif/app@$VERSION already in $TARGET/dist, nothing to do" >&2
    echo "$TARGET/dist"
    exit 0
fi
mkdir -p "$CACHE"
WORK="$(mktemp -d "$CACHE/.fetch.XXXXXX")"
trap 'rm -rf "$WORK"' EXIT
TARBALL="$("$ROOT/scripts/npm-pack.sh" "@ohif/app@$VERSION" "$CACHE" "$WORK")"  # about 50 MB
echo "fetch-ohif: extracting package/dist from $(basename "$TARBALL")" >&2
tar -xzf "$TARBALL" -C "$WORK" package/dist
[ -f "$WORK/package/dist/index.html" ] || { echo "fetch-ohif: no dist/index.html in the tarball" >&2; exit 1; }

# Move into place only when complete, so that an interrupted run never looks like a finished one.
rm -rf "$TARGET"
mkdir -p "$TARGET"
mv "$WORK/package/dist" "$TARGET/dist"
echo "fetch-ohif: OHIF $VERSION ready in $TARGET/dist" >&2
echo "$TARGET/dist"
