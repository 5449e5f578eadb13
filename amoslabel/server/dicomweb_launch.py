"""The run command's DICOMweb form: a private Orthanc with the sample series, OHIF in front of it, and the server on it.

``make run-dicomweb`` (``python -m amoslabel serve-dicomweb``):
1. writes an Orthanc configuration with remote access off (Orthanc refuses HTTP clients that are not on this
   machine) and its DICOM port off, and starts Orthanc (Debian's ``orthanc`` and ``orthanc-dicomweb``);
2. sends the sample DICOM series from ``../shared/data/dicom`` to it, checked and de-identified (PS3.15 basic
   profile; the mapping to the original UIDs stays in ``<workspace>/.amoslabel/private``), once;
3. serves the prebuilt OHIF viewer (``scripts/fetch-ohif.sh``; skipped with a message if npm cannot fetch it) with
   ``/dicom-web`` proxied to the server's own ``/dicom-web`` (the access gate: the review pages' session or a bearer
   token; stores become label versions), and gives the review pages its URL;
4. starts the MONAI Label server with ``--studies <orthanc>/dicom-web``.

Orthanc 1.10 cannot bind to loopback only: it listens on every interface, and ``RemoteAccessAllowed: false`` is what
keeps other machines out. On a shared network, run this inside ``unshare -n`` as the tests do.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Dict, Optional

from amoslabel.dicom.send import send_to_dicomweb
from amoslabel.dicom.orthanc import OrthancProcess, count_instances, write_config
from amoslabel.server.launch import run
from amoslabel.workspace import PROJECT_ROOT, SHARED_DATA

SAMPLE_SERIES = ("ts_ct_series_uncompressed", "chaos_ct_series", "dcmqi_ct_3slice")
OHIF_URL_ENV = "AMOSLABEL_OHIF_URL"


def _fetch_ohif() -> Optional[Path]:
    done = subprocess.run([str(PROJECT_ROOT / "scripts" / "fetch-ohif.sh")], capture_output=True, text=True)
    if done.returncode != 0:
        print(f"[amoslabel] OHIF viewer not available (scripts/fetch-ohif.sh): {done.stderr.strip()[-300:]}")
        return None
    return Path(done.stdout.strip().splitlines()[-1])


def serve_dicomweb(
    workspace: Path, host: str, port: int, conf: Dict[str, str], orthanc_port: int = 8042, ohif_port: int = 3000
) -> int:
    """Run Orthanc (with the de-identified samples), OHIF and the server until the server stops."""
    workspace = Path(workspace).resolve()
    orthanc = OrthancProcess(write_config(workspace / "orthanc", orthanc_port))
    ohif = None
    try:
        orthanc.wait_ready()
        print(f"[amoslabel] Orthanc {orthanc.url} (remote access off), DICOMweb at {orthanc.dicomweb}", flush=True)
        if count_instances(orthanc.url) == 0:
            for name in SAMPLE_SERIES:
                for sent in send_to_dicomweb(SHARED_DATA / "dicom" / name, orthanc.url, workspace):
                    print(f"[amoslabel] {name}: {sent.instances} instances, de-identified, as {sent.series_uid}")
        os.environ.setdefault("MONAI_LABEL_DICOMWEB_CACHE_PATH", str(workspace / "cache"))
        dist = _fetch_ohif()
        if dist is not None:
            from amoslabel.dicom.ohif import OhifServer

            ohif = OhifServer(f"http://127.0.0.1:{port}", dist, port=ohif_port, credentials=True).start()
            os.environ[OHIF_URL_ENV] = f"http://127.0.0.1:{ohif_port}"
            print(f"[amoslabel] OHIF viewer at http://127.0.0.1:{ohif_port} (log in at /review first)", flush=True)
        return run(orthanc.dicomweb, host, port, conf, workspace, "final")
    finally:
        if ohif is not None:
            ohif.stop()
        orthanc.stop()
