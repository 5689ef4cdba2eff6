import numpy as np
import pytest

from BrainTumorExplainLib.data.labels import BRATS2021, BRATS2023, label_convention, region_mask


def test_conventions_map_file_values_to_classes_and_back():
    file_2021 = np.array([0, 1, 2, 4, 4])
    classes = BRATS2021.to_classes(file_2021)
    assert classes.tolist() == [0, 1, 2, 3, 3]
    assert BRATS2021.from_classes(classes).tolist() == [0, 1, 2, 4, 4]
    assert BRATS2023.from_classes(classes).tolist() == [0, 1, 2, 3, 3]
    assert BRATS2023.to_classes(np.array([3, 1])).tolist() == [3, 1]


def test_values_outside_the_convention_are_refused_not_reinterpreted():
    with pytest.raises(ValueError, match=r"label values \[3\] are not in the BraTS 2018-2021"):
        BRATS2021.to_classes(np.array([0, 3]))
    with pytest.raises(ValueError, match=r"\[4\]"):
        BRATS2023.to_classes(np.array([0, 4]))
    with pytest.raises(ValueError, match="unknown label convention"):
        label_convention("brats2019")


def test_regions_follow_brats_definitions():
    classes = np.array([0, 1, 2, 3])
    assert region_mask(classes, "WT").tolist() == [False, True, True, True]
    assert region_mask(classes, "TC").tolist() == [False, True, False, True]
    assert region_mask(classes, "ET").tolist() == [False, False, False, True]
    with pytest.raises(ValueError, match="unknown region"):
        region_mask(classes, "NCR")
