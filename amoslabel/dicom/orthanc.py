"""A private Orthanc (the DICOMweb server OHIF and MONAI Label read): its config, its process, uploads and
DICOMweb (QIDO-RS / WADO-RS) helpers.

Orthanc 1.10 has no bind-address option: it listens on every interface of its network namespace. We turn remote
access off (it then answers only clients on loopback) and, in tests, run it inside a private network namespace
that holds nothing but ``lo`` (see tests/dicomweb/conftest.py), so it never listens on a real interface.
Run it by hand the same way::

    unshare -n sh -c 'ip link set lo up && Orthanc /path/to/orthanc.json'
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional

import requests

from amoslabel.processes import LoggedProcess
from amoslabel.errors import InputError

DICOMWEB_PLUGIN = "/usr/share/orthanc/plugins/libOrthancDicomWeb.so"
DICOM_JSON = "application/dicom+json"

# DICOM JSON tags used below (QIDO-RS and WADO-RS metadata answer with tags, not keywords)
STUDY_UID = "0020000D"
SERIES_UID = "0020000E"
SOP_UID = "00080018"
MODALITY = "00080060"
SERIES_INSTANCES = "00201209"  # NumberOfSeriesRelatedInstances


class UploadError(InputError):
    """A file that Orthanc refused (not DICOM, truncated, ...). The message names the file."""

    status = 422


@dataclass
class OrthancConfig:
    """What our Orthanc needs; :meth:`to_json` gives the Orthanc configuration file."""

    folder: Path
    http_port: int
    name: str = "AMOS Label Orthanc"
    username: Optional[str] = None  # set both to turn HTTP basic authentication on
    password: Optional[str] = None
    extra: Dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> Dict[str, Any]:
        """The Orthanc configuration as a dict."""
        auth = self.username is not None and self.password is not None
        config: Dict[str, Any] = {
            "Name": self.name,
            "StorageDirectory": str(self.folder / "storage"),
            "IndexDirectory": str(self.folder / "index"),
            "HttpPort": self.http_port,
            # Only loopback clients: Orthanc 1.10 cannot bind to 127.0.0.1 alone, so this is the guard it has.
            "RemoteAccessAllowed": False,
            # A loopback-only server in a private namespace needs no password; with one, it asks for it.
            "AuthenticationEnabled": auth,
            "DicomServerEnabled": False,  # no DIMSE port: everything goes over DICOMweb
            "SaveJobs": False,
            "Plugins": [DICOMWEB_PLUGIN],
            "DicomWeb": {
                "Enable": True,
                "Root": "/dicom-web/",
                "EnableWado": True,
                "WadoRoot": "/wado",
                "Ssl": False,
                # "Host" left unset on purpose: the plugin then builds retrieve URLs from the request's Host
                # header, port included; a fixed Host without the port gives URLs that lose it.
                "StudiesMetadata": "Full",
                "SeriesMetadata": "Full",
            },
        }
        if auth:
            config["RegisteredUsers"] = {self.username: self.password}
        config.update(self.extra)
        return config


def write_config(folder: str | Path, http_port: int, **options: Any) -> Path:
    """Write ``orthanc.json`` into ``folder`` (storage and index go inside it too) and return its path.

    Args:
        folder: Orthanc's own folder; created if missing.
        http_port: the HTTP port (DICOMweb lives at ``/dicom-web/``).
        **options: further :class:`OrthancConfig` fields (name, username, password, extra).
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "orthanc.json"
    path.write_text(json.dumps(OrthancConfig(folder, http_port, **options).to_json(), indent=2))
    return path


class OrthancProcess(LoggedProcess):
    """A real Orthanc process on ``config``'s folder, with its log kept for error messages."""

    def __init__(self, config_path: str | Path, executable: str = "Orthanc"):
        self.config_path = Path(config_path)
        config = json.loads(self.config_path.read_text())
        self.port = int(config["HttpPort"])
        self.url = f"http://127.0.0.1:{self.port}"
        self.dicomweb = f"{self.url}/dicom-web"
        binary = shutil.which(executable)
        if binary is None:
            raise FileNotFoundError(f"{executable} not found: apt-get install -y orthanc orthanc-dicomweb")
        log = self.config_path.parent / "orthanc.log"
        super().__init__([binary, str(self.config_path)], log, cwd=self.config_path.parent)

    def wait_ready(self, timeout: float = 60.0) -> Dict[str, Any]:
        """Wait until ``GET /system`` answers and the DICOMweb plugin is loaded; return /system's JSON."""
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"Orthanc exited with {self.process.returncode}:\n{self.tail()}")
            try:
                reply = session().get(f"{self.url}/system", timeout=2)
                if reply.ok:
                    plugins = session().get(f"{self.url}/plugins", timeout=5).json()
                    if "dicom-web" not in plugins:
                        raise RuntimeError(f"Orthanc runs without its DICOMweb plugin ({plugins}):\n{self.tail()}")
                    return reply.json()
            except requests.RequestException:
                pass
            time.sleep(0.2)
        raise TimeoutError(f"Orthanc not ready after {timeout}s:\n{self.tail()}")

    def __enter__(self) -> "OrthancProcess":
        self.wait_ready()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def session() -> requests.Session:
    """A requests session that ignores proxy variables: Orthanc is on loopback, never behind a proxy."""
    s = requests.Session()
    s.trust_env = False
    return s


def count_instances(url: str) -> int:
    """How many instances Orthanc at ``url`` stores."""
    reply = session().get(f"{url}/statistics", timeout=30)
    reply.raise_for_status()
    return int(reply.json()["CountInstances"])


def upload_file(url: str, path: str | Path) -> str:
    """POST one DICOM file to ``{url}/instances``; return its Orthanc instance id.

    Raises:
        UploadError: Orthanc refused the file (the message names the file and Orthanc's reason).
    """
    path = Path(path)
    reply = session().post(
        f"{url}/instances",
        data=path.read_bytes(),
        headers={"Content-Type": "application/dicom"},
        timeout=120,
    )
    try:
        answer = reply.json()
    except ValueError:
        answer = {}
    if not reply.ok or answer.get("Status") not in ("Success", "AlreadyStored"):
        reason = answer.get("Details") or answer.get("Message") or reply.text[:300]
        raise UploadError(f"Orthanc refused {path} (HTTP {reply.status_code}): {reason}")
    return str(answer["ID"])


def upload_series(url: str, folder: str | Path) -> List[str]:
    """Upload every file of ``folder`` (or one file) to Orthanc; return the instance ids in file order."""
    folder = Path(folder)
    files = [folder] if folder.is_file() else sorted(p for p in folder.iterdir() if p.is_file())
    if not files:
        raise UploadError(f"no files to upload in {folder}")
    return [upload_file(url, f) for f in files]


def qido(dicomweb: str, path: str, **params: Any) -> List[Dict[str, Any]]:
    """A QIDO-RS query, e.g. ``qido(root, "studies", PatientID="x")``; return the DICOM JSON list."""
    reply = session().get(f"{dicomweb}/{path}", params=params, headers={"Accept": DICOM_JSON}, timeout=60)
    reply.raise_for_status()
    return reply.json() if reply.content else []


def value(item: Dict[str, Any], tag: str) -> Any:
    """The first value of ``tag`` in a DICOM JSON item, or None."""
    values = item.get(tag, {}).get("Value") or [None]
    return values[0]


def list_studies(dicomweb: str) -> List[str]:
    """Study Instance UIDs that Orthanc serves over DICOMweb."""
    return [value(s, STUDY_UID) for s in qido(dicomweb, "studies")]


def list_series(dicomweb: str, study_uid: str) -> List[Dict[str, Any]]:
    """The series of a study as ``{"uid", "modality", "instances"}`` dicts."""
    return [
        {"uid": value(s, SERIES_UID), "modality": value(s, MODALITY), "instances": value(s, SERIES_INSTANCES)}
        for s in qido(dicomweb, f"studies/{study_uid}/series")
    ]


def series_metadata(dicomweb: str, study_uid: str, series_uid: str) -> List[Dict[str, Any]]:
    """WADO-RS metadata of every instance of a series (what OHIF reads before it shows a series)."""
    return qido(dicomweb, f"studies/{study_uid}/series/{series_uid}/metadata")


def fetch_series(dicomweb: str, study_uid: str, series_uid: str, folder: str | Path) -> List[Path]:
    """WADO-RS retrieve a whole series into ``folder`` as ``<SOPInstanceUID>.dcm`` files; return their paths."""
    from dicomweb_client.api import DICOMwebClient  # the multipart/related parsing is done well there

    client = DICOMwebClient(dicomweb, session=session())
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for ds in client.retrieve_series(study_uid, series_uid):
        path = folder / f"{ds.SOPInstanceUID}.dcm"
        ds.save_as(str(path), write_like_original=False)
        paths.append(path)
    return paths
