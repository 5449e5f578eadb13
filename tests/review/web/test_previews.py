"""The previews, the slice viewer's data and the DICOM SEG coding colour each organ from the one organ table."""

from __future__ import annotations

import io

import numpy as np
import SimpleITK as sitk
from PIL import Image

from amoslabel.dicom.seg import ORGAN_CODES, _segment_json, coding_for, rgb_to_dicom_lab
from amoslabel.organs import ORGAN_BY_ID, ORGANS
from review.web.previews import VolumeCache, render
from review.web.slice_viewer import organ_colours


def _volume(array: np.ndarray, path):
    image = sitk.GetImageFromArray(array)
    image.SetSpacing((1.0, 1.0, 1.0))
    sitk.WriteImage(image, str(path))
    return VolumeCache().get(path)


def test_previews_viewer_and_seg_use_the_organ_table(tmp_path):
    # a 15 x 15 x 1 scan, uniform grey at the CT window's centre, with a 1-voxel stripe of each organ along x
    ids = np.repeat(np.arange(1, 16, dtype=np.uint8)[None, :], 15, axis=0)[None]
    scan = _volume(np.full(ids.shape, 40, np.int16), tmp_path / "scan.nii.gz")
    label = _volume(ids, tmp_path / "label.nii.gz")
    png = render(scan, "axial", (7, 7, 0), "CT", label=label)
    picture = np.asarray(Image.open(io.BytesIO(png)).convert("RGB"), dtype=float)
    grey = 127  # 40 HU: the middle of the CT window -160..240
    row = picture[picture.shape[0] // 2]
    for o in ORGANS:
        column = int((o.id - 1 + 0.5) * picture.shape[1] / 15)  # the stripe's centre after scaling
        expected = 0.55 * grey + 0.45 * np.asarray(o.rgb)
        assert np.abs(row[column] - expected).max() <= 4, o.name  # (bilinear scaling blends in a neighbour)

    assert [(c["id"], tuple(c["rgb"])) for c in organ_colours()] == [(o.id, o.rgb) for o in ORGANS]
    for c in ORGAN_CODES:  # every coding, the three of label 15 included
        assert c.rgb == ORGAN_BY_ID[c.organ_id].rgb
        written = _segment_json(1, c, "AUTOMATIC", "AMOS Label")["RecommendedDisplayCIELabValue"]
        assert written == list(rgb_to_dicom_lab(ORGAN_BY_ID[c.organ_id].rgb))
    assert coding_for(15, "M").rgb == coding_for(15, "F").rgb == ORGAN_BY_ID[15].rgb
