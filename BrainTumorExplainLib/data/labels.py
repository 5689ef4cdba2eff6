"""Label conventions, tumour classes and the BraTS evaluation regions; and the sequences' order (``MODALITIES``).

Inside the library a segmentation is always an array of *class indices* in model order::

    0 background, 1 NCR/NET (necrotic / non-enhancing core), 2 ED (edema), 3 ET (enhancing tumour)

Files use a *label convention*: BraTS 2018–2021 writes ET as 4, BraTS 2023 writes ET as 3. The convention of a
case is chosen from its file naming (or given explicitly) and never guessed from voxel values.

Evaluation regions (BraTS): WT = NCR ∪ ED ∪ ET, TC = NCR ∪ ET, ET.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import UsageError

MODALITIES: tuple[str, ...] = ("flair", "t1", "t1ce", "t2")  # the sequences, in the order every case holds them
CLASS_NAMES: tuple[str, ...] = ("background", "NCR/NET", "ED", "ET")
CLASS_KEYS: tuple[str, ...] = ("bg", "ncr", "ed", "et")  # for file names and command lines
TUMOUR_CLASSES: tuple[int, ...] = (1, 2, 3)
# The region each class's evidence should lie in, for the localisation (background: the brain it surrounds).
CLASS_REGION: dict[int, str] = {0: "brain", 1: "TC", 2: "WT", 3: "ET"}
REGIONS: dict[str, tuple[int, ...]] = {"WT": (1, 2, 3), "TC": (1, 3), "ET": (3,)}
TISSUE_NAMES: tuple[str, ...] = ("background", "CSF", "GM", "WM")


@dataclass(frozen=True)
class LabelConvention:
    """How a file encodes the three tumour classes."""

    name: str
    description: str
    ncr: int
    ed: int
    et: int

    @property
    def codes(self) -> tuple[int, int, int, int]:
        """File values for classes 0..3 (background first)."""
        return (0, self.ncr, self.ed, self.et)

    def invalid_values(self, values: np.ndarray) -> list[int]:
        """Values present in ``values`` that this convention does not define."""
        present = np.unique(values)
        return [int(v) for v in present if int(v) not in self.codes]

    def to_classes(self, file_labels: np.ndarray) -> np.ndarray:
        """File values → class indices 0..3 (uint8). Raises ``ValueError`` on values outside the convention."""
        bad = self.invalid_values(file_labels)
        if bad:
            raise ValueError(
                f"label values {bad} are not in the {self.description} convention {list(self.codes)}"
            )
        lut = np.zeros(max(self.codes) + 1, dtype=np.uint8)
        for class_index, code in enumerate(self.codes):
            lut[code] = class_index
        return lut[file_labels.astype(np.int64)]

    def from_classes(self, classes: np.ndarray) -> np.ndarray:
        """Class indices 0..3 → file values (uint8)."""
        classes = np.asarray(classes)
        if classes.size and (classes.min() < 0 or classes.max() > 3):
            raise ValueError(f"class indices must lie in 0..3, got range {classes.min()}..{classes.max()}")
        return np.asarray(self.codes, dtype=np.uint8)[classes.astype(np.int64)]


BRATS2021 = LabelConvention("brats2021", "BraTS 2018-2021 (1 NCR/NET, 2 ED, 4 ET)", ncr=1, ed=2, et=4)
BRATS2023 = LabelConvention("brats2023", "BraTS 2023 (1 NCR, 2 ED, 3 ET)", ncr=1, ed=2, et=3)
LABEL_CONVENTIONS: dict[str, LabelConvention] = {c.name: c for c in (BRATS2021, BRATS2023)}


def label_convention(name: str | LabelConvention) -> LabelConvention:
    """Look a convention up by name (``brats2021`` or ``brats2023``)."""
    if isinstance(name, LabelConvention):
        return name
    try:
        return LABEL_CONVENTIONS[name]
    except KeyError:
        raise UsageError(f"unknown label convention {name!r}; expected one of {sorted(LABEL_CONVENTIONS)}") from None


def region_mask(classes: np.ndarray, region: str) -> np.ndarray:
    """Boolean mask of a BraTS region (``WT``, ``TC`` or ``ET``) from class indices."""
    try:
        members = REGIONS[region]
    except KeyError:
        raise UsageError(f"unknown region {region!r}; expected one of {list(REGIONS)}") from None
    return np.isin(classes, members)


def one_hot(labels: np.ndarray, classes: int) -> np.ndarray:
    """``(classes, *labels.shape)`` bool: class ``c``'s voxels in row ``c``."""
    return np.arange(classes).reshape((classes,) + (1,) * np.ndim(labels)) == np.asarray(labels)[None]


def resolve_classes(classes: str | int | list | tuple | None = "tumour") -> list[int]:
    """Class indices from ``"tumour"`` (1, 2, 3), ``"all"`` (0..3), or indices / keys (``ncr``, ``ed``, ``et``,
    ``bg``), as a list or a comma-separated string."""
    if classes is None or classes == "tumour":
        return list(TUMOUR_CLASSES)
    if classes == "all":
        return list(range(len(CLASS_NAMES)))
    items = classes.split(",") if isinstance(classes, str) else list(classes) if isinstance(classes, (list, tuple)) \
        else [classes]
    chosen = []
    for item in items:
        text = str(item).strip().lower()
        if text in CLASS_KEYS:
            chosen.append(CLASS_KEYS.index(text))
        elif text.lstrip("-").isdigit() and 0 <= int(text) < len(CLASS_NAMES):
            chosen.append(int(text))
        else:
            raise UsageError(f"class {item!r} out of range: expected 0..{len(CLASS_NAMES) - 1} or one of "
                             f"{', '.join(CLASS_KEYS)} (also 'tumour' or 'all')")
    return sorted(set(chosen))
