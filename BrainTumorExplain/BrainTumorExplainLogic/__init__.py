"""MRML side of BrainTumorExplain: everything that touches the scene, and nothing that imports Qt.

It runs in desktop Slicer and on ``slicer-core`` (real MRML without the application), where the tests run it.
torch is never imported here.
"""

from .explainrun import (ExplainProcess, RunSettings, RunStatus, add_gradcam_map, add_run_outputs, assign_modalities,
                         check_input_nodes, run_summary)
from .library import ensure_library_importable, library_folder, missing_dependencies
from .results import RunOutputs, open_scene_bundle, save_scene_bundle, show_overlay
from .volumes import (
    CaseNodes,
    add_volume_from_canonical,
    canonical_array,
    canonical_shape,
    ijk_to_ras,
    load_case_nodes,
    node_reorientation,
    nodes_of_class,
    remove_nodes,
)

__all__ = [
    "CaseNodes", "ExplainProcess", "RunOutputs", "RunSettings", "RunStatus", "add_gradcam_map", "add_run_outputs",
    "add_volume_from_canonical", "assign_modalities", "canonical_array", "canonical_shape", "check_input_nodes",
    "ensure_library_importable", "ijk_to_ras", "library_folder", "load_case_nodes", "missing_dependencies",
    "node_reorientation", "nodes_of_class", "open_scene_bundle", "remove_nodes", "run_summary", "save_scene_bundle",
    "show_overlay",
]
