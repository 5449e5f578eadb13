#!/usr/bin/env bash
# Debian packages that some tests run for real: PostgreSQL (the review store's PostgreSQL test and a team of servers),
# HAProxy (the load balancer in front of a team), chromium
# (the web pages' and the OHIF viewer's browser tests), Orthanc with its DICOMweb plugin (the DICOMweb datastore), and
# iproute2 (brings up loopback inside the private network namespace those tests run in), and npm (fetches the
# prebuilt OHIF viewer).
# Installs what is missing when this runs as root with apt-get; otherwise says what is missing and goes on
# (the tests that need a package then fail with a message that names it).
set -euo pipefail

missing=()
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || missing+=(postgresql)
command -v chromium >/dev/null || missing+=(chromium)
command -v Orthanc >/dev/null || missing+=(orthanc)
[ -e /usr/share/orthanc/plugins/libOrthancDicomWeb.so ] || missing+=(orthanc-dicomweb)
command -v ip >/dev/null || missing+=(iproute2)
command -v unshare >/dev/null || missing+=(util-linux)
command -v npm >/dev/null || missing+=(npm)
command -v haproxy >/dev/null || [ -x /usr/sbin/haproxy ] || missing+=(haproxy)

if [ ${#missing[@]} -eq 0 ]; then
  exit 0
fi
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  echo "system packages: installing ${missing[*]} ..."
  DEBIAN_FRONTEND=noninteractive apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
else
  echo "system packages: missing ${missing[*]} (install them with apt-get as root); their tests will fail" >&2
fi
