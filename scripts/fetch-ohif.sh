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
command -v npm >/dev/null || { echo "fetch-ohif: npm is missing (apt-get install -y npm)" >&2; exit 1; }

mkdir -p "$CACHE"
WORK="$(mktemp -d "$CACHE/.fetch.XXXXXX")"
trap 'rm -rf "$WORK"' EXIT

echo "fetch-ohif: npm pack @ohif/app@$VERSION (about 50 MB) into $WORK" >&2
# --ignore-scripts: we only want the tarball; the npm cache lives inside our cache folder, not in ~/.npm
(cd "$WORK" && npm pack --loglevel=error --ignore-scripts --cache "$CACHE/.npm" "@ohif/app@$VERSION" >/dev/null) ||
    { echo "fetch-ohif: npm pack @ohif/app@$VERSION failed (is registry.npmjs.org reachable?)" >&2; exit 1; }
TARBALL="$(ls "$WORK"/*.tgz)"
echo "fetch-ohif: extracting package/dist from $(basename "$TARBALL")" >&2
tar -xzf "$TARBALL" -C "$WORK" package/dist
[ -f "$WORK/package/dist/index.html" ] || { echo "fetch-ohif: no dist/index.html in the tarball" >&2; exit 1; }

# Move into place only when complete, so that an interrupted run never looks like a finished one.
rm -rf "$TARGET"
mkdir -p "$TARGET"
mv "$WORK/package/dist" "$TARGET/dist"
echo "fetch-ohif: OHIF $VERSION ready in $TARGET/dist" >&2
echo "$TARGET/dist"
