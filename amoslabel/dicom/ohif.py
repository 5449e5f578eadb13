"""Serve the prebuilt OHIF viewer (scripts/fetch-ohif.sh) on loopback, with its DICOMweb on the same origin.

One origin for everything: the static server also proxies ``/dicom-web/*`` upstream, so the browser never makes a
cross-origin request and nothing needs a CORS set-up. Upstream is the AMOS Label server's own ``/dicom-web``
(:mod:`amoslabel.server.viewer_dicomweb`: the access gate, the audit, and stores that become label versions), with
the browser's credentials forwarded - the review pages' session cookie, which the browser sends to this port too
(cookies do not depend on the port), or a bearer token; or, for a bare viewer in a test's private network, Orthanc
itself, with no credentials. Routes of the single-page app (``/segmentation?StudyInstanceUIDs=``) fall back to
index.html. ``/app-config.js`` is generated: OHIF's default data source is the DICOMweb root on this origin.
"""

from __future__ import annotations

import http.client
import json
import mimetypes
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Dict, Optional
from urllib.parse import urlsplit

from amoslabel.workspace import PROJECT_ROOT

DEFAULT_DIST = PROJECT_ROOT / ".cache" / "ohif" / "3.13.2" / "dist"
SAME_ORIGIN = "window.location.origin + '/dicom-web'"  # a JS expression: the proxy on the page's own origin
# Forwarded upstream with every proxied request: Host, so that Orthanc writes retrieve URLs back to this origin
PLAIN_HEADERS = ("Accept", "Content-Type", "Host", "Range")
# ... and, to the AMOS Label server only, who the browser is and whether the page is of this origin
CREDENTIAL_HEADERS = ("Cookie", "Authorization", "Origin", "Sec-Fetch-Site")

# OHIF shows a failed store as "request failed"; the server's reason (a refused SEG: unknown organ, another user's
# case...) is in the body. dicomweb-client calls this with the error before OHIF shows error.message.
SHOW_SERVER_MESSAGES = """window.config.httpErrorHandler = (error) => {
  let text = error.response;
  try { const body = JSON.parse(text); text = body.detail || body.message || text; } catch (e) {}
  if (text && typeof text === 'string') error.message = `${error.status}: ${text}`;
};
"""

# Python 3.11's table lacks these; a wasm module served as text/plain fails to compile in the browser.
mimetypes.add_type("application/wasm", ".wasm")
mimetypes.add_type("text/javascript", ".mjs")


def data_source(root_js: str) -> Dict[str, Any]:
    """OHIF's DICOMweb data source configuration; ``root_js`` is a JS expression giving the DICOMweb root."""
    return {
        "namespace": "@ohif/extension-default.dataSourcesModule.dicomweb",
        "sourceName": "dicomweb",
        "configuration": {
            "friendlyName": "AMOS Label Orthanc",
            "name": "orthanc",
            "wadoUriRoot": "@ROOT@",
            "qidoRoot": "@ROOT@",
            "wadoRoot": "@ROOT@",
            "qidoSupportsIncludeField": False,
            "supportsReject": False,
            "imageRendering": "wadors",
            "thumbnailRendering": "wadors",
            "enableStudyLazyLoad": True,
            "supportsFuzzyMatching": True,
            "supportsWildcard": True,
            "staticWado": False,
            "dicomUploadEnabled": False,
            "omitQuotationForMultipartRequest": True,
            "bulkDataURI": {"enabled": True},
            # OHIF 3.13 stores a label-map SEG (SOP class ...66.7, RLE) by default; ask for the binary SEG that
            # DICOM readers (ours, Slicer, highdicom) take, uncompressed
            "segmentation": {"store": {"defaultMode": "bitmap", "transferSyntaxUID": "1.2.840.10008.1.2.1"}},
        },
    }


def app_config(dicomweb_root: Optional[str] = None) -> str:
    """The ``app-config.js`` text: one DICOMweb data source (default), no oidc, no upload.

    Args:
        dicomweb_root: absolute DICOMweb root (e.g. ``http://127.0.0.1:8042/dicom-web``); None means the proxy on
            the page's own origin, which is what :class:`OhifServer` serves.
    """
    root_js = json.dumps(dicomweb_root.rstrip("/")) if dicomweb_root else SAME_ORIGIN
    config = {
        "routerBasename": "/",
        "extensions": [],
        "modes": [],
        "showStudyList": True,
        "maxNumberOfWebWorkers": 2,  # 2 cores here
        "showWarningMessageForCrossOrigin": False,
        "showCPUFallbackMessage": True,
        "showLoadingIndicator": True,
        "defaultDataSourceName": "dicomweb",
        "dataSources": [data_source(root_js)],
        # a SEG opens as an editable segmentation when it is double-clicked, without "open this segmentation?"
        "disableConfirmationPrompts": True,
    }
    body = json.dumps(config, indent=2).replace('"@ROOT@"', root_js)
    return (
        "/** Written by amoslabel.dicom.ohif: OHIF reads Orthanc over DICOMweb. */\n"
        f"window.config = {body};\n{SHOW_SERVER_MESSAGES}"
    )


class _Handler(SimpleHTTPRequestHandler):
    """Static files with SPA fallback, the generated app-config.js, and a /dicom-web proxy to Orthanc."""

    server: "_Server"

    def __init__(self, request: Any, client_address: Any, server: "_Server") -> None:
        super().__init__(request, client_address, server, directory=str(server.dist))

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
        if self.server.log is not None:
            self.server.log.write(f"{self.address_string()} {format % args}\n")

    def end_headers(self) -> None:
        # Cross-origin isolation lets cornerstone use SharedArrayBuffer; all resources are same-origin here.
        self.send_header("Cross-Origin-Opener-Policy", "same-origin")
        self.send_header("Cross-Origin-Embedder-Policy", "require-corp")
        super().end_headers()

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        path = urlsplit(self.path).path
        if path.startswith("/dicom-web/") or path == "/dicom-web":
            return self._proxy()
        if path == "/app-config.js":
            return self._send(self.server.config_js.encode(), "text/javascript")
        if path in ("/init-service-worker.js", "/sw.js"):
            # No service worker: it would cache an old app-config.js across test runs.
            return self._send(b"", "text/javascript")
        target = Path(self.translate_path(path))
        if path != "/" and not target.exists() and "." not in path.rsplit("/", 1)[-1]:
            self.path = "/index.html"  # a route of the app, not a file
        return super().do_GET()

    def do_POST(self) -> None:  # noqa: N802
        if urlsplit(self.path).path.startswith("/dicom-web/"):
            return self._proxy()
        self.send_error(405)

    def _send(self, body: bytes, content_type: str) -> None:
        self.send_response(200)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(body)

    def _proxy(self) -> None:
        upstream = urlsplit(self.server.upstream)
        body = None
        if self.command == "POST":
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        # Keep the browser's Host: with DicomWeb "Host" unset, Orthanc builds its retrieve URLs from it, so
        # they point back at this proxy (same origin) rather than at Orthanc's own port.
        keep = PLAIN_HEADERS + (CREDENTIAL_HEADERS if self.server.credentials else ())
        headers = {k: v for k, v in self.headers.items() if k.title() in keep}
        conn = http.client.HTTPConnection(upstream.hostname, upstream.port or 80, timeout=300)
        try:
            conn.request(self.command, self.path, body=body, headers=headers)
            reply = conn.getresponse()
            self.send_response(reply.status)
            for name, val in reply.getheaders():
                # http.client undoes chunking; HTTP/1.0 here ends the body by closing the connection.
                if name.lower() not in ("transfer-encoding", "connection", "keep-alive", "server"):
                    self.send_header(name, val)
            self.end_headers()
            while chunk := reply.read(1 << 16):
                self.wfile.write(chunk)
        except OSError as error:
            self.send_error(502, f"{self.server.upstream} did not answer: {error}")
        finally:
            conn.close()


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    dist: Path
    upstream: str
    credentials: bool
    config_js: str
    log: Any = None


class OhifServer:
    """OHIF on ``http://127.0.0.1:port``, proxying ``/dicom-web`` upstream, in a background thread.

    ``upstream`` is the AMOS Label server (``credentials=True``: the browser's session cookie, bearer token,
    ``Origin`` and ``Sec-Fetch-Site`` go with each request, and the server decides) or, for a bare viewer inside a
    test's private network namespace, Orthanc (``credentials=False``: nothing of the user's leaves this process,
    and anyone who reaches the port reads). The viewer's own files are public.

    Threads inherit the network namespace of the thread that starts them: start it where upstream is reachable.
    """

    def __init__(
        self,
        upstream: str,
        dist: str | Path = DEFAULT_DIST,
        port: int = 0,
        log_path: Path | None = None,
        *,
        credentials: bool,
    ):
        dist = Path(dist)
        if not (dist / "index.html").is_file():
            raise FileNotFoundError(f"no OHIF viewer in {dist}: run scripts/fetch-ohif.sh")
        self.httpd = _Server(("127.0.0.1", port), _Handler)
        self.httpd.dist = dist
        self.httpd.upstream = upstream.rstrip("/")
        self.httpd.credentials = credentials
        self.httpd.config_js = app_config()
        self.httpd.log = open(log_path, "a", buffering=1) if log_path else None
        self.port = self.httpd.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._thread = threading.Thread(target=self.httpd.serve_forever, name="ohif", daemon=True)

    def start(self) -> "OhifServer":
        """Serve in the background; returns self."""
        self._thread.start()
        return self

    def viewer_url(self, study_uid: str) -> str:
        """The viewer page of one study."""
        return f"{self.url}/viewer?StudyInstanceUIDs={study_uid}"

    def stop(self) -> None:
        """Stop serving and close the log."""
        self.httpd.shutdown()
        self.httpd.server_close()
        if self.httpd.log is not None:
            self.httpd.log.close()
