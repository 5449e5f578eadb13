"""Serve the prebuilt OHIF viewer (scripts/fetch-ohif.sh) on loopback, reading from our Orthanc.

One origin for everything: the static server also proxies ``/dicom-web/*`` to Orthanc, so the browser never makes a
cross-origin request and Orthanc needs no CORS set-up. Routes of the single-page app (``/viewer?StudyInstanceUIDs=``)
fall back to index.html. ``/app-config.js`` is generated: OHIF's default data source is our DICOMweb root.
"""

from __future__ import annotations

import http.client
import json
import mimetypes
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Callable, Dict, Mapping, Optional
from urllib.parse import urlsplit

from amoslabel.workspace import PROJECT_ROOT

# (request headers, request path) -> the user the request acts for, or None to refuse it
Authorize = Callable[[Mapping[str, str], str], Optional[str]]
DEFAULT_DIST = PROJECT_ROOT / ".cache" / "ohif" / "3.13.2" / "dist"
SAME_ORIGIN = "window.location.origin + '/dicom-web'"  # a JS expression: the proxy on the page's own origin

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
    }
    body = json.dumps(config, indent=2).replace('"@ROOT@"', root_js)
    return f"/** Written by amoslabel.dicom.ohif: OHIF reads Orthanc over DICOMweb. */\nwindow.config = {body};\n"


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
        if self.server.authorize is not None:
            user = self.server.authorize(dict(self.headers.items()), self.path)
            if user is None:
                body = b'{"detail": "log in first: the review pages\' session, or Authorization: Bearer <token>"}'
                self.send_response(401)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.send_header("WWW-Authenticate", "Bearer")
                self.end_headers()
                self.wfile.write(body)
                return
        upstream = urlsplit(self.server.orthanc)
        body = None
        if self.command == "POST":
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        # Keep the browser's Host: with DicomWeb "Host" unset, Orthanc builds its retrieve URLs from it, so
        # they point back at this proxy (same origin) rather than at Orthanc's own port.
        keep = ("Accept", "Content-Type", "Host", "Range")  # our users' credentials stay here, never go to Orthanc
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
            self.send_error(502, f"Orthanc at {self.server.orthanc} did not answer: {error}")
        finally:
            conn.close()


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    dist: Path
    orthanc: str
    config_js: str
    log: Any = None
    authorize: Optional[Authorize] = None


class OhifServer:
    """OHIF on ``http://127.0.0.1:port``, proxying ``/dicom-web`` to Orthanc, in a background thread.

    ``authorize(headers, path)`` names the user a proxied request acts for (None: refused with 401); the static
    viewer files are public. ``authorize=None`` opens the proxy to anyone who reaches the port: only for a test
    inside its own network namespace.

    Threads inherit the network namespace of the thread that starts them: start it where Orthanc is reachable.
    """

    def __init__(
        self,
        orthanc_url: str,
        dist: str | Path = DEFAULT_DIST,
        port: int = 0,
        log_path: Path | None = None,
        *,
        authorize: Optional[Authorize],
    ):
        dist = Path(dist)
        if not (dist / "index.html").is_file():
            raise FileNotFoundError(f"no OHIF viewer in {dist}: run scripts/fetch-ohif.sh")
        self.httpd = _Server(("127.0.0.1", port), _Handler)
        self.httpd.dist = dist
        self.httpd.orthanc = orthanc_url.rstrip("/")
        self.httpd.config_js = app_config()
        self.httpd.log = open(log_path, "a", buffering=1) if log_path else None
        self.httpd.authorize = authorize
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
