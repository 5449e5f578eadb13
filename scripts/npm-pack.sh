#!/bin/sh
# Downloads one npm package's tarball (no install, no scripts run) into a work folder; prints the tarball's path.
# The npm cache lives inside the given cache folder, not in ~/.npm. Used by fetch-ohif.sh and fetch-niivue.sh.
# Usage: scripts/npm-pack.sh PACKAGE@VERSION CACHE_DIR WORK_DIR
set -eu
SPEC="$1"; CACHE="$2"; WORK="$3"
command -v npm >/dev/null || { echo "npm-pack: npm is missing (apt-get install -y npm)" >&2; exit 1; }
echo "npm-pack: npm pack $SPEC into $WORK" >&2
(cd "$WORK" && npm pack --loglevel=error --update-notifier=false --fund=false --ignore-scripts --cache "$CACHE/.npm" "$SPEC" >/dev/null) ||
    { echo "npm-pack: npm pack $SPEC failed (is registry.npmjs.org reachable?)" >&2; exit 1; }
ls "$WORK"/*.tgz
