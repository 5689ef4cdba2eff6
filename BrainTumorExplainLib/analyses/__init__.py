"""The paper's methods. This file imports nothing heavy: the settings read its constants without torch."""

GRADCAM_TARGETS: tuple[str, ...] = ("softmax", "logits")  # what Grad-CAM's y(c) pools: the paper's, or the usual
