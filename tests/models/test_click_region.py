"""The region a click network sees (`models.click_region.region_around`): the clicks' boxes with context, and at least
one training patch, inside the volume."""

from __future__ import annotations

import numpy as np
import pytest

from models.click_region import region_around

SHAPE = (40, 100, 120)
SPACING = (3.0, 1.5, 1.5)


def box(z, y, x):
    return tuple(slice(a, b) for a, b in (z, y, x))


def widths(region):
    return [s.stop - s.start for s in region]


def test_context_widens_the_boxes_and_stops_at_the_volume():
    region = region_around([box((10, 12), (40, 50), (0, 8))], SHAPE, 6.0, SPACING)
    assert region == box((8, 14), (36, 54), (0, 12))  # 6 mm: 2 slices, 4 rows and columns; x clipped at 0


def test_a_region_narrower_than_a_patch_grows_to_the_patch_about_its_centre():
    clicks = box((20, 21), (50, 51), (60, 61))
    region = region_around([clicks], SHAPE, 0.0, SPACING, least_mm=(48.0, 96.0, 96.0))
    assert widths(region) == [16, 64, 64]
    for outer, inner in zip(region, clicks):
        assert outer.start <= inner.start and inner.stop <= outer.stop
        assert abs((outer.start + outer.stop) - (inner.start + inner.stop)) <= 1  # centred


@pytest.mark.parametrize("corner", [(0, 0, 0), (39, 99, 119)])
def test_at_the_volumes_edge_the_patch_shifts_inside_and_keeps_its_width(corner):
    clicks = box(*[(c, c + 1) for c in corner])
    region = region_around([clicks], SHAPE, 0.0, SPACING, least_mm=(30.0, 30.0, 30.0))
    assert widths(region) == [10, 20, 20]
    assert all(0 <= s.start and s.stop <= n for s, n in zip(region, SHAPE))
    assert all(s.start <= c < s.stop for s, c in zip(region, corner))


def test_a_patch_larger_than_the_volume_is_the_volume_and_a_wide_region_is_kept():
    assert widths(region_around([box((5, 6), (5, 6), (5, 6))], SHAPE, 0.0, SPACING, (1e4,) * 3)) == list(SHAPE)
    wide = box((0, 40), (10, 90), (20, 100))
    assert region_around([wide], SHAPE, 0.0, SPACING, least_mm=(3.0, 3.0, 3.0)) == wide
    assert np.all(np.asarray(widths(region_around([wide], SHAPE, 0.0, SPACING))) == [40, 80, 80])


def test_a_versions_patch_in_millimetres_is_its_training_patch_at_its_spacing():
    from amoslabel.config import ModalityPlan
    from models.infer_task import VersionRecipe

    plans = {"ct": ModalityPlan(spacing=(3.0, 3.0, 1.5), patch_size=(64, 64, 32))}
    assert VersionRecipe(plans, {}, None).patch_mm("ct") == (192.0, 192.0, 48.0)
    assert VersionRecipe(plans, {}, (32, 32, 16)).patch_mm("ct") == (96.0, 96.0, 24.0)  # the recorded patch wins
