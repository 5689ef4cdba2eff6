"""What each command-line verb can be asked, as settings (:func:`settings.option`): its options are generated from
these classes (:func:`settings.add_config_options`), as ``explain``'s are from :class:`settings.ExplainConfig`, and
its job (:mod:`app.jobs`) takes them. A class's docstring is the verb's help: its first line the one-line summary,
the rest the description. A setting ``explain`` has too is taken from it (:func:`shared`): one spelling, one
default, one help text.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path

from ..analyses.featviz import MIN_SIZE, VOLUME_SIZE, FeatvizConfig, Regularisers
from ..data.case import MODALITIES
from ..data.phantom import SPACING_RANGE_MM
from ..scoring.lesions import CHALLENGES, DEFAULT_CHALLENGE
from .contract import PROGRESS_FORMATS
from ..testbed.bench import DISSECTION_VOLUMES
from .settings import MODEL_NAMES, ExplainConfig, option

_FEATVIZ, _REGULARISERS = FeatvizConfig(), Regularisers()


def shared(name: str, **changes):
    """``explain``'s setting ``name`` as another verb's option (``changes``: metadata that differs, or a default)."""
    setting = next(f for f in fields(ExplainConfig) if f.name == name)
    metadata = {**setting.metadata, **changes}
    return field(default=metadata.pop("default", setting.default), metadata=metadata)


def required(help: str, **cli):
    return option(None, help, required=True, **cli)


def positional(help: str, **cli):
    return option(None, help, positional=True, **cli)


def overwrite(what: str = "OUT"):
    return option(False, f"replace {what} (an earlier result) once the new one is complete")


@dataclass(frozen=True)
class Output:
    out: Path | None = required("output folder")
    overwrite: bool = overwrite()


@dataclass(frozen=True)
class ModelChoice:
    """The network, its weights and the device (every verb that loads one)."""

    model: str | None = required(f"{', '.join(MODEL_NAMES)} (shipped), a MONAI bundle folder (configs/, "
                                 "models/model.pt) or an nnU-Net trained-model folder (plans.json, fold_k/)")
    folds: str | None = shared("folds")
    weights: Path | None = option(None, "your own weights file instead of the shipped ones")
    trust_bundle: bool = shared("trust_bundle")
    device: str = shared("device")


@dataclass(frozen=True)
class Resampling:
    resample: bool = shared("resample")


@dataclass(frozen=True)
class Preprocessing:
    """BraTS-style preprocessing of a case (co-registration, atlas pose, brain mask: data.preprocess)."""

    coregister: str = shared("coregister")
    atlas: str = shared("atlas")
    brain_mask: str = shared("brain_mask")


@dataclass(frozen=True)
class CasePreparation(Preprocessing, Resampling):
    """How one case reaches the network: preprocessed, and resampled into its space (or not)."""


@dataclass(frozen=True)
class LesionRule:
    challenge: str = option(DEFAULT_CHALLENGE, "the BraTS 2023 challenge whose lesion-wise rule to apply (default "
                            "brats-gli: ground-truth lesions merged by a 3-voxel dilation, lesions of 50 mm³ or less "
                            "not scored)", choices=tuple(CHALLENGES))
    dilation: int | None = option(None, "override the rule's dilation (voxels)", minimum=0)
    min_lesion_mm3: float | None = option(None, "override the rule's volume threshold (mm³)", minimum=0)


@dataclass(frozen=True)
class Batching:
    slices_per_batch: int | None = option(None, "slices per forward (default: by device)", minimum=1)
    passes_per_forward: int | None = option(None, "dropout passes per forward (default: by device; one forward "
                                            "carries slices × passes images)", minimum=1)


@dataclass(frozen=True)
class DemoOptions:
    """the main job on shipped defaults: explain the shipped sample case

    Runs explain on the shipped sample case (or a fresh phantom with --seed) with a shipped network: segmentation,
    uncertainty, Grad-CAM, concept detectors, feature visualisation, figures and report.html. Its own output folder
    is replaced."""

    out: Path = option(Path("demo-output"), "output folder")
    model: str = shared("model", help="shipped network (the best on held-out phantoms)", choices=MODEL_NAMES,
                        metavar=None)
    seed: int | None = option(None, "generate a phantom with this seed instead of using the shipped sample",
                              minimum=0)
    device: str = shared("device")


@dataclass(frozen=True)
class ExplainInputs:
    """every analysis of one case: the files, figures and report.html

    Writes OUT/segmentation.nii.gz (0/1/2/4), uncertainty/entropy/mutual_information.nii.gz,
    gradcam/<layer>_<class>.nii.gz, concepts/<layer>_<filter>_<concept>.nii.gz, featviz/*.png, figures/*.png,
    summary.json and report.html, all on the case's own grid."""

    case: Path | None = positional("BraTS case folder (or give the four files), or a dataset: a folder of case "
                                   "folders or a .txt/.csv list of them, written to OUT/<case-id>/ with "
                                   "OUT/cohort.csv, cohort.json and cohort.html; a rerun resumes (see "
                                   "docs/datasets.md)", nargs="?")
    flair: Path | None = option(None, "flair file, instead of a case folder")
    t1: Path | None = option(None, "t1 file, instead of a case folder")
    t1ce: Path | None = option(None, "t1ce file, instead of a case folder")
    t2: Path | None = option(None, "t2 file, instead of a case folder")
    seg: Path | None = option(None, "ground-truth label file (optional, with the four files)")
    out: Path | None = required("output folder (must not exist, unless --overwrite)")
    progress: str = option("text", "text: [stage] lines; json: one JSON event per line on stdout, for programs",
                           choices=PROGRESS_FORMATS)

    def modality_files(self) -> list[Path | None]:
        return [getattr(self, modality) for modality in MODALITIES]


@dataclass(frozen=True)
class PhantomOptions:
    """generate BraTS-like phantom cases on the MNI ICBM152 anatomy

    Writes OUT/Phantom_<seed>/ case folders (BraTS 2018-2021 naming, labels 0/1/2/4, plus _tissue: 0 bg, 1 CSF,
    2 GM, 3 WM). Case i uses seed SEED+i; same seed, same files."""

    out: Path | None = required("output folder")
    cases: int = option(1, "number of cases", minimum=1)
    seed: int = option(0, "seed of the first case", minimum=0)
    spacing: float = option(1.0, "voxel size in mm (1.0: BraTS's 240x240x155)", minimum=SPACING_RANGE_MM[0],
                            maximum=SPACING_RANGE_MM[1])
    montage: bool = option(False, "also write <case>/<id>_montage.png")
    overwrite: bool = overwrite("an existing case folder of the same seed")


@dataclass(frozen=True)
class MontageOptions:
    """PNG montage of a case (4 sequences, labels, tissue)"""

    case: Path | None = positional("BraTS case folder")
    out: Path | None = required("PNG file to write")
    overwrite: bool = overwrite()


@dataclass(frozen=True)
class ScoreOptions(LesionRule):
    """Dice and HD95 (mm) of a segmentation against ground truth, for WT, TC, ET, legacy and lesion-wise (BraTS 2023)"""

    pred: Path | None = required("predicted label file")
    gt: Path | None = required("ground-truth label file (same grid)")
    labels: str = option("brats2021", "label convention of both files (brats2021: ET=4)",
                         choices=("brats2021", "brats2023"))
    json: Path | None = option(None, "also write the scores as JSON")
    overwrite: bool = overwrite("the JSON file")


@dataclass(frozen=True)
class Training:
    data: Path | None = required("folder of case folders (BraTS or phantoms)")
    device: str = option("auto", "auto, cpu, cuda or cuda:N", type="device")
    no_resume: bool = option(False, "ignore an existing checkpoint")


@dataclass(frozen=True)
class TrainOptions(Training):
    """train a network on random axial slices of BraTS-named case folders

    Loss: soft Dice + class-weighted cross-entropy; Adam with cosine decay; seeded. The last --validation cases
    (sorted by name) are held out for the per-epoch validation Dice. A checkpoint after every epoch (WEIGHTS.ckpt)
    lets a rerun resume."""

    model: str | None = required("denseunet, resunet or simunet")
    out: Path | None = required("weights file to write (.pt)")
    acquisition_cache: Path | None = option(None, "folder keeping the clinical acquisitions, so that a rerun, a "
                                            "resumed run or another network on the same cases and seed reads them "
                                            "instead of making them again (keyed by case, acquisition, training "
                                            "space and library version)")
    overwrite: bool = overwrite("an existing weights file")


@dataclass(frozen=True)
class TrainBundleOptions(Training):
    """train MONAI's SegResNet in 3D on BraTS-named case folders and write it as a MONAI bundle folder

    The recipe of the shipped 3D network (app/bundle_training.py): sigmoid TC/WT/ET, cases resampled to --spacing
    mm, random cubes, MONAI's DiceCELoss, AdamW with cosine decay; seeded. The last --validation cases are held out
    for the per-epoch validation Dice. A checkpoint after every epoch (OUT.checkpoint.pt) lets a rerun resume."""

    out: Path | None = required("bundle folder to write")
    overwrite: bool = overwrite("an existing bundle folder written by this command")


@dataclass(frozen=True)
class EvaluateOptions(LesionRule, Resampling, ModelChoice):
    """per-case and mean Dice/HD95 of a network on labelled cases (Table 1), legacy and lesion-wise (BraTS 2023)"""

    data: Path | None = required("a case folder, a folder of case folders or a .txt/.csv list of them; a case that "
                                 "cannot be evaluated is an error line and the others go on (exit 2)")
    json: Path | None = option(None, "also write per-case and mean scores (with bootstrap 95 %% intervals) and the "
                               "failed cases as JSON")
    overwrite: bool = overwrite("the JSON file")


@dataclass(frozen=True)
class SegmentOptions(CasePreparation, ModelChoice):
    """segment a case with a network; labels written on the case's own grid"""

    case: Path | None = positional("BraTS case folder, or a dataset (a folder of case folders or a .txt/.csv "
                                   "list): then OUT is a folder of OUT/<case-id>/segmentation.nii.gz with "
                                   "cohort.csv, resumable")
    out: Path | None = required("label file to write (.nii.gz, .nii, .nrrd or .mha), in the case's convention (a "
                                "folder for a dataset)")
    overwrite: bool = overwrite()


@dataclass(frozen=True)
class PreprocessOptions(Preprocessing, Output):
    """BraTS-style preprocessing of a clinical case, written as a case folder to check (in 3D Slicer or any viewer) before any analysis

    Writes OUT/ as a case folder with the input's file names: the four sequences co-registered onto the FLAIR and
    skull-stripped, on the FLAIR's own grid (its intensities, not z-scores; labels and tissue carried over),
    OUT/registration/*.tfm (each co-registration, and the head's pose against the atlas), OUT/brain_mask.nii.gz when
    the brain was masked, OUT/preprocessing.json (each step, why, seconds). explain takes OUT as preprocessed (one
    grid, skull-stripped) and keeps its pose unless --atlas always. The input is only read."""

    case: Path | None = positional("BraTS case folder")


@dataclass(frozen=True)
class GradcamOptions(Output, CasePreparation, ModelChoice):
    """layer-wise Grad-CAM of a case: every layer from one forward pass (paper 3.2)

    Writes OUT/<model>/<layer>_<class>.nii.gz (raw maps on the case's own grid), OUT/<model>/gradcam_z<Z>.png
    montages, OUT/<model>/localisation.json (share of each map inside brain, WT, TC, ET per layer, beside the same
    architecture with random weights and the raw input channels) and OUT/topdown.png (those shares across layers:
    the paper's top-down claim, measured); --sanity adds the cascading-randomisation check."""

    model: str | None = required("denseunet, resunet, simunet, or several comma-separated; or a MONAI bundle folder "
                                 "or nnU-Net trained-model folder (every output channel, windowed)")
    weights: Path | None = option(None, "your own weights file instead of the shipped ones (one model)")
    case: Path | None = positional("BraTS case folder")
    layers: str = option("all", "'all' or comma-separated layer names")
    classes: str = option("tumour", "'tumour' (ncr,ed,et), 'all', or e.g. ed,et or 2,3 (a 3D network: its outputs "
                          "by name or index; tumour and all: every output)")
    slices: str = option("auto", "axial slices for the montages: 'auto' (largest tumour cross-section) or "
                         "comma-separated indices")
    target: str = shared("gradcam_target", flags=("--target",))
    pool: str = shared("gradcam_pool", flags=("--pool",))
    no_volume: bool = option(False, "only the montage slices: no NIfTI, no localisation")
    sanity: bool = option(False, "also the sanity check of the maps (Adebayo et al. 2018): the layers randomised "
                          "from the output down, one more per step, and each map's Spearman rho with the trained "
                          "one over every 4th computed slice (OUT/<model>/sanity.json and sanity.png); a map that "
                          "does not move is not explaining the network")
    full_resolution: bool = shared("full_resolution")
    batch_size: int = option(8, "slices per forward pass", minimum=1)


@dataclass(frozen=True)
class DissectOptions(Output, Resampling, ModelChoice):
    """network dissection: which filters detect which concepts (paper 3.1)

    Thresholds every filter at its dataset-wide top-1% level (streamed, bounded memory), post-processes the concept
    masks as the paper does and measures IoU against WT, TC, ET, ED, NCR (labels) and brain, WM, GM, CSF (phantom
    tissue maps) — for the network, the same architecture with random weights and the raw input channels: a filter
    is a detector only when it beats both controls by the margin. Writes OUT/dissection.json (thresholds and IoUs:
    give it to explain), OUT/tables/<layer>.csv (and controls.csv), OUT/detectors.json, OUT/dissection.png and, per
    case, OUT/concepts/<case>/<layer>_<filter>_<concept>.nii.gz for the best detector of each concept."""

    data: Path | None = required("a case folder or a folder of case folders")


@dataclass(frozen=True)
class UncertaintyOptions(Output, Batching, CasePreparation, ModelChoice):
    """test-time-dropout uncertainty of a case (paper section 5)

    T stochastic passes with only dropout active (batched, seeded). Writes, on the case's own grid:
    segmentation.nii.gz (labels of the mean prediction), uncertainty.nii.gz (channel mean of the class variances,
    eq. 9b), entropy.nii.gz and mutual_information.nii.gz (nats); uncertainty.png (ground truth | prediction |
    uncertainty); with ground truth, error_by_uncertainty.png and the AUROC of each map for misclassified voxels in
    summary.json."""

    case: Path | None = positional("BraTS case folder")
    quick: bool | None = shared("quick")
    passes: int = shared("passes")
    seed: int = shared("seed")
    ensemble: str | None = shared("ensemble")
    full_resolution: bool = shared("full_resolution")
    agreement: bool = option(False, "when quick: also run the full T passes and print the Pearson r of the maps in "
                             "the brain")


@dataclass(frozen=True)
class TemplateOptions:
    """the dataset's mean image: the style template of feature visualisation

    Averages the z-scored sequences over every brain slice of the cases and writes them as an .npz (read back
    without unpickling). With --model, a 3D network's: the mean of its inputs over each case's brain box, resized to
    --size per side."""

    data: Path | None = required("a case folder or a folder of case folders")
    out: Path | None = required(".npz file to write")
    model: str | None = option(None, "a 3D network (shipped name or bundle folder) whose template to make")
    trust_bundle: bool = shared("trust_bundle")
    size: int = option(VOLUME_SIZE, "a 3D template's voxels per side", minimum=MIN_SIZE)
    overwrite: bool = overwrite()


@dataclass(frozen=True)
class AblateOptions(Output, CasePreparation, ModelChoice):
    """filter ablation: does what a filter detects matter to the segmentation?

    Sets each chosen filter's output to zero (one at a time, or all at once with --together), segments the case
    again and prints, per region, the Dice against the ground truth before and after (when the case has one), the
    agreement with the intact segmentation and the share of brain voxels that changed; writes OUT/ablation.json.
    The causal check beside dissection's correlational one (BioExp, the paper authors' library, has it)."""

    case: Path | None = positional("BraTS case folder")
    layer: str | None = option(None, "layer of the filters given by index alone")
    filters: str | None = required("comma-separated filter indices of --layer, or layer:index pairs (e.g. "
                                   "enc2:5,dec1:3)")
    together: bool = option(False, "zero all the filters at once (one result) instead of one at a time")


@dataclass(frozen=True)
class FeatvizOptions(Output, ModelChoice):
    """activation maximisation: the pre-image that excites a filter (paper 4)

    Optimises one 4-sequence pre-image per filter, with and without regularisers, and writes OUT/featviz_<layer>.png
    (Figure 6), OUT/featviz_<layer>.npz (the pre-images) and OUT/featviz_<layer>.json; --sweep adds
    OUT/sweep_<layer>_<filter>.png (Figure 13)."""

    layer: str | None = option(None, "layer of the filters given by index alone")
    filters: str | None = required("comma-separated filter indices of --layer, or layer:index pairs (e.g. "
                                   "enc2:5,dec1:3: filters of several layers optimised in one batch, as explain does)")
    steps: int = option(_FEATVIZ.steps, "optimisation steps", minimum=1)
    size: int | None = option(None, f"pre-image size in pixels (default {_FEATVIZ.size}; a 3D network's voxels per "
                              f"side, default {VOLUME_SIZE})", minimum=MIN_SIZE)
    lr: float = option(_FEATVIZ.learning_rate, "learning rate", above=0)
    seed: int = option(_FEATVIZ.seed, "seed of the start image", minimum=0)
    jitter: int = option(_REGULARISERS.jitter, "pixels", minimum=0)
    rotation: float = option(_REGULARISERS.rotation, "degrees", minimum=0, maximum=180)
    tv: float = option(_REGULARISERS.tv, "total variation coefficient", minimum=0)
    l2: float = option(_REGULARISERS.l2, "L2 coefficient", minimum=0)
    style: float = option(_REGULARISERS.style, "style (MMD to the template) coefficient", minimum=0)
    sigma: float = option(_REGULARISERS.sigma, "style kernel width (z-score units)", above=0)
    template: Path | None = option(None, "template .npz (default: the shipped phantom template; a 3D network's from "
                                   "`template --model`)")
    sweep: bool = option(False, "also the regulariser sweep for the first filter")


@dataclass(frozen=True)
class BenchOptions(Batching):
    """benchmarks: ours against the naive loop or a peer, ratio in one run

    Each benchmark times two ways of the same work on the same model, seed, input and device, and prints the ratio:
    ttd (batched vs naive per-slice, per-pass loop; quick vs T), gradcam (all layers × 4 classes vs Captum per
    (layer, class), with the maps' largest difference), dissection (peak memory for 4/16/48 volumes, threshold error
    vs exact quantiles), segmentation, featviz, slicer (push one explain run into a scene). Results in BENCHMARKS.md
    come from this command."""

    case: Path | None = option(None, "case folder or saved case (.npz); default the sample")
    only: str = option("all", "all, or some of ttd,gradcam,dissection,segmentation,featviz,slicer")
    dissection_volumes: str = option(",".join(map(str, DISSECTION_VOLUMES)), "volumes per dissection-memory "
                                     "measurement, comma-separated")
    dissection_data: Path | None = option(None, "case folders to cycle through for the dissection (default: the "
                                          "bench case, repeated)")
    explain_run: Path | None = option(None, "an explain output folder (slicer benchmark)")
    json: Path | None = option(None, "write every number to this JSON file")
    markdown: Path | None = option(None, "write a BENCHMARKS.md section to this file")
    overwrite: bool = overwrite("the JSON and Markdown files")
