"""MRML side of BrainTumorExplain: everything that touches the scene, and nothing that imports Qt.

It runs in desktop Slicer and on ``slicer-core`` (real MRML without the application), where the tests run it.
torch is never imported here.
"""

from .explainrun import (
                         ExplainProcess,
                         RunStatus,
                         TorchProbe,
                         add_gradcam_map,
                         add_run_outputs,
                         assign_modalities,
                         check_input_nodes,
                         network_channels,
                         panel_config,
                         panel_wording,
                         runs_own_code,
)
from .library import (
                         InstallPlan,
                         ensure_library_importable,
                         has_pytorch_extension,
                         install_plan,
                         library_folder,
                         missing_dependencies,
)
from .results import (
                         ReferenceGeometry,
                         RunOutputs,
                         jump_to_review_point,
                         jump_to_voxel,
                         open_scene_bundle,
                         register_terminology,
                         save_scene_bundle,
                         show_overlay,
)
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
                         sample_data_source,
                         world_ijk_to_ras,
)

__all__ = [
    "CaseNodes", "ExplainProcess", "InstallPlan", "ReferenceGeometry", "RunOutputs", "RunStatus", "TorchProbe",
    "add_gradcam_map", "add_run_outputs", "add_volume_from_canonical", "assign_modalities", "canonical_array",
    "canonical_shape", "check_input_nodes", "ensure_library_importable", "has_pytorch_extension", "ijk_to_ras",
    "install_plan", "jump_to_review_point", "jump_to_voxel", "library_folder", "load_case_nodes",
    "missing_dependencies",
    "network_channels", "node_reorientation", "panel_wording", "runs_own_code",
    "nodes_of_class", "open_scene_bundle", "panel_config", "register_terminology", "remove_nodes",
    "sample_data_source", "save_scene_bundle", "show_overlay", "world_ijk_to_ras",
]
