"""The paper's methods. This file imports nothing heavy: the settings read its constants without torch."""

# What Grad-CAM's y(c) pools: the network's probabilities (the paper's softmax; a region network's sigmoids) or its
# logits (the usual); "softmax", the paper's word and this option's name before 3D networks, is the probabilities.
GRADCAM_TARGETS: tuple[str, ...] = ("probabilities", "logits")
GRADCAM_TARGET_NAMES: dict[str, str] = {"softmax": "probabilities"}
# where y(c) pools the output: over the whole image (the paper's eq. 3: all P output pixels), or over the pixels the
# network labels c (pytorch-grad-cam's SemanticSegmentationTarget; a slice or window without any scores zero)
GRADCAM_POOLS: tuple[str, ...] = ("image", "predicted")

# Network dissection's defaults (the paper's): each filter thresholded at its top 1 % of activations, a detector at
# IoU ≥ 0.04 — and, ours, beating the best control of its concept by 0.05; the random-weights control's seed.
DEFAULT_QUANTILE = 0.99
DEFAULT_IOU_CUTOFF = 0.04
DEFAULT_MARGIN = 0.05
CONTROL_SEED = 0
# Where each filter's threshold quantile is taken: "image" — a 2D network's whole slices (air included, as the paper
# thresholds its images), a 3D network's brain box; "brain-box" — the brain's bounding box in either (in each slice
# of a 2D network), so that 2D and 3D thresholds come from the same region.
THRESHOLD_REGIONS: tuple[str, ...] = ("image", "brain-box")
