"""An axial slice as the slice views compose it, rendered headless to PNG: the background volume in grey through
its window, a heatmap foreground through its own colour table, window and lower threshold at the composite's
opacity, and a label map on top in its colour table.

Slicer's slice logic does this with vtkImageReslice, vtkImageMapToColors and vtkImageBlend before drawing; here the
same display settings are read from the nodes and applied to the voxels of one canonical axial slice with numpy (all
results share the reference geometry, so no resampling is involved), because the slice logic's own renderer needs
the application and a GL context, which headless MRML does not have. Rows run anterior to posterior and columns
patient right to left (radiological view, as Slicer's axial view).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import vtk
from vtk.util import numpy_support

from .volumes import canonical_array


def _lookup(color_node, indices: np.ndarray) -> np.ndarray:
    """RGB in [0, 1] of integer colour-table ``indices`` through the node's lookup table."""
    table = color_node.GetLookupTable()
    colours = np.array([table.GetTableValue(i)[:3] for i in range(table.GetNumberOfTableValues())])
    return colours[np.clip(indices, 0, len(colours) - 1)]


def _background(node, z: int) -> np.ndarray:
    values = canonical_array(node)[z].astype(np.float64)
    display = node.GetDisplayNode()
    if display is not None and not display.GetAutoWindowLevel():
        low, high = display.GetWindowLevelMin(), display.GetWindowLevelMax()
    else:  # Slicer's automatic window, approximately: the bulk of the non-zero voxels
        inside = values[values != 0]
        low, high = np.percentile(inside, (0.5, 99.5)) if inside.size else (0.0, 1.0)
    grey = np.clip((values - low) / max(high - low, 1e-12), 0, 1)
    return np.repeat(grey[..., None], 3, axis=2)


def _heatmap(node, z: int) -> tuple[np.ndarray, np.ndarray]:
    """RGB and a drawn-pixel mask of a heatmap slice, as its display node says."""
    values = canonical_array(node)[z].astype(np.float64)
    display = node.GetDisplayNode()
    low, high = display.GetWindowLevelMin(), display.GetWindowLevelMax()
    colour_node = display.GetColorNode()
    size = colour_node.GetNumberOfColors()
    indices = np.round(np.clip((values - low) / max(high - low, 1e-12), 0, 1) * (size - 1)).astype(int)
    drawn = values >= display.GetLowerThreshold() if display.GetApplyThreshold() else np.ones(values.shape, bool)
    return _lookup(colour_node, indices), drawn


def _labels(node, z: int) -> tuple[np.ndarray, np.ndarray]:
    values = canonical_array(node)[z].astype(int)
    return _lookup(node.GetDisplayNode().GetColorNode(), values), values > 0


def slice_composite(background, z: int, foreground=None, opacity: float = 0.5, label=None,
                    label_opacity: float = 0.6) -> np.ndarray:
    """RGB ``(Y, X, 3)`` uint8 of canonical axial slice ``z``: ``background`` under ``foreground`` under ``label``."""
    depth = canonical_array(background).shape[0]
    if not 0 <= z < depth:
        raise ValueError(f"slice {z} is outside 0..{depth - 1} of {background.GetName()!r}")
    rgb = _background(background, z)
    for layer, alpha in ((foreground, opacity), (label, label_opacity)):
        if layer is None:
            continue
        colours, drawn = _labels(layer, z) if layer.IsA("vtkMRMLLabelMapVolumeNode") else _heatmap(layer, z)
        if colours.shape[:2] != rgb.shape[:2]:
            raise ValueError(f"{layer.GetName()!r} is not on the grid of {background.GetName()!r}")
        rgb[drawn] = (1 - alpha) * rgb[drawn] + alpha * colours[drawn]
    return np.round(rgb * 255).astype(np.uint8)


def write_png(rgb: np.ndarray, path: str | Path) -> Path:
    """An ``(H, W, 3)`` uint8 image to PNG, first row at the top."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    height, width = rgb.shape[:2]
    image = vtk.vtkImageData()
    image.SetDimensions(width, height, 1)
    scalars = numpy_support.numpy_to_vtk(np.ascontiguousarray(rgb[::-1]).reshape(-1, 3), deep=True,
                                         array_type=vtk.VTK_UNSIGNED_CHAR)
    image.GetPointData().SetScalars(scalars)
    writer = vtk.vtkPNGWriter()
    writer.SetFileName(str(path))
    writer.SetInputData(image)
    writer.Write()
    if not path.is_file():
        raise ValueError(f"{path}: could not write the PNG")
    return path
