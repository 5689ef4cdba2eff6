"""BrainTumorExplain library: BraTS data, phantoms, metrics and (in later modules) the paper's networks and analyses.

Never imports Slicer, Qt or VTK; torch is imported only by the modules that need it.
"""

from .version import __version__  # noqa: E402,F401
from .data.case import MODALITIES, Case, CaseError, CaseFiles, find_case_files, load_case  # noqa: E402
from .data.grid import ReferenceGrid  # noqa: E402
from .data.labels import BRATS2021, BRATS2023, CLASS_NAMES, REGIONS, TISSUE_NAMES, LabelConvention  # noqa: E402

__all__ = [
    "BRATS2021", "BRATS2023", "CLASS_NAMES", "MODALITIES", "REGIONS", "TISSUE_NAMES",
    "Case", "CaseError", "CaseFiles", "LabelConvention", "ReferenceGrid", "find_case_files", "load_case",
]
