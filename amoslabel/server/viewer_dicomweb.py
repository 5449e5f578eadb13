"""The server's DICOMweb endpoint for the OHIF viewer: reads go to the DICOM server; a stored SEG becomes a label
version of the logged-in user before the DICOM server gets it.

``/dicom-web/...`` exists on a DICOMweb datastore only. Like every route it is behind the access gate
(:mod:`amoslabel.server.access`): a bearer token, or the review pages' session cookie sent by a same-origin page
(the OHIF viewer's own port forwards it here, :mod:`amoslabel.dicom.ohif`); reads are audited once per user and
series.

* ``GET``/``HEAD``: forwarded to the datastore's DICOMweb server and streamed back. The request's ``Host`` goes
  with it, so the retrieve URLs Orthanc writes into its answers point back at the viewer's origin.
* ``POST /dicom-web/studies`` (STOW-RS, OHIF's *Export → Store*): each instance must be a SEG on the series of a
  case of this server. It is read with our SEG reader onto that series' grid (organ codes, frames on the grid, at
  least one painted voxel), recorded as a label version by the logged-in user (a junior's draft, a reviewer's
  edit: :meth:`review.service.ReviewService.save_from_dicomweb`), renamed after that version
  (:mod:`amoslabel.dicom.naming`: the description the user typed may hold anything), and only then forwarded. A
  refused store is a 4xx whose message OHIF shows, and nothing is stored anywhere. When the DICOM server fails after
  the version was recorded, the SEG is kept and sent at the next sync; the answer says so.
"""

from __future__ import annotations

import json
import logging
import re
from typing import Any, Dict, List, Tuple

import anyio
import httpx
import pydicom
import SimpleITK as sitk
from fastapi import Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.background import BackgroundTask

from amoslabel.data.dicomweb import AmosDicomWebDatastore
from amoslabel.dicom.naming import seg_description, seg_uids
from amoslabel.dicom.seg import read_seg
from amoslabel.dicom.stow import read_stow, write_stow
from amoslabel.errors import InputError, Unprocessable
from amoslabel.server.identity import principal_of
from review.auth import Forbidden
from review.service import ReviewService

log = logging.getLogger(__name__)

PATH = "/dicom-web"
MAX_STORE_BYTES = 512 << 20  # a SEG of a 512 x 512 x 1,000 CT, 15 organs, bit-packed, is about 60 MB
_FORWARDED_REQUEST = ("accept", "range", "host", "if-none-match", "if-modified-since")
_HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "content-length", "server", "date"}


class ViewerDicomWeb:
    """``/dicom-web/{path}`` of one server: a read proxy, and the STOW-RS store that records label versions."""

    def __init__(self, service: ReviewService, datastore: AmosDicomWebDatastore):
        self.service = service
        self.datastore = datastore
        self.client = httpx.AsyncClient(timeout=httpx.Timeout(300.0, connect=10.0))

    def install(self, fastapi_app, override_route, api_prefix: str = "") -> None:
        """Serve the endpoint on ``fastapi_app`` (before MONAI Label's routes)."""
        path = f"{api_prefix}{PATH}/{{path:path}}"
        override_route(fastapi_app, path, self.read, ["GET", "HEAD"], include_in_schema=False)
        override_route(fastapi_app, path, self.store, ["POST"], tags=["DICOMweb"], summary="Store a SEG (STOW-RS)")

    async def read(self, request: Request, path: str) -> Response:
        """A QIDO-RS or WADO-RS read, streamed from the DICOM server; for a senior, without the SEG series they may
        not see yet (other seniors' edits of a round they have not voted in: :mod:`review.blinding`)."""
        hidden = await self._hidden_series(request, path)
        if hidden and any(uid in hidden for uid in _SERIES_IN_PATH.findall(path)):
            return JSONResponse({"detail": "no such series"}, 404)
        headers = {k: v for k, v in request.headers.items() if k.lower() in _FORWARDED_REQUEST}
        url = f"{self.datastore.url}/{path}"
        if hidden:  # the listing is filtered whole; the blind reader's lists are small JSON
            try:
                upstream = await self.client.get(url, params=request.query_params, headers=headers)
            except httpx.HTTPError as error:
                return JSONResponse({"detail": f"the DICOM server did not answer: {type(error).__name__}"}, 502)
            return _without_series(upstream, hidden)
        try:
            upstream = await self.client.send(
                self.client.build_request(request.method, url, params=request.query_params, headers=headers),
                stream=True,
            )
        except httpx.HTTPError as error:
            return JSONResponse({"detail": f"the DICOM server did not answer: {type(error).__name__}"}, 502)
        return StreamingResponse(
            upstream.aiter_raw(),
            status_code=upstream.status_code,
            headers={k: v for k, v in upstream.headers.items() if k.lower() not in _HOP_BY_HOP},
            background=BackgroundTask(upstream.aclose),
        )

    async def _hidden_series(self, request: Request, path: str) -> set:
        who = principal_of(request)
        study = _STUDY_IN_PATH.match(path)
        if who is None or who.role != "senior" or study is None:
            return set()
        return await anyio.to_thread.run_sync(self.service.hidden_seg_series, who, study.group(1))

    async def store(self, request: Request, path: str) -> Response:
        """STOW-RS from a viewer: check, record, rename, forward (see the module's description)."""
        if path.rstrip("/").split("/")[0] != "studies":
            raise InputError(f"a store goes to {PATH}/studies (STOW-RS), not {PATH}/{path[:80]}", status=404)
        size = int(request.headers.get("content-length") or 0)
        if size > MAX_STORE_BYTES:
            raise InputError(f"a store may be at most {MAX_STORE_BYTES >> 20} MB", status=413)
        who = principal_of(request)
        if who is None:
            raise Forbidden("auth is off: a store from the viewer names no user, so it cannot become a label version")
        body = await request.body()
        instances = read_stow(body, request.headers.get("content-type", ""))
        # reading and recording take seconds (a SEG of a whole CT): in the thread pool, never on the event loop
        recorded = await anyio.to_thread.run_sync(self._record_all, who, instances)
        stored = [ds for ds, _ in recorded]
        forward, content_type = write_stow(stored)
        headers = {"content-type": content_type, "accept": "application/dicom+json"}
        if "host" in request.headers:
            headers["host"] = request.headers["host"]
        try:
            reply = await self.client.post(f"{self.datastore.url}/studies", content=forward, headers=headers)
        except httpx.HTTPError as error:
            reply = None
            failure = f"{type(error).__name__}: {error}"
        else:
            failure = "" if reply.status_code < 300 else f"HTTP {reply.status_code}: {reply.text[:300]}"
        if failure:
            for ds in stored:  # the versions stand; their SEGs go at the next sync
                self.datastore.keep_for_resend(ds)
            versions = ", ".join(f"v{notice['version']}" for _, notice in recorded)
            return JSONResponse(
                {
                    "detail": f"recorded as label version(s) {versions}; the DICOM server did not take the SEG "
                    f"({failure}): it is kept and sent again at the next sync"
                },
                status_code=502,
            )
        # what each save did (review.save_answers), beside the DICOM server's answer: its body is DICOM JSON,
        # which has no place for it
        saved = await anyio.to_thread.run_sync(
            lambda: [self.service.save_answer(who.name, notice["case_id"]) for _, notice in recorded]
        )
        return Response(
            reply.content,
            status_code=reply.status_code,
            media_type=reply.headers.get("content-type", "application/dicom+json"),
            headers={SAVED_HEADER: json.dumps(saved)},
        )

    def _record_all(self, who, instances: List[pydicom.Dataset]) -> List[Tuple[pydicom.Dataset, Dict[str, Any]]]:
        checked = [self._checked(ds, who) for ds in instances]  # every instance is checked before any is recorded
        out = []
        for ds, case_id, label in checked:
            notice = self.service.save_from_dicomweb(who, case_id, label)
            log.info(
                "DICOMweb store: %s of %s by %s", f"{notice['kind'].value} v{notice['version']}", case_id, who.name
            )
            out.append((_renamed(ds, notice), notice))
        return out

    def _checked(self, ds: pydicom.Dataset, who):
        """(the SEG, its case, its label map on the case's grid); refused with the reason otherwise. Whether ``who``
        may save on the case is answered before the SEG's frames are read."""
        if ds.get("SOPClassUID") != pydicom.uid.SegmentationStorage:
            raise InputError(
                f"only segmentations (DICOM SEG) are stored from the viewer; this is {ds.get('Modality', '?')} "
                f"(SOP class {ds.get('SOPClassUID', 'missing')})",
                status=415,
            )
        referenced = [str(s.get("SeriesInstanceUID", "")) for s in ds.get("ReferencedSeriesSequence", [])]
        if len(referenced) != 1:
            raise Unprocessable(
                f"the SEG must reference exactly one series (the case's scan); it names {len(referenced)}"
            )
        case_id = referenced[0]
        if not self.datastore.has_image(case_id):
            raise Unprocessable(f"the SEG is on series {case_id[:80]}, which is not a case of this server")
        self.service.workflow.check_may_save(who, case_id)
        if int(ds.get("NumberOfFrames", 0) or 0) == 0:
            raise Unprocessable("the SEG has no frames: nothing is painted")
        label = read_seg(ds, self.datastore.series_folder(case_id))
        if not sitk.GetArrayViewFromImage(label).any():
            raise Unprocessable("the SEG paints no voxel of any organ: nothing to record")
        return ds, case_id, label


SAVED_HEADER = "X-Amos-Label-Saved"  # JSON: a list of review.save_answers answers, one per stored SEG
_STUDY_IN_PATH = re.compile(r"studies/([0-9.]+)")
_SERIES_IN_PATH = re.compile(r"series/([0-9.]+)")
_SERIES_TAG = "0020000E"


def _without_series(upstream: httpx.Response, hidden: set) -> Response:
    """A DICOM JSON answer without the entries of ``hidden`` series (anything else passed on as it came)."""
    headers = {k: v for k, v in upstream.headers.items() if k.lower() not in _HOP_BY_HOP}
    if upstream.status_code == 200 and "json" in upstream.headers.get("content-type", ""):
        try:
            entries = upstream.json()
        except ValueError:
            entries = None
        if isinstance(entries, list):
            kept = [
                e
                for e in entries
                if not (isinstance(e, dict) and (e.get(_SERIES_TAG, {}).get("Value") or [None])[0] in hidden)
            ]
            headers.pop("content-encoding", None)
            return JSONResponse(kept, status_code=200, headers=headers, media_type=upstream.headers["content-type"])
    return Response(upstream.content, status_code=upstream.status_code, headers=headers)


def _renamed(ds: pydicom.Dataset, notice: Dict[str, Any]) -> pydicom.Dataset:
    """The SEG under the name and UIDs of the version it became."""
    ds.SeriesDescription = seg_description(notice["kind"], notice["version"], notice["round"], notice["author"])
    ds.SeriesInstanceUID, ds.SOPInstanceUID = seg_uids(notice["case_id"], notice["version"], notice["kind"])
    if getattr(ds, "file_meta", None) is not None:
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.ContentCreatorName = ""  # a person's name has no place here; the description names a pseudonym
    return ds
