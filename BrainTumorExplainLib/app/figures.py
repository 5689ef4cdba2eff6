"""Figures a person looks at: case montages and the analyses' figures.

Axial slices are drawn in radiological convention (patient's right on the left of the picture, anterior at the
top), which is what canonical ``(z, y, x)`` arrays give with ``imshow``'s defaults.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib import colormaps
from matplotlib.colors import ListedColormap
from matplotlib.figure import Figure

from ..analyses.gradcam import normalise
from ..data.case import MODALITIES, Case
from ..data.labels import CLASS_NAMES, CLASS_REGION, TISSUE_NAMES
from ..models.description import from_network_space

# BraTS colours as Slicer shows them: NCR/NET red, edema green, enhancing yellow.
LABEL_COLOURS = ((0, 0, 0, 0), (0.86, 0.16, 0.16, 1), (0.2, 0.75, 0.25, 1), (1.0, 0.85, 0.1, 1))
TISSUE_COLOURS = ((0, 0, 0, 1), (0.2, 0.45, 0.95, 1), (0.6, 0.6, 0.6, 1), (0.95, 0.95, 0.95, 1))
MODALITY_TITLES = {"flair": "FLAIR", "t1": "T1", "t1ce": "T1ce", "t2": "T2"}
# Pure red whose opacity grows with the value: uncertainty "shown in red" over the FLAIR, as in the paper's Figure 7.
UNCERTAINTY_REDS = ListedColormap(np.stack([np.ones(256), np.zeros(256), np.zeros(256), np.linspace(0.25, 1, 256)], 1))


def montage_slices(case: Case, count: int = 3) -> list[int]:
    """Axial slices to show: through the largest tumour cross-section and spread around it (or through the brain)."""
    area = case.labels.reshape(case.labels.shape[0], -1).astype(bool).sum(1) if case.labels is not None else None
    brain_slices = case.brain_slices()
    if area is not None and area.any():
        tumour_slices = np.flatnonzero(area)
        centre = int(np.argmax(area))
        spread = np.linspace(tumour_slices.min(), tumour_slices.max(), count + 2)[1:-1].round().astype(int)
        spread[np.argmin(np.abs(spread - centre))] = centre
        return sorted(set(int(s) for s in spread))
    return [int(s) for s in np.linspace(brain_slices.min(), brain_slices.max(), count + 2)[1:-1].round()]


def _window(image: np.ndarray, mask: np.ndarray) -> tuple[float, float]:
    values = image[mask] if mask.any() else image.ravel()
    low, high = np.percentile(values, (0.5, 99.5))
    return float(low), float(high if high > low else low + 1)


def _masked(case: Case, channel: int, z: int) -> np.ndarray:
    """The slice with the background at the window's floor, so it shows black as on a scanner."""
    image = case.images[channel, z]
    return np.where(case.brain_mask[z], image, -np.inf)


def case_montage(case: Case, path: str | Path, slices: list[int] | None = None, dpi: int = 80,
                 predicted: np.ndarray | None = None) -> Path:
    """PNG montage: one row per axial slice; FLAIR, T1, T1ce, T2, labels over T1ce, a prediction over T1ce (when
    given: class indices on the case's canonical grid), tissue classes."""
    slices = slices or montage_slices(case)
    columns = [MODALITY_TITLES[m] for m in MODALITIES] + ["labels over T1ce"]
    overlays = {"labels over T1ce": case.labels}
    if predicted is not None:
        columns.append("prediction over T1ce")
        overlays["prediction over T1ce"] = predicted
    if case.tissue is not None:
        columns.append("tissue")
    figure, axes = _subplots(len(slices), len(columns), figsize=(2.2 * len(columns), 2.4 * len(slices)),
                                squeeze=False, facecolor="black")
    windows = [_window(case.images[c], case.brain_mask) for c in range(len(MODALITIES))]
    for row, z in enumerate(slices):
        for column, title in enumerate(columns):
            ax = axes[row, column]
            ax.set_axis_off()
            if column < len(MODALITIES):
                ax.imshow(_masked(case, column, z), cmap="gray", vmin=windows[column][0], vmax=windows[column][1])
            elif title in overlays:
                ax.imshow(_masked(case, 2, z), cmap="gray", vmin=windows[2][0], vmax=windows[2][1])
                if overlays[title] is not None:
                    ax.imshow(overlays[title][z], cmap=ListedColormap(LABEL_COLOURS), vmin=0, vmax=3,
                              interpolation="nearest", alpha=0.55)
            else:
                ax.imshow(case.tissue[z], cmap=ListedColormap(TISSUE_COLOURS), vmin=0, vmax=3, interpolation="nearest")
            if row == 0:
                ax.set_title(title, color="white", fontsize=9)
        axes[row, 0].text(2, 12, f"z={z}", color="yellow", fontsize=8)
    legend = "  ".join(f"{n}" for n in CLASS_NAMES[1:]) + " (red, green, yellow)"
    if case.tissue is not None:
        legend += "   tissue: " + ", ".join(TISSUE_NAMES[1:]) + " (blue, grey, white)"
    figure.suptitle(f"{case.case_id} — {legend}", color="white", fontsize=8)
    figure.tight_layout(rect=(0, 0, 1, 0.97))
    return _save(figure, path, dpi)


def _subplots(rows: int = 1, columns: int = 1, figsize=None, facecolor=None, squeeze: bool = True):
    """A figure and its axes, made without pyplot: no global backend is chosen or changed (files only)."""
    figure = Figure(figsize=figsize, facecolor=facecolor)
    return figure, figure.subplots(rows, columns, squeeze=squeeze)


def _save(figure, path: str | Path, dpi: int) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=dpi, facecolor=figure.get_facecolor())
    return path


def _heat_overlay(ax, case: Case, z: int, heat: np.ndarray, window: tuple[float, float]) -> None:
    """FLAIR in grey with a [0, 1] heatmap over it, transparent where the map is (almost) zero."""
    ax.imshow(_masked(case, 0, z), cmap="gray", vmin=window[0], vmax=window[1])
    ax.imshow(np.ma.masked_less(heat, 0.05), cmap="jet", vmin=0, vmax=1, alpha=0.5, interpolation="bilinear")
    ax.set_axis_off()


NEGLIGIBLE_PEAK = 1e-3  # a Grad-CAM map this far below the largest of its row is drawn as empty


def gradcam_montage(case: Case, z: int, maps: dict[str, np.ndarray], classes: list[int], path: str | Path,
                    title: str = "", dpi: int = 80, names: list[str] | None = None) -> Path:
    """Figure 5 / 11 of the paper for one axial slice: one row per class, one column per layer (input to output),
    each map normalised to its own maximum over the slice; the first column shows the labels when there are any.
    A map whose peak is below :data:`NEGLIGIBLE_PEAK` of the row's largest is drawn empty and marked "≈ 0":
    stretched to its own maximum, rounding noise would look like a finding.

    ``maps``: layer → ``(len(classes), Y, X)`` raw Grad-CAM of slice ``z`` (network order).
    """
    layers = list(maps)
    figure, axes = _subplots(len(classes), len(layers) + 1, figsize=(1.6 * (len(layers) + 1), 1.8 * len(classes)),
                                squeeze=False, facecolor="black")
    window = _window(case.images[0], case.brain_mask)
    for row, class_index in enumerate(classes):
        ax = axes[row, 0]
        ax.imshow(_masked(case, 0, z), cmap="gray", vmin=window[0], vmax=window[1])
        if case.labels is not None:
            ax.imshow(case.labels[z], cmap=ListedColormap(LABEL_COLOURS), vmin=0, vmax=3, interpolation="nearest",
                      alpha=0.5)
        ax.set_axis_off()
        ax.text(2, 12, names[row] if names else CLASS_NAMES[class_index], color="yellow", fontsize=8)
        peaks = {layer: float(maps[layer][row].max()) for layer in layers}
        largest = max(peaks.values(), default=0.0)
        for column, layer in enumerate(layers, start=1):
            negligible = peaks[layer] < NEGLIGIBLE_PEAK * largest
            heat = np.zeros_like(maps[layer][row]) if negligible else normalise(maps[layer][row])
            _heat_overlay(axes[row, column], case, z, heat, window)
            if negligible:
                axes[row, column].text(2, 12, "≈ 0", color="white", fontsize=8)
            if row == 0:
                axes[row, column].set_title(layer, color="white", fontsize=8)
    axes[0, 0].set_title(f"z={z}", color="white", fontsize=8)
    figure.suptitle(title or f"{case.case_id}: Grad-CAM per layer (rows: class)", color="white", fontsize=9)
    figure.tight_layout(rect=(0, 0, 1, 0.95))
    return _save(figure, path, dpi)


def localisation_curves(tables: dict[str, dict], path: str | Path, dpi: int = 100,
                        regions: dict[str, str] | None = None, controls: dict[str, dict] | None = None) -> Path:
    """The paper's "top-down" claim as numbers: for each model (panel) and tumour class (line), the share of the
    Grad-CAM mass that falls inside the class's region, layer by layer; dashed: the region's share of the brain
    (a flat map). ``tables``: model → :func:`gradcam.localisation` output; ``regions``: target name → its region
    (default: the tumour classes'); ``controls``: model → :func:`gradcam.localisation_controls` output, drawn
    dotted (random weights) and dash-dot (the best raw input channel)."""
    regions = regions or {CLASS_NAMES[c]: CLASS_REGION[c] for c in (1, 2, 3)}
    colours = {"TC": LABEL_COLOURS[1], "WT": LABEL_COLOURS[2], "ET": (0.85, 0.6, 0.0, 1)}
    figure, axes = _subplots(1, len(tables), figsize=(4.2 * len(tables), 3.4), squeeze=False)
    for ax, (model, table) in zip(axes[0], tables.items()):
        layers = list(table)
        for name, region in regions.items():
            colour = colours.get(region, (0.6, 0.6, 0.6, 1))
            if name not in table[layers[0]] or region not in table[layers[0]][name]:
                continue
            inside = [table[layer][name][region].mass_inside for layer in layers]
            ax.plot(range(len(layers)), inside, marker="o", color=colour, label=f"{name} in {region}")
            ax.axhline(table[layers[0]][name][region].chance, color=colour, linestyle="--", linewidth=0.8)
            control = (controls or {}).get(model, {}).get("targets", {}).get(name)
            if control:
                ax.plot(range(len(layers)), [control["layers"][layer]["random weights"] for layer in layers],
                        linestyle=":", marker=".", color=colour, label=f"{name}: random weights")
                ax.axhline(control["raw input"]["mass_inside"], color=colour, linestyle="-.", linewidth=0.8,
                           label=f"{name}: raw {control['raw input']['channel']}")
        ax.set_xticks(range(len(layers)))
        ax.set_xticklabels(layers, rotation=60, fontsize=7)
        ax.set_ylim(0, 1.02)
        ax.set_title(model, fontsize=9)
        ax.set_ylabel("Grad-CAM mass inside region")
        ax.grid(alpha=0.3)
    axes[0, 0].legend(fontsize=7, loc="upper left")
    figure.tight_layout()
    return _save(figure, path, dpi)


def cascade_figure(found: dict, path: str | Path, title: str = "", dpi: int = 100) -> Path:
    """The sanity check of :func:`analyses.sanity.cascading_randomisation`: per class (panel), each layer's
    Spearman ρ with its trained map (line) as the layers are randomised from the output down (x: the layer added
    at each step). A map that explains the network falls once the weights above it are random."""
    steps = found["randomised"]
    classes = list(next(iter(found["spearman"].values())))
    figure, axes = _subplots(1, len(classes), figsize=(4.2 * len(classes), 3.4), squeeze=False)
    colours = colormaps["viridis"]
    for ax, name in zip(axes[0], classes):
        for i, (layer, per_class) in enumerate(found["spearman"].items()):
            rho = [np.nan if value is None else value for value in per_class[name]]
            ax.plot(range(len(steps)), rho, marker=".", color=colours(i / max(1, len(found["spearman"]) - 1)),
                    label=layer)
        ax.axhline(0, color="grey", linewidth=0.8)
        ax.set_xticks(range(len(steps)))
        ax.set_xticklabels(steps, rotation=60, fontsize=7)
        ax.set_xlabel("random from the output down to", fontsize=8)
        ax.set_ylim(-1.02, 1.02)
        ax.set_title(name, fontsize=9)
        ax.set_ylabel("Spearman ρ with the trained map")
        ax.grid(alpha=0.3)
    axes[0, 0].legend(fontsize=6, loc="lower left", ncol=2)
    if title:
        figure.suptitle(title, fontsize=9)
    figure.tight_layout()
    return _save(figure, path, dpi)


def concept_montage(case: Case, z: int, panels: list[tuple[str, np.ndarray, np.ndarray | None]], path: str | Path,
                    title: str = "", columns: int = 5, dpi: int = 90) -> Path:
    """Figures 2-4 of the paper: filters' concept masks over the FLAIR of one slice.

    ``panels``: (caption, mask ``(Y, X)`` bool, ground truth ``(Y, X)`` bool or None). The mask is filled cyan,
    the ground truth drawn as a yellow outline, so agreement is visible at a glance.
    """
    rows = max(1, -(-len(panels) // columns))
    figure, axes = _subplots(rows, columns, figsize=(2.3 * columns, 2.6 * rows), squeeze=False, facecolor="black")
    window = _window(case.images[0], case.brain_mask)
    for ax in axes.ravel():
        ax.set_axis_off()
    for ax, (caption, mask, truth) in zip(axes.ravel(), panels):
        ax.imshow(_masked(case, 0, z), cmap="gray", vmin=window[0], vmax=window[1])
        ax.imshow(np.ma.masked_where(~mask, mask), cmap=ListedColormap([(0.1, 0.9, 0.95, 1)]), alpha=0.55,
                  interpolation="nearest")
        if truth is not None and truth.any():
            ax.contour(truth.astype(float), levels=[0.5], colors=[(1, 0.85, 0.1)], linewidths=0.8)
        ax.set_title(caption, color="white", fontsize=7)
    figure.suptitle(title or f"{case.case_id} z={z}: concept masks (cyan) and ground truth (yellow outline)",
                    color="white", fontsize=9)
    figure.tight_layout(rect=(0, 0, 1, 0.95))
    return _save(figure, path, dpi)


def uncertainty_figure(case: Case, labels: np.ndarray, uncertainty: np.ndarray, path: str | Path,
                       slices: list[int] | None = None, title: str = "", dpi: int = 80) -> Path:
    """Figure 7 of the paper: per slice, ground truth | prediction | uncertainty (red), each over the FLAIR.
    The red scale runs to the 99.5th percentile of the uncertainty inside the brain, the same for every slice."""
    slices = slices or montage_slices(case)
    with_truth = case.labels is not None
    columns = (["ground truth"] if with_truth else []) + ["prediction", "uncertainty"]
    figure, axes = _subplots(len(slices), len(columns), figsize=(2.4 * len(columns), 2.5 * len(slices)),
                                squeeze=False, facecolor="black")
    window = _window(case.images[0], case.brain_mask)
    inside = uncertainty[case.brain_mask]
    top = float(np.percentile(inside, 99.5)) if inside.size and inside.max() > 0 else 1.0
    for row, z in enumerate(slices):
        panels = ([case.labels[z]] if with_truth else []) + [labels[z]]
        for column, panel in enumerate(panels):
            ax = axes[row, column]
            ax.imshow(_masked(case, 0, z), cmap="gray", vmin=window[0], vmax=window[1])
            ax.imshow(panel, cmap=ListedColormap(LABEL_COLOURS), vmin=0, vmax=3, interpolation="nearest", alpha=0.55)
        ax = axes[row, -1]
        ax.imshow(_masked(case, 0, z), cmap="gray", vmin=window[0], vmax=window[1])
        ax.imshow(np.ma.masked_less_equal(uncertainty[z], 0.02 * top), cmap=UNCERTAINTY_REDS, vmin=0, vmax=top)
        for column, name in enumerate(columns):
            axes[row, column].set_axis_off()
            if row == 0:
                axes[row, column].set_title(name, color="white", fontsize=9)
        axes[row, 0].text(2, 12, f"z={z}", color="yellow", fontsize=8)
    figure.suptitle(title or f"{case.case_id}: test-time dropout", color="white", fontsize=9)
    figure.tight_layout(rect=(0, 0, 1, 0.95))
    return _save(figure, path, dpi)


def error_by_uncertainty(analysis: dict, path: str | Path, title: str = "", dpi: int = 100) -> Path:
    """Error rate of the mean prediction in equal-count bins of each uncertainty map (low → high), AUROC in the
    legend; the dashed line is the brain's overall error rate. ``analysis``: from
    :func:`uncertainty.uncertainty_error_analysis`."""
    figure, ax = _subplots(figsize=(6, 3.6))
    for name, entry in analysis["maps"].items():
        rates = [b["error_rate"] for b in entry["bins"]]
        ax.plot(range(1, len(rates) + 1), rates, marker="o", label=f"{name} (AUROC {entry['auroc']:.3f})")
    ax.axhline(analysis["error_rate"], color="grey", linestyle="--", linewidth=0.8, label="overall error rate")
    ax.set_xlabel("uncertainty bin (equal voxel counts, low → high)")
    ax.set_ylabel("misclassified fraction")
    ax.set_yscale("symlog", linthresh=1e-4)  # bins with no error stay drawable
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    ax.set_title(title or "misclassification vs uncertainty, inside the brain", fontsize=8)
    figure.tight_layout()
    return _save(figure, path, dpi)


def _preimage_panel(ax, image: np.ndarray) -> None:
    low, high = np.nanpercentile(image, (1, 99))
    ax.imshow(np.ma.masked_invalid(image), cmap="gray", vmin=low, vmax=high if high > low else low + 1)
    ax.set_axis_off()


def orthogonal_slices(volume: np.ndarray, axes: str) -> np.ndarray:
    """A 3D pre-image ``(D, H, W)`` in the network's axes as its three central slices side by side — axial,
    coronal, sagittal, superior up — with a blank column between them (what the figures show of a volume)."""
    canonical = from_network_space(volume, axes)  # (z, y, x): towards superior, posterior, left
    z, y, x = (n // 2 for n in canonical.shape)
    views = [canonical[z], canonical[::-1, y, :], canonical[::-1, :, x]]
    height = max(view.shape[0] for view in views)
    gap = np.full((height, 1), np.nan, dtype=np.float32)
    padded = [np.pad(view.astype(np.float32), ((0, height - view.shape[0]), (0, 0)), constant_values=np.nan)
              for view in views]
    return np.concatenate([padded[0], gap, padded[1], gap, padded[2]], axis=1)


def preimage_view(result, row: int, channel: int) -> np.ndarray:
    """What a figure shows of pre-image ``row``'s ``channel``: the image, or a volume's orthogonal slices."""
    image = result.images[row, channel]
    return orthogonal_slices(image, result.axes) if image.ndim == 3 else image


def featviz_montage(runs: dict[str, "object"], path: str | Path, title: str = "", dpi: int = 80) -> Path:
    """Figure 6 of the paper: one row per filter; for each run (e.g. "unregularised", "regularised") the four
    sequences side by side — for a 3D network, each as its axial, coronal and sagittal central slices.
    ``runs``: label → :class:`featviz.FeatureVisualisation` (same targets)."""
    first = next(iter(runs.values()))
    labels = list(runs)
    channels = len(first.sequences)
    columns = channels * len(labels)
    width = 1.5 * (3 if first.images.ndim == 5 else 1)
    figure, axes = _subplots(len(first.targets), columns, figsize=(width * columns, 1.6 * len(first.targets) + 0.4),
                             squeeze=False, facecolor="black")
    for block, label in enumerate(labels):
        result = runs[label]
        for row, (layer, k) in enumerate(result.targets):
            for channel, sequence in enumerate(result.sequences):
                ax = axes[row, channels * block + channel]
                _preimage_panel(ax, preimage_view(result, row, channel))
                if row == 0:
                    name = MODALITY_TITLES[sequence]
                    ax.set_title(f"{label}\n{name}" if channel == 0 else name, color="white", fontsize=7)
            axes[row, channels * block].text(1, 8, f"{layer} #{k} act {result.final_activation[row]:.2f}",
                                             color="yellow", fontsize=6)
    figure.suptitle(title or "activation maximisation", color="white", fontsize=9)
    figure.tight_layout(rect=(0, 0, 1, 0.93))
    return _save(figure, path, dpi)


def featviz_sweep(sweep: dict[str, list], path: str | Path, title: str = "", dpi: int = 80) -> Path:
    """Figure 13 of the paper: one row per regulariser, one column per coefficient; the first channel of each
    pre-image (FLAIR for the paper's networks). ``sweep``: from :func:`featviz.regulariser_sweep`."""
    columns = max(len(values) for values in sweep.values())
    figure, axes = _subplots(len(sweep), columns, figsize=(1.7 * columns, 1.9 * len(sweep)), squeeze=False,
                                facecolor="black")
    for ax in axes.ravel():
        ax.set_axis_off()
    for row, (name, runs) in enumerate(sweep.items()):
        for column, (value, result) in enumerate(runs):
            _preimage_panel(axes[row, column], preimage_view(result, 0, 0))
            axes[row, column].set_title(f"{name} {value:g}", color="white", fontsize=7)
    figure.suptitle(title or "regulariser sweep (first channel)", color="white", fontsize=9)
    figure.tight_layout(rect=(0, 0, 1, 0.93))
    return _save(figure, path, dpi)


def review_figure(case: Case, labels: np.ndarray, entropy: np.ndarray, review: np.ndarray, regions: list,
                  path: str | Path, uncertain: float, title: str = "", half_width: int = 40, dpi: int = 100) -> Path:
    """The review regions ranked first, one panel each (:class:`analyses.review.ReviewRegion`): the axial slice
    through the region's place, ``half_width`` voxels around it — FLAIR, the entropy from ``uncertain`` nats up in
    red, the predicted tumour's outline (yellow) and the region's (cyan). All arrays on ``case``'s grid."""
    count = max(len(regions), 1)
    figure, axes = _subplots(1, count, figsize=(2.6 * count, 3.0), squeeze=False, facecolor="black")
    window = _window(case.images[0], case.brain_mask)
    top = max(float(entropy.max()), uncertain * 1.01)
    for ax, region in zip(axes[0], regions):
        z, y, x = region.place.canonical
        rows = slice(max(y - half_width, 0), y + half_width)
        columns = slice(max(x - half_width, 0), x + half_width)
        ax.imshow(_masked(case, 0, z)[rows, columns], cmap="gray", vmin=window[0], vmax=window[1])
        ax.imshow(np.ma.masked_less(entropy[z][rows, columns], uncertain), cmap=UNCERTAINTY_REDS, vmin=0, vmax=top)
        for mask, colour, width in (((labels[z] > 0)[rows, columns], "yellow", 0.8),
                                    ((review[z] == region.rank)[rows, columns], "cyan", 1.6)):  # the region on top
            if mask.any() and not mask.all():
                ax.contour(mask.astype(float), levels=[0.5], colors=colour, linewidths=width)
        ax.set_title(f"#{region.rank}: {region.volume_mm3:.0f} mm³, z={z}", color="white", fontsize=8)
        ax.set_axis_off()
    if not regions:
        axes[0, 0].text(0.5, 0.5, "nothing to review", color="white", ha="center", transform=axes[0, 0].transAxes)
        axes[0, 0].set_axis_off()
    figure.suptitle(title, color="white", fontsize=9)
    figure.tight_layout(rect=(0, 0, 1, 0.92))
    return _save(figure, path, dpi)


def cohort_scores(scores: dict[str, list[tuple[str, float]]], path: str | Path, title: str = "",
                  dpi: int = 100) -> Path:
    """Per-case scores of a cohort, one column per score (``scores``: name → (case, value) pairs): every case a dot
    (jittered sideways, seeded), the mean a bar; the lowest case of each column named."""
    figure, ax = _subplots(figsize=(1.6 + 1.3 * max(len(scores), 1), 3.2))
    rng = np.random.default_rng(0)
    for column, (name, pairs) in enumerate(scores.items()):
        values = np.array([value for _, value in pairs], dtype=float)
        if not values.size:
            continue
        ax.scatter(column + rng.uniform(-0.15, 0.15, values.size), values, s=12, alpha=0.7)
        ax.hlines(values.mean(), column - 0.3, column + 0.3, color="black")
        lowest = int(np.argmin(values))
        ax.annotate(pairs[lowest][0], (column, values[lowest]), fontsize=6, xytext=(4, -8),
                    textcoords="offset points")
    ax.set_xticks(range(len(scores)), list(scores))
    ax.set_ylim(0, 1.02)
    ax.set_title(title, fontsize=9)
    figure.tight_layout()
    return _save(figure, path, dpi)
