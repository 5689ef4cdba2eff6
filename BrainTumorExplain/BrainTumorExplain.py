"""BrainTumorExplain: open up brain-tumour segmentation networks (Natekar et al., Front. Comput. Neurosci. 2020).

This file is the Slicer module shell: module description, a thin widget and the self-test. Everything that touches
MRML lives in the Qt-free ``BrainTumorExplainLogic`` package; torch is never imported when Slicer loads the module.
"""

from pathlib import Path

import qt
import slicer
from slicer.i18n import tr as _
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleLogic,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)

from BrainTumorExplainLogic import ensure_library_importable, ijk_to_ras, load_case_nodes

ensure_library_importable()
from BrainTumorExplainLib.case import SAMPLE_CASE  # noqa: E402  (numpy and SimpleITK only, both ship with Slicer)


class BrainTumorExplain(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("Brain Tumor Explain")
        self.parent.categories = [_("Segmentation")]
        self.parent.contributors = ["BrainTumorExplain developers"]
        self.parent.helpText = _(
            "Segment gliomas on the four BraTS MRI sequences (FLAIR, T1, T1ce, T2) and see how the network decides: "
            "concept masks per filter, layer-wise Grad-CAM, feature visualisation and test-time-dropout uncertainty."
        )
        self.parent.acknowledgementText = _(
            "Implements Natekar, Kori and Krishnamurthi, 'Demystifying brain tumor segmentation networks', 2020. "
            "The sample case is a phantom on the MNI ICBM152 2009a template (Copyright (C) 1993-2009 Louis Collins, "
            "McConnell Brain Imaging Centre, Montreal Neurological Institute, McGill University)."
        )


class BrainTumorExplainWidget(ScriptedLoadableModuleWidget):
    """The panel: load a case, show it. Analyses are added by later steps; the widget only calls the logic."""

    def setup(self):
        ScriptedLoadableModuleWidget.setup(self)
        self.logic = BrainTumorExplainLogic()
        form = qt.QFormLayout()
        self.layout.addLayout(form)
        self.sampleButton = qt.QPushButton(_("Load sample case"))
        self.sampleButton.toolTip = _("A shipped BraTS-like phantom with ground truth (no download)")
        self.folderButton = qt.QPushButton(_("Load BraTS case folder..."))
        self.folderButton.toolTip = _("A folder with _flair/_t1/_t1ce/_t2(/_seg) or -t2f/-t1n/-t1c/-t2w(/-seg) files")
        self.statusLabel = qt.QLabel("")
        self.statusLabel.wordWrap = True
        form.addRow(self.sampleButton)
        form.addRow(self.folderButton)
        form.addRow(self.statusLabel)
        self.layout.addStretch(1)
        self.sampleButton.clicked.connect(lambda: self.loadCase(SAMPLE_CASE))
        self.folderButton.clicked.connect(self.chooseFolder)

    def chooseFolder(self):
        folder = qt.QFileDialog.getExistingDirectory(slicer.util.mainWindow(), _("BraTS case folder"))
        if folder:
            self.loadCase(Path(folder))

    def loadCase(self, folder: Path):
        with slicer.util.tryWithErrorDisplay(_("Could not load the case."), waitCursor=True):
            nodes = self.logic.loadCase(folder)
            slicer.util.setSliceViewerLayers(background=nodes.volumes["flair"], label=nodes.labels, fit=True)
            self.statusLabel.text = _("Loaded {case}: FLAIR, T1, T1ce, T2{labels}.").format(
                case=nodes.case_id, labels=_(" and labels") if nodes.labels else "")


class BrainTumorExplainLogic(ScriptedLoadableModuleLogic):
    """Thin adapter from the module to the Qt-free logic package."""

    def loadCase(self, source):
        return load_case_nodes(slicer.mrmlScene, source)


class BrainTumorExplainTest(ScriptedLoadableModuleTest):
    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_sample_case_loads_with_brats_geometry()

    def test_sample_case_loads_with_brats_geometry(self):
        nodes = BrainTumorExplainLogic().loadCase(SAMPLE_CASE)
        self.assertEqual(sorted(nodes.volumes), ["flair", "t1", "t1ce", "t2"])
        self.assertIsNotNone(nodes.labels)
        matrix = ijk_to_ras(nodes.volumes["flair"])
        self.assertEqual(matrix[0, 0], -1.0)
        self.assertEqual(matrix[1, 3], 239.0)
        self.delayDisplay("Sample case loaded with BraTS geometry")
