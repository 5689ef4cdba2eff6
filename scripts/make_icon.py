"""Draw BrainTumorExplain.png (128×128): an axial slice of the sample phantom with its tumour and a Grad-CAM-like glow.

Run: .venv/bin/python scripts/make_icon.py  (writes the root icon and the module's resource icon)
"""

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from scipy import ndimage  # noqa: E402

from BrainTumorExplainLib.data.case import load_case  # noqa: E402

root = Path(__file__).resolve().parents[1]
case = load_case(root / "BrainTumorExplainLib" / "sample_data" / "Phantom_01003")
z = int(np.argmax((case.labels > 0).sum(axis=(1, 2))))
rows, cols = np.nonzero(case.brain_mask[z])
crop = (slice(rows.min() - 4, rows.max() + 5), slice(cols.min() - 4, cols.max() + 5))
flair = np.where(case.brain_mask[z], case.images[0, z], np.nan)[crop]
tumour = (case.labels[z] > 0)[crop].astype(float)
glow = ndimage.gaussian_filter(tumour, 6)
glow = np.ma.masked_less(glow / glow.max(), 0.15)
edge = tumour - ndimage.binary_erosion(tumour, iterations=2)

figure = plt.figure(figsize=(1.28, 1.28), dpi=100)
axes = figure.add_axes((0, 0, 1, 1))
axes.set_axis_off()
size = max(flair.shape)
axes.set_xlim(-0.5 - (size - flair.shape[1]) / 2, flair.shape[1] - 0.5 + (size - flair.shape[1]) / 2)
axes.set_ylim(flair.shape[0] - 0.5 + (size - flair.shape[0]) / 2, -0.5 - (size - flair.shape[0]) / 2)
axes.imshow(flair, cmap="gray", vmin=-2.0, vmax=3.0)
axes.imshow(glow, cmap="inferno", alpha=0.65, vmin=0, vmax=1)
axes.imshow(np.ma.masked_equal(edge, 0), cmap="autumn_r", alpha=1.0)
for target in (root / "BrainTumorExplain.png", root / "BrainTumorExplain" / "Resources" / "Icons" / "BrainTumorExplain.png"):
    figure.savefig(target, transparent=True)
print("wrote icons")

# The Sample Data module's thumbnail of the sample case: FLAIR through the largest tumour cross-section, 260 px wide.
thumbnail = plt.figure(figsize=(2.6, 2.6), dpi=100, facecolor="black")
axes = thumbnail.add_axes((0, 0, 1, 1))
axes.set_axis_off()
axes.imshow(np.where(case.brain_mask[z], case.images[0, z], np.nan), cmap="gray", vmin=-2.0, vmax=3.0)
thumbnail.savefig(root / "BrainTumorExplain" / "Resources" / "Icons" / "Phantom_01003.png", facecolor="black")
print("wrote the sample data thumbnail")
