"""The paper's three networks, one entry point: build or load by name, list layers, switch test-time dropout.

>>> from BrainTumorExplainLib.models import load_pretrained
>>> model = load_pretrained("resunet")          # eval mode, checksum verified, no code executed from the file
>>> list(model.analysable_layers())[:3]
['enc1', 'enc2', 'enc3']
"""

from .base import NUM_CLASSES, SegmentationNet, dropout_modules, test_time_dropout
from .registry import (
    ARCHITECTURES,
    SHIPPED_NETWORKS,
    WeightsError,
    build_model,
    load_model,
    load_pretrained,
    load_weights,
    pretrained_manifest,
    save_weights,
)

__all__ = [
    "ARCHITECTURES", "NUM_CLASSES", "SHIPPED_NETWORKS", "SegmentationNet", "WeightsError", "build_model", "dropout_modules",
    "load_model", "load_pretrained", "load_weights", "pretrained_manifest", "save_weights", "test_time_dropout",
]
