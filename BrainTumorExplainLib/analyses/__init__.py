"""The paper's methods. This file imports nothing heavy: the settings read its constants without torch."""

GRADCAM_TARGETS: tuple[str, ...] = ("softmax", "logits")  # what Grad-CAM's y(c) pools: the paper's, or the usual
# where y(c) pools the output: over the whole image (Grad-CAM's usual), or over the pixels the network labels c (the
# paper's class average over the predicted region; a slice or window without any scores zero)
GRADCAM_POOLS: tuple[str, ...] = ("image", "predicted")

# Network dissection's defaults (the paper's): each filter thresholded at its top 1 % of activations, a detector at
# IoU ≥ 0.04 — and, ours, beating the best control of its concept by 0.05; the random-weights control's seed.
DEFAULT_QUANTILE = 0.99
DEFAULT_IOU_CUTOFF = 0.04
DEFAULT_MARGIN = 0.05
CONTROL_SEED = 0
