"""STOW-RS bodies: what we write reads back; what a viewer may send wrongly is refused with the reason."""

from __future__ import annotations

import io

import pydicom
import pytest
from pydicom.dataset import FileMetaDataset

from amoslabel.dicom.stow import MAX_INSTANCES, read_stow, write_stow
from amoslabel.errors import InputError


def instance(uid: str) -> pydicom.Dataset:
    ds = pydicom.Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = pydicom.uid.ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = pydicom.uid.SegmentationStorage
    ds.file_meta.MediaStorageSOPInstanceUID = uid
    ds.SOPClassUID, ds.SOPInstanceUID, ds.Modality = pydicom.uid.SegmentationStorage, uid, "SEG"
    return ds


def test_a_written_store_reads_back():
    body, content_type = write_stow([instance("1.2.3"), instance("1.2.4")])
    assert content_type.startswith('multipart/related; type="application/dicom"; boundary=')
    assert [ds.SOPInstanceUID for ds in read_stow(body, content_type)] == ["1.2.3", "1.2.4"]


def test_what_dicomweb_client_sends_reads_too():
    """OHIF stores through dicomweb-client's JS twin; the Python one writes the same message."""
    from dicomweb_client.api import DICOMwebClient

    encoded = io.BytesIO()
    instance("1.2.5").save_as(encoded, write_like_original=False)
    client = DICOMwebClient("http://127.0.0.1:9")
    content_type = 'multipart/related; type="application/dicom"; boundary=0f3cf5c0-0025-11e2-a8a3'
    body = client._encode_multipart_message([encoded.getvalue()], content_type)
    assert [ds.SOPInstanceUID for ds in read_stow(body, content_type)] == ["1.2.5"]


@pytest.mark.parametrize(
    "body, content_type, message",
    [
        (b"{}", "application/json", "multipart/related"),
        (b"--x\r\n\r\nabc\r\n--x--", "multipart/related", "no boundary"),
        (b"--x\r\nContent-Type: application/json\r\n\r\n{}\r\n--x--", "multipart/related; boundary=x", "JSON"),
        (b"--x\r\nContent-Type: application/dicom\r\n\r\nnot dicom\r\n--x--", "multipart/related; boundary=x", "DICOM"),
        (b"--x--", "multipart/related; boundary=x", "no DICOM instance"),
    ],
)
def test_bad_stores_are_refused_with_the_reason(body, content_type, message):
    with pytest.raises(InputError, match=message):
        read_stow(body, content_type)


def test_too_many_instances_are_refused():
    body, content_type = write_stow([instance(f"1.2.{i}") for i in range(MAX_INSTANCES + 1)])
    with pytest.raises(InputError, match=f"at most {MAX_INSTANCES}"):
        read_stow(body, content_type)
