"""DICOM SEG output and input for the 15 AMOS organs, coded with SNOMED CT concepts from DICOM PS3.16.

Codes: every segmented property type is the SNOMED CT concept that pydicom's transcription of PS3.16 lists in
CID 7192 "Anatomical Structure Segmentation Property Types" (``pydicom/sr/_concepts_dict.py``), under the category
SCT 123037004 "Anatomical Structure" (CID 7150). PS3.16 has no laterality-specific concepts for the kidneys and
adrenal glands; following dcmqi's ``SegmentationCategoryTypeModifier-SlicerGeneralAnatomy.json`` (the 3D Slicer
anatomy table, ``"paired": "Y"`` types), we write the organ code plus a CID 244 "Laterality" modifier (SCT 24028007
Right, 7771000 Left) in SegmentedPropertyTypeModifierCodeSequence.

Segment numbers are 1..n in the file (PS3.3 C.8.20.2 wants them consecutive), so readers must map segments to AMOS
ids by their codes, which is what :func:`read_seg` does.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import pydicom
import pydicom_seg
import SimpleITK as sitk
from pydicom.sr._snomed_dict import mapping as _SNOMED_RT_TO_CT

from amoslabel.dicom.series import sorted_slices, series_headers
from amoslabel.errors import InputError, Unprocessable
from amoslabel.organs import MAX_LABEL_ID, ORGAN_BY_ID

logger = logging.getLogger(__name__)

ALGORITHM_TYPES = ("AUTOMATIC", "SEMIAUTOMATIC", "MANUAL")
_GRID_TOL = 0.05  # voxels: a SEG frame further than this from a series voxel centre is on another grid
_DIR_TOL = 1e-3  # direction cosines that differ more than this describe another orientation


@dataclass(frozen=True)
class Code:
    """One coded concept (Code Value, Coding Scheme Designator, Code Meaning)."""

    value: str
    scheme: str
    meaning: str

    def as_json(self) -> Dict[str, str]:
        """The dcmqi meta-information form of this code."""
        return {"CodeValue": self.value, "CodingSchemeDesignator": self.scheme, "CodeMeaning": self.meaning}


@dataclass(frozen=True)
class OrganCoding:
    """How one AMOS label is coded in a SEG segment.

    Attributes:
        organ_id: the AMOS label value.
        label: SegmentLabel written to the file.
        type: SegmentedPropertyType (CID 7192).
        laterality: CID 244 modifier for paired organs, else None.
        sex: "M" or "F" for the two sex-specific codings of label 15, "unknown" for its region coding, else None.
    """

    organ_id: int
    label: str
    type: Code
    laterality: Optional[Code]
    sex: Optional[str] = None

    @property
    def rgb(self) -> Tuple[int, int, int]:
        """The organ's display colour, from the organ table (written as RecommendedDisplayCIELabValue)."""
        return ORGAN_BY_ID[self.organ_id].rgb


ANATOMICAL_STRUCTURE = Code("123037004", "SCT", "Anatomical Structure")  # CID 7150
RIGHT = Code("24028007", "SCT", "Right")  # CID 244
LEFT = Code("7771000", "SCT", "Left")  # CID 244

# Colours: each organ's one display colour in amoslabel.organs (which says where and why it departs from 3D Slicer's
# GenericAnatomyColors), so a SEG opened in Slicer or OHIF shows the colours of the review pages. The three codings of
# label 15 share its colour: they are one label.
# Label 15 is one label for two organs, and PS3.16 has no concept for "prostate or uterus" (CID 7192 has only the
# sex-specific Prostate, Uterus, Male/Female internal genitalia). A segment holds one organ in one patient, so we
# code the organ that patient has, from PatientSex (or an explicit override); with the sex unknown, writing label 15
# fails rather than put a possibly wrong anatomy code into a clinical record, unless the caller asks for the region
# coding (patient_sex="unknown": SCT 12921003 Pelvic structure).
ORGAN_CODES: Tuple[OrganCoding, ...] = (
    OrganCoding(1, "spleen", Code("78961009", "SCT", "Spleen"), None),
    OrganCoding(2, "right kidney", Code("64033007", "SCT", "Kidney"), RIGHT),
    OrganCoding(3, "left kidney", Code("64033007", "SCT", "Kidney"), LEFT),
    OrganCoding(4, "gallbladder", Code("28231008", "SCT", "Gallbladder"), None),
    OrganCoding(5, "esophagus", Code("32849002", "SCT", "Esophagus"), None),
    OrganCoding(6, "liver", Code("10200004", "SCT", "Liver"), None),
    OrganCoding(7, "stomach", Code("69695003", "SCT", "Stomach"), None),
    OrganCoding(8, "aorta", Code("15825003", "SCT", "Aorta"), None),
    OrganCoding(9, "inferior vena cava", Code("64131007", "SCT", "Inferior Vena Cava"), None),
    OrganCoding(10, "pancreas", Code("15776009", "SCT", "Pancreas"), None),
    OrganCoding(11, "right adrenal gland", Code("23451007", "SCT", "Adrenal gland"), RIGHT),
    OrganCoding(12, "left adrenal gland", Code("23451007", "SCT", "Adrenal gland"), LEFT),
    OrganCoding(13, "duodenum", Code("38848004", "SCT", "Duodenum"), None),
    OrganCoding(14, "bladder", Code("89837001", "SCT", "Bladder"), None),
    OrganCoding(15, "prostate", Code("41216001", "SCT", "Prostate"), None, sex="M"),
    OrganCoding(15, "uterus", Code("35039007", "SCT", "Uterus"), None, sex="F"),
    # Only when the caller says so (patient_sex="unknown": the server, for series whose PatientSex is empty): the
    # region, which is true of either organ, rather than a guess between them.
    OrganCoding(15, "prostate/uterus", Code("12921003", "SCT", "Pelvic structure"), None, "UNKNOWN"),
)


def coding_for(organ_id: int, sex: Optional[str] = None) -> OrganCoding:
    """The coding of one AMOS label; ``sex`` ("M"/"F") is needed for label 15 only."""
    sex = sex.strip().upper() if sex else None
    matches = [c for c in ORGAN_CODES if c.organ_id == organ_id and (c.sex is None or c.sex == sex)]
    if not matches:
        if organ_id == 15:
            raise Unprocessable(
                f"label 15 (prostate/uterus) needs the patient's sex to be coded (PatientSex is {sex!r}); "
                "pass patient_sex='M' or 'F'"
            )
        raise Unprocessable(f"no organ with id {organ_id}")
    return matches[0]


def _sct(code: Code) -> Tuple[str, str]:
    """(scheme, value) with SNOMED RT ("SRT", e.g. T-62000, as dcmqi wrote before 2019) mapped to SNOMED CT."""
    if code.scheme in ("SRT", "SNM3") and code.value in _SNOMED_RT_TO_CT["SRT"]:
        return "SCT", _SNOMED_RT_TO_CT["SRT"][code.value]
    return code.scheme, code.value


def organ_id_for(type_code: Code, modifiers: Sequence[Code] = ()) -> Optional[int]:
    """The AMOS id of a segment's property type and type modifiers, or None if it is none of the 15 organs."""
    key = _sct(type_code)
    sides = {_sct(m) for m in modifiers} & {_sct(RIGHT), _sct(LEFT)}
    for c in ORGAN_CODES:
        if _sct(c.type) != key:
            continue
        if c.laterality is None or {_sct(c.laterality)} == sides:
            return c.organ_id
    return None


# OHIF 3.x writes every segment it stores with this one placeholder type (and category), whatever the segment was
# coded as when it was loaded (hard-coded in its generateSegmentation); only its SegmentLabel keeps the organ.
PLACEHOLDER_TYPE = ("SCT", "85756007")  # Tissue (SNOMED RT T-D0050)
_ORGAN_BY_LABEL = {c.label: c.organ_id for c in ORGAN_CODES}


def organ_id_for_label(segment_label: str) -> Optional[int]:
    """The AMOS id named by a SegmentLabel as our SEGs write it (``right kidney``, ``uterus``...), or None."""
    return _ORGAN_BY_LABEL.get(" ".join(str(segment_label).replace("_", " ").split()).lower())


def rgb_to_dicom_lab(rgb: Sequence[int]) -> Tuple[int, int, int]:
    """sRGB (0-255) to CIELab (D65), scaled as DICOM wants: L 0..100 and a, b -128..127 onto 0..65535."""
    c = np.clip(np.asarray(rgb, dtype=float) / 255.0, 0.0, 1.0)
    linear = np.where(c > 0.04045, ((c + 0.055) / 1.055) ** 2.4, c / 12.92)
    m = np.array(
        [[0.4124564, 0.3575761, 0.1804375], [0.2126729, 0.7151522, 0.0721750], [0.0193339, 0.1191920, 0.9503041]]
    )
    xyz = m @ linear / np.array([0.95047, 1.0, 1.08883])  # normalised to the D65 white point
    f = np.where(xyz > (6 / 29) ** 3, np.cbrt(xyz), xyz / (3 * (6 / 29) ** 2) + 4 / 29)
    lab = (116 * f[1] - 16, 500 * (f[0] - f[1]), 200 * (f[1] - f[2]))
    scaled = (lab[0] * 65535 / 100, (lab[1] + 128) * 65535 / 255, (lab[2] + 128) * 65535 / 255)
    return tuple(int(np.clip(round(v), 0, 65535)) for v in scaled)  # type: ignore[return-value]


def series_grid(folder: str | Path, series_uid: Optional[str] = None) -> Tuple[sitk.Image, List[pydicom.Dataset]]:
    """The voxel grid of a DICOM series and its headers in slice order, from headers only (no pixel decoding).

    The grid matches :func:`amoslabel.dicom.read_series` (origin at the first slice along the normal).
    """
    groups = series_headers(folder)
    if not groups:
        raise InputError(f"{Path(folder).name}: no DICOM files in this folder")
    if series_uid is None:
        if len(groups) > 1:
            raise Unprocessable(f"{Path(folder).name}: the folder mixes {len(groups)} series; name one")
        series_uid = next(iter(groups))
    by_file = {h.filename: h for h in groups[series_uid]}
    headers = [by_file[f] for f in sorted_slices(groups[series_uid], Path(folder).name)]
    iop = np.asarray(headers[0].ImageOrientationPatient, dtype=float)
    normal = np.cross(iop[:3], iop[3:])
    first = np.asarray(headers[0].ImagePositionPatient, dtype=float)
    if len(headers) > 1:
        last = np.asarray(headers[-1].ImagePositionPatient, dtype=float)
        dz = float(np.dot(last - first, normal)) / (len(headers) - 1)
    else:
        dz = float(headers[0].get("SliceThickness", 1.0) or 1.0)
    row_spacing, col_spacing = (float(v) for v in headers[0].PixelSpacing)
    grid = sitk.Image(int(headers[0].Columns), int(headers[0].Rows), len(headers), sitk.sitkUInt8)
    grid.SetOrigin(tuple(first))
    grid.SetSpacing((col_spacing, row_spacing, dz))
    grid.SetDirection(tuple(np.column_stack([iop[:3], iop[3:], normal]).ravel()))
    return grid, headers


def _check_label_ids(label: sitk.Image) -> np.ndarray:
    """The sorted organ ids present; ValueError naming any value that is not 0..15."""
    values = np.unique(sitk.GetArrayViewFromImage(label))
    bad = [v for v in values.tolist() if not (np.isfinite(v) and v == int(v) and 0 <= v <= MAX_LABEL_ID)]
    if bad:
        shown = ", ".join(format(v, "g") for v in bad[:10])
        raise Unprocessable(f"label values {shown} are not AMOS organ ids (0 background, 1-{MAX_LABEL_ID})")
    return values[values != 0].astype(int)


def label_on_grid(label: sitk.Image, grid: sitk.Image) -> sitk.Image:
    """The label map resampled by physical position (nearest neighbour) onto ``grid``, as UInt8.

    Raises:
        Unprocessable: values outside 0..15, or a label whose extent misses the grid.
    """
    if label.GetDimension() != 3 or label.GetNumberOfComponentsPerPixel() != 1:
        raise Unprocessable("the label map must be a 3D single-component image")
    present = _check_label_ids(label)
    if not _extents_overlap(label, grid):
        raise Unprocessable(
            f"the label map (origin {_fmt(label.GetOrigin())}) does not overlap the DICOM series "
            f"(origin {_fmt(grid.GetOrigin())}) in physical space"
        )
    out = sitk.Resample(label, grid, sitk.Transform(), sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)
    if present.size and not sitk.GetArrayViewFromImage(out).any():
        raise Unprocessable("no labelled voxel of the label map falls inside the DICOM series")
    return out


def _extents_overlap(image: sitk.Image, grid: sitk.Image) -> bool:
    """Whether the bounding box of ``image``'s voxels, in ``grid``'s index space, meets ``grid``'s voxels."""
    size = image.GetSize()
    corners = [
        grid.TransformPhysicalPointToContinuousIndex(
            image.TransformContinuousIndexToPhysicalPoint([(-0.5, n - 0.5)[(k >> i) & 1] for i, n in enumerate(size)])
        )
        for k in range(8)
    ]
    lo, hi = np.min(corners, axis=0), np.max(corners, axis=0)
    return bool(np.all(hi > -0.5) and np.all(lo < np.asarray(grid.GetSize()) - 0.5))


def _fmt(point: Sequence[float]) -> str:
    return "(" + ", ".join(f"{v:.1f}" for v in point) + ")"


def _segment_json(number: int, coding: OrganCoding, algorithm_type: str, algorithm_name: str) -> dict:
    segment = {
        "labelID": number,
        "SegmentLabel": coding.label,
        "SegmentDescription": f"AMOS label {coding.organ_id} ({ORGAN_BY_ID[coding.organ_id].name})",
        "SegmentAlgorithmType": algorithm_type,
        "SegmentedPropertyCategoryCodeSequence": ANATOMICAL_STRUCTURE.as_json(),
        "SegmentedPropertyTypeCodeSequence": coding.type.as_json(),
        "RecommendedDisplayCIELabValue": list(rgb_to_dicom_lab(coding.rgb)),
    }
    if algorithm_type != "MANUAL":  # Segment Algorithm Name is Type 1C: required unless MANUAL
        segment["SegmentAlgorithmName"] = algorithm_name
    if coding.laterality is not None:
        segment["SegmentedPropertyTypeModifierCodeSequence"] = coding.laterality.as_json()
    return segment


def write_seg(
    label: sitk.Image,
    source_series_dir: str | Path,
    out_path: str | Path,
    series_description: str,
    algorithm_type: str = "AUTOMATIC",
    algorithm_name: str = "AMOS Label",
    patient_sex: Optional[str] = None,
    series_number: int = 300,
    uids: Optional[Tuple[str, str]] = None,
) -> Path:
    """Write a multi-class AMOS label map as one BINARY DICOM SEG referencing a DICOM series.

    Args:
        label: label map with values 0..15, on the series grid or any grid in the same physical space.
        source_series_dir: folder holding the one source series.
        out_path: the .dcm file to write.
        series_description: SeriesDescription of the SEG.
        algorithm_type: AUTOMATIC, SEMIAUTOMATIC or MANUAL.
        algorithm_name: SegmentAlgorithmName (left out for MANUAL).
        patient_sex: "M"/"F" to code label 15 as prostate/uterus, or "unknown" for its region (pelvic structure);
            defaults to the series' PatientSex.
        series_number: SeriesNumber of the SEG.
        uids: (SeriesInstanceUID, SOPInstanceUID) to give the SEG (:func:`amoslabel.dicom.naming.seg_uids`);
            new ones when None.

    Returns:
        ``out_path``.

    Raises:
        Unprocessable: bad label values, no overlap with the series, an empty label, or label 15 without a sex.
    """
    if algorithm_type not in ALGORITHM_TYPES:
        raise InputError(f"algorithm_type must be one of {', '.join(ALGORITHM_TYPES)}, not {algorithm_type!r}")
    grid, headers = series_grid(source_series_dir)
    on_grid = label_on_grid(label, grid)
    array = sitk.GetArrayFromImage(on_grid)
    present = [int(v) for v in np.unique(array) if v != 0]
    if not present:
        raise Unprocessable("the label map holds no organ inside the DICOM series: nothing to write")
    sex = (patient_sex or str(headers[0].get("PatientSex", "") or "")).strip().upper() or None
    codings = [coding_for(organ_id, sex) for organ_id in present]
    # Segment numbers must run 1..n, so the label values are renumbered; the codes carry the organ identity.
    lut = np.zeros(MAX_LABEL_ID + 1, dtype=np.uint16)
    lut[present] = np.arange(1, len(present) + 1)
    segments = sitk.GetImageFromArray(lut[array])
    segments.CopyInformation(grid)
    metainfo = {
        "ContentCreatorName": "",
        "ContentLabel": "SEGMENTATION",
        "ContentDescription": "AMOS abdominal organs",
        "SeriesDescription": series_description,
        "SeriesNumber": str(series_number),
        "InstanceNumber": "1",
        "BodyPartExamined": "ABDOMEN",
        "segmentAttributes": [[_segment_json(i + 1, c, algorithm_type, algorithm_name) for i, c in enumerate(codings)]],
    }
    try:
        template = pydicom_seg.template.from_dcmqi_metainfo(metainfo)
    except NotImplementedError:  # pydicom-seg's answer to metainfo that fails the dcmqi schema
        raise Unprocessable(
            f"series description or algorithm name is not valid DICOM: {series_description!r}"
        ) from None
    for item in template.SegmentSequence:
        if algorithm_type == "MANUAL" and not item.SegmentAlgorithmName:
            del item.SegmentAlgorithmName
    writer = pydicom_seg.MultiClassWriter(template=template, inplane_cropping=False, skip_empty_slices=True)
    # pydicom-seg 0.4.1 shares data elements with the first source header and then overwrites the frame of
    # reference with a fresh UID (in both); the SEG must keep the source's, or its positions mean nothing.
    frame_of_reference = str(headers[0].get("FrameOfReferenceUID", ""))
    ds = writer.write(segments, headers)
    ds.SeriesDescription = series_description
    if uids is not None:
        ds.SeriesInstanceUID, ds.SOPInstanceUID = uids
        ds.file_meta.MediaStorageSOPInstanceUID = uids[1]
    if frame_of_reference:
        ds.FrameOfReferenceUID = frame_of_reference
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(str(out_path), write_like_original=False)
    logger.info("wrote %s: %d segments (%s)", out_path.name, len(codings), ", ".join(c.label for c in codings))
    return out_path


def _codes(ds: pydicom.Dataset, keyword: str) -> List[Code]:
    return [
        Code(str(i.CodeValue), str(i.CodingSchemeDesignator), str(i.get("CodeMeaning", "")))
        for i in ds.get(keyword, [])
    ]


def segment_organ_ids(ds: pydicom.Dataset, unknown: str = "error") -> Dict[int, int]:
    """{segment number: AMOS id} from each segment's coded property type and laterality.

    A segment coded with the generic placeholder OHIF writes for every segment it stores (:data:`PLACEHOLDER_TYPE`)
    is the organ its SegmentLabel names, as our own SEGs label them; any other code must be one of the 15 organs.

    Raises:
        Unprocessable: a segment that is none of the 15 organs, unless ``unknown="skip"`` (then it is logged).
    """
    if unknown not in ("error", "skip"):
        raise InputError(f"unknown must be 'error' or 'skip', not {unknown!r}")
    result = {}
    for segment in ds.SegmentSequence:
        types = _codes(segment, "SegmentedPropertyTypeCodeSequence")
        organ_id = (
            organ_id_for(types[0], _codes(segment, "SegmentedPropertyTypeModifierCodeSequence")) if types else None
        )
        if types and _sct(types[0]) == PLACEHOLDER_TYPE:
            # a viewer's placeholder code: the organ is the one its label names, exactly as we label segments
            organ_id = organ_id_for_label(segment.get("SegmentLabel", ""))
        if organ_id is None:
            what = f"{types[0].scheme} {types[0].value} '{types[0].meaning}'" if types else "no property type"
            message = f"segment {segment.SegmentNumber} ({segment.get('SegmentLabel', '')!r}) is coded {what}"
            if unknown == "error":
                raise Unprocessable(f"{message}, which is none of the 15 AMOS organs")
            logger.warning("%s: not an AMOS organ, skipped", message)
            continue
        result[int(segment.SegmentNumber)] = organ_id
    return result


def _frame_attr(ds: pydicom.Dataset, frame: pydicom.Dataset, seq: str) -> pydicom.Dataset:
    """A functional group item: the frame's own, else the shared one (PS3.3 C.7.6.16)."""
    if seq in frame:
        return frame[seq].value[0]
    shared = ds.SharedFunctionalGroupsSequence[0]
    if seq not in shared:
        raise Unprocessable(f"the SEG lacks {seq}")
    return shared[seq].value[0]


def _check_same_space(ds: pydicom.Dataset, source: pydicom.Dataset) -> None:
    """A SEG must reference the source series or share its frame of reference, or its positions mean nothing."""
    referenced = {str(s.SeriesInstanceUID) for s in ds.get("ReferencedSeriesSequence", [])}
    same_frame = str(ds.get("FrameOfReferenceUID", "")) == str(source.get("FrameOfReferenceUID", "?"))
    if str(source.SeriesInstanceUID) not in referenced and not same_frame:
        raise Unprocessable(
            f"the SEG references series {', '.join(sorted(referenced)) or 'none'} and another frame of reference, "
            f"not the source series {source.SeriesInstanceUID}"
        )


def _check_same_plane(ds: pydicom.Dataset, grid: sitk.Image) -> None:
    frame = ds.PerFrameFunctionalGroupsSequence[0]
    iop = np.asarray(_frame_attr(ds, frame, "PlaneOrientationSequence").ImageOrientationPatient, dtype=float)
    direction = np.asarray(grid.GetDirection()).reshape(3, 3)
    spacing = np.asarray(_frame_attr(ds, frame, "PixelMeasuresSequence").PixelSpacing, dtype=float)
    if np.abs(iop - np.concatenate([direction[:, 0], direction[:, 1]])).max() > _DIR_TOL or not np.allclose(
        spacing, grid.GetSpacing()[1::-1], rtol=1e-3
    ):
        raise Unprocessable("the SEG frames are not on the source series' grid (orientation or pixel spacing differ)")


def read_seg(seg: str | Path | pydicom.Dataset, source_series_dir: str | Path, unknown: str = "error") -> sitk.Image:
    """Read a DICOM SEG (a file, or a dataset already read) into an AMOS label map (UInt8) on the grid of its source
    series.

    Segments become AMOS ids by their codes (see :func:`segment_organ_ids`), never by segment number.

    Raises:
        InputError: the file is not a readable DICOM SEG.
        Unprocessable: an unknown segment (unless ``unknown="skip"``), frames off the series grid, or two organs
            claiming one voxel.
    """
    name = "the SEG" if isinstance(seg, pydicom.Dataset) else Path(seg).name
    try:
        ds = seg if isinstance(seg, pydicom.Dataset) else pydicom.dcmread(str(seg))
        if ds.get("SOPClassUID") != pydicom.uid.SegmentationStorage:
            raise InputError(f"{name}: not a DICOM SEG (SOP class {ds.get('SOPClassUID', 'missing')})")
        frames = ds.pixel_array.reshape(int(ds.NumberOfFrames), int(ds.Rows), int(ds.Columns))
    except InputError:
        raise
    except Exception as e:  # pydicom raises many types for a damaged file
        raise InputError(f"{name}: not a readable DICOM SEG ({type(e).__name__}: {e})") from None
    if ds.get("SegmentationType") == "FRACTIONAL":
        frames = frames > int(ds.MaximumFractionalValue) / 2
    grid, headers = series_grid(source_series_dir)
    _check_same_space(ds, headers[0])
    organ_of = segment_organ_ids(ds, unknown)
    _check_same_plane(ds, grid)
    out = np.zeros(grid.GetSize()[::-1], dtype=np.uint8)
    for frame, pixels in zip(ds.PerFrameFunctionalGroupsSequence, frames):
        number = int(_frame_attr(ds, frame, "SegmentIdentificationSequence").ReferencedSegmentNumber)
        if number not in organ_of or not pixels.any():
            continue
        i, j, k = _frame_index(grid, _frame_attr(ds, frame, "PlanePositionSequence").ImagePositionPatient, pixels.shape)
        target = out[k, j : j + pixels.shape[0], i : i + pixels.shape[1]]
        clash = set(np.unique(target[(pixels > 0) & (target != 0)]).tolist()) - {organ_of[number]}
        if clash:
            raise Unprocessable(f"segment {number} overlaps organ(s) {sorted(clash)}: not a label map")
        target[pixels > 0] = organ_of[number]
    image = sitk.GetImageFromArray(out)
    image.CopyInformation(grid)
    return image


def _frame_index(grid: sitk.Image, position: Sequence[float], shape: Tuple[int, int]) -> Tuple[int, int, int]:
    """The series voxel index of a frame's top-left pixel; Unprocessable if the frame is off the grid."""
    ci = np.asarray(grid.TransformPhysicalPointToContinuousIndex([float(v) for v in position]))
    idx = np.round(ci).astype(int)
    rows, cols = shape
    size = grid.GetSize()
    if (
        np.abs(ci - idx).max() > _GRID_TOL
        or idx.min() < 0
        or idx[0] + cols > size[0]
        or idx[1] + rows > size[1]
        or idx[2] >= size[2]
    ):
        raise Unprocessable(f"a SEG frame at {_fmt(position)} is not on the source series' grid")
    return int(idx[0]), int(idx[1]), int(idx[2])
