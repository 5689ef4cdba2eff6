"""The paper's methods. This file imports nothing heavy: the settings read its constants without torch."""

GRADCAM_TARGETS: tuple[str, ...] = ("softmax", "logits")  # what Grad-CAM's y(c) pools: the paper's, or the usual
# where y(c) pools the output: over the whole image (Grad-CAM's usual), or over the pixels the network labels c (the
# paper's class average over the predicted region; a slice or window without any scores zero)
GRADCAM_POOLS: tuple[str, ...] = ("image", "predicted")
