"""Desktop Slicer readiness (5.6, 5.8, 5.10), checked here without the application: the panel's bindings against
Slicer's own connector rules, every Slicer API against the versions that have it, the terminology, the background
run's process tree, the PyTorch questions, the self-test, the extension index's checks, and transformed inputs."""

from __future__ import annotations

import ast
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
import time
import xml.etree.ElementTree as ElementTree
from pathlib import Path

import numpy as np
import pytest
from conftest import loaded_with_the_module

ROOT = Path(__file__).resolve().parents[1]
MODULE = ROOT / "BrainTumorExplain"
MODULE_FILE = MODULE / "BrainTumorExplain.py"
UI_FILE = MODULE / "Resources" / "UI" / "BrainTumorExplain.ui"

# the MRML tests run on slicer-core (a test dependency), which the logic package needs at import
slicer = pytest.importorskip("slicer")
sys.path.insert(0, str(MODULE))

from BrainTumorExplainLogic import (  # noqa: E402
    ExplainProcess,
    RunOutputs,
    TorchProbe,
    add_volume_from_canonical,
    check_input_nodes,
    ijk_to_ras,
    load_case_nodes,
    panel_config,
    register_terminology,
    sample_data_source,
    world_ijk_to_ras,
)
from BrainTumorExplainLogic.explainrun import write_node  # noqa: E402
from BrainTumorExplainLogic.results import (  # noqa: E402
    TERMINOLOGY_CONTEXT,
    TERMINOLOGY_FILE,
    terminology_entry,
    terminology_resolves,
)
from BrainTumorExplainLogic.selftest import _terminology, check_results_push  # noqa: E402

from BrainTumorExplainLib.data.case import SAMPLE_CASE, load_case, read_image  # noqa: E402

# Slicer's GUI connectors (Base/Python/slicer/parameterNodeWrapper/guiConnectors.py; read at v5.6.0, v5.8.1 and
# v5.10.0): the widget class (matched exactly: ``type(widget) == ...``) → the parameter types it represents, what
# the annotation must add, and the first version that has the connector. "choice": QComboBoxToStringableConnector
# raises unless a Choice annotation is there; "bounded": the QSlider/ctkSliderWidget connectors raise unless
# WithinRange (or Minimum and Maximum) bound the value.
CONNECTORS = {
    "QCheckBox": ({"bool"}, None, (5, 6)),
    "QPushButton": ({"bool"}, None, (5, 6)),
    "QSpinBox": ({"int"}, None, (5, 6)),
    "QSlider": ({"int"}, "bounded", (5, 6)),
    "QDoubleSpinBox": ({"float"}, None, (5, 6)),
    "ctkSliderWidget": ({"float"}, "bounded", (5, 6)),
    "QComboBox": ({"str", "int", "float", "bool", "enum"}, "choice", (5, 6)),
    "QLineEdit": ({"str"}, None, (5, 10)),  # before 5.10 its connector rewrites the text on every change
    "QTextEdit": ({"str"}, None, (5, 6)),
    "QLabel": ({"str"}, None, (5, 8)),  # QLabelToStrConnector is new in 5.8
    "ctkPathLineEdit": ({"Path"}, None, (5, 6)),
    "ctkDirectoryButton": ({"Path"}, None, (5, 6)),
    "qMRMLNodeComboBox": ({"node"}, None, (5, 6)),
}
OLDEST_SUPPORTED = (5, 6)


def _parameter_node_fields() -> dict[str, tuple[str, set[str], ast.expr | None, ast.expr | None]]:
    """Field → (base type, annotation names, Choice argument, default) of the module's parameter node."""
    tree = ast.parse(MODULE_FILE.read_text())
    node_class = next(node for node in tree.body if isinstance(node, ast.ClassDef)
                      and any(getattr(d, "id", None) == "parameterNodeWrapper" for d in node.decorator_list))
    fields = {}
    for statement in node_class.body:
        if not isinstance(statement, ast.AnnAssign):
            continue
        annotation, names, choice = statement.annotation, set(), None
        if isinstance(annotation, ast.Subscript) and getattr(annotation.value, "id", "") == "Annotated":
            base, *extras = annotation.slice.elts
            for extra in extras:
                names.add(extra.func.id)
                if extra.func.id == "Choice":
                    choice = extra.args[0]
            annotation = base
        if isinstance(annotation, ast.Attribute) and annotation.attr.startswith("vtkMRML"):
            kind = "node"
        else:
            kind = getattr(annotation, "id", ast.dump(annotation))
        fields[statement.target.id] = (kind, names, choice, statement.value)
    return fields


def _bindings() -> dict[str, str]:
    """Parameter name → class of the .ui widget bound to it with SlicerParameterName."""
    bound = {}
    for widget in ElementTree.parse(UI_FILE).iter("widget"):
        for prop in widget.findall("property"):
            if prop.get("name") == "SlicerParameterName":
                bound[prop.find("string").text] = widget.get("class")
    return bound


def _module_namespace() -> dict:
    """The names the parameter node's choices and defaults are built from, as the module imports them."""
    from BrainTumorExplainLib.app import settings

    tree = ast.parse(MODULE_FILE.read_text())
    imported = {alias.name for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)
                and node.module == "BrainTumorExplainLib.app.settings" for alias in node.names}
    namespace = {name: getattr(settings, name) for name in imported}
    for statement in tree.body:  # module-level constants such as DEFAULTS = ExplainConfig()
        if isinstance(statement, ast.Assign) and isinstance(statement.value, ast.Call):
            namespace[statement.targets[0].id] = eval(compile(ast.Expression(statement.value), "m", "eval"),
                                                      namespace)
    return namespace


def test_every_bound_widget_has_a_slicer_connector_for_its_parameter_in_every_supported_version():
    fields, bound = _parameter_node_fields(), _bindings()
    assert {"flair", "t1", "t1ce", "t2", "model", "device", "classes"} <= set(bound)
    namespace = _module_namespace()
    for name, widget_class in bound.items():
        assert name in fields, f"the .ui binds {name!r}, which the parameter node lacks"
        kind, annotations, choice, default = fields[name]
        types, requirement, since = CONNECTORS[widget_class]
        assert kind in types, f"{widget_class} cannot represent {name}: {kind}"
        assert since <= OLDEST_SUPPORTED, f"{widget_class} has a connector only from {since}"
        if requirement == "choice" and kind != "enum":
            assert choice is not None, f"{name}: a QComboBox needs Annotated[{kind}, Choice([...])]"
            choices = eval(compile(ast.Expression(choice), "choice", "eval"), namespace)
            value = eval(compile(ast.Expression(default), "default", "eval"), namespace)
            assert value in choices, f"{name}: default {value!r} is not among its choices {choices}"
        if requirement == "bounded":
            assert "WithinRange" in annotations or {"Minimum", "Maximum"} <= annotations, name


def test_the_panel_binds_with_a_call_that_returns_its_tag_in_every_version():
    """connectGui returns the tag disconnectGui needs only from 5.10 (wrapper.py); connectParametersToGui does in
    5.6, 5.8 and 5.10. Without the tag, old connectors stay live and reset the combo boxes on every bind."""
    source = MODULE_FILE.read_text()
    assert ".connectGui(" not in source and ".connectParametersToGui(" in source


def test_the_panels_choices_are_the_librarys():
    from BrainTumorExplainLib.app.settings import MODEL_NAMES, UNCERTAINTY_MODES, ExplainConfig
    from BrainTumorExplainLib.models import SHIPPED_NETWORKS

    namespace, fields = _module_namespace(), _parameter_node_fields()
    assert SHIPPED_NETWORKS == MODEL_NAMES
    assert eval(compile(ast.Expression(fields["model"][2]), "c", "eval"), namespace) == list(MODEL_NAMES)
    defaults = ExplainConfig()
    for name in ("model", "device", "passes", "layers", "classes"):
        assert eval(compile(ast.Expression(fields[name][3]), "d", "eval"), namespace) == getattr(defaults, name), name
    # Uncertainty sampling: the library's default (auto: quick on a CPU, the full passes on a GPU), not quick always.
    assert eval(compile(ast.Expression(fields["uncertainty"][2]), "c", "eval"), namespace) == list(UNCERTAINTY_MODES)
    default = eval(compile(ast.Expression(fields["uncertainty"][3]), "d", "eval"), namespace)
    assert UNCERTAINTY_MODES[default] is defaults.quick is None
    combo_items = [item for widget in ElementTree.parse(UI_FILE).iter("widget")
                   if widget.get("class") == "QComboBox" and widget.get("name") in
                   ("modelComboBox", "deviceComboBox", "classesComboBox", "uncertaintyComboBox")
                   for item in widget.iter("item")]
    assert not combo_items, "the bound combo boxes are filled by Slicer's connector from the Choice, not the .ui"


def _api_checker():
    spec = importlib.util.spec_from_file_location("check_slicer_api", ROOT / "scripts" / "check_slicer_api.py")
    checker = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = checker  # dataclasses look their module up while the file runs
    spec.loader.exec_module(checker)
    return checker


def test_every_slicer_api_the_module_calls_exists_since_5_6():
    """docs/slicer-api.md is generated from Slicer's source at v5.6.0 ... v5.10.0 (scripts/check_slicer_api.py);
    here: every API the code uses now is in it, and none is newer than 5.6."""
    checker = _api_checker()
    used = checker.used_api(MODULE)
    documented = checker.documented_api(ROOT / "docs" / "slicer-api.md")
    undocumented = sorted(set(used) - set(documented))
    assert not undocumented, f"run `{checker.COMMAND}`: {undocumented}"
    too_new = {name: documented[name] for name in used if not checker.supported_since(documented[name], "5.6.0")}
    assert not too_new, too_new


def _python39() -> str | None:
    """A working Python 3.9 on this machine, if there is one (pyenv's shim answers even when it has none)."""
    candidates = [shutil.which("python3.9"), *map(str, sorted(Path("/root/.pyenv/versions").glob("3.9*/bin/python3.9")))]
    for candidate in filter(None, candidates):
        if subprocess.run([candidate, "--version"], capture_output=True).returncode == 0:
            return candidate
    return None


def test_the_module_and_library_parse_as_the_python_of_slicer_5_6_and_5_8():
    """Slicer 5.6 and 5.8 bundle Python 3.9: their syntax, and (where a 3.9 is here) its own compiler."""
    files = [*MODULE.rglob("*.py"), *(ROOT / "BrainTumorExplainLib").rglob("*.py")]
    for path in files:
        ast.parse(path.read_text(), str(path), feature_version=(3, 9))
    python39 = _python39()
    if python39:
        done = subprocess.run([python39, "-c", "import sys\nfor f in sys.argv[1:]: compile(open(f).read(), f, 'exec')",
                               *map(str, files)], capture_output=True, text=True)
        assert done.returncode == 0, done.stderr[-2000:]


def test_loading_the_module_needs_no_package_slicer_lacks():
    """The generic tests of the extension build machines load the module without torch (nor scipy, nibabel,
    matplotlib, SimpleITK...): at load, only the standard library, numpy and Slicer's own modules."""
    allowed = set(sys.stdlib_module_names) | {"numpy", "slicer", "vtk", "qt", "ctk"}
    seen = loaded_with_the_module(ROOT)
    for path, imported in seen.items():
        foreign = sorted(name for name in imported if name.split(".")[0] not in allowed)
        assert not foreign, f"{path.relative_to(ROOT)} imports {', '.join(foreign)} when the module loads"
    assert MODULE / "BrainTumorExplainLogic" / "explainrun.py" in seen
    assert ROOT / "BrainTumorExplainLib" / "app" / "settings.py" in seen
    assert ROOT / "BrainTumorExplainLib" / "analyses" / "__init__.py" in seen


def test_process_options_give_a_whole_process_tree_and_no_console_window():
    from BrainTumorExplainLogic.explainrun import CREATE_NEW_PROCESS_GROUP, CREATE_NO_WINDOW, process_options

    assert process_options("posix") == {"start_new_session": True}
    windows = process_options("nt")
    assert windows["creationflags"] == CREATE_NEW_PROCESS_GROUP | CREATE_NO_WINDOW
    assert (CREATE_NEW_PROCESS_GROUP, CREATE_NO_WINDOW) == (0x200, 0x08000000)  # winbase.h


def test_install_plans_say_what_they_install():
    from BrainTumorExplainLogic import install_plan

    assert install_plan([], True) is None and install_plan({}, True) is None
    extension = install_plan(["torch>=2.6", "nibabel"], True)
    assert extension.torch == "extension" and extension.packages == ("nibabel",) and "GPU" in extension.question
    assert extension.torch_requirement == "torch>=2.6" and extension.torch_version == ">=2.6"
    windows = install_plan(["torch>=2.6"], False, system="Windows")
    assert windows.torch == "pip" and "CPU-only" in windows.question and "Extensions Manager" in windows.question
    assert install_plan(["scipy"], False).torch == "" and "scipy" in install_plan(["scipy"], False).question
    nnunet = install_plan(["scipy", "dynamic-network-architectures>=0.4", "scikit-image>=0.19.3"], True)
    assert nnunet.packages == ("scipy", "scikit-image>=0.19.3")  # scikit-image comes with its own dependencies
    assert nnunet.without_dependencies == ("dynamic-network-architectures>=0.4",)
    assert "dynamic-network-architectures" in nnunet.question


def _pyproject() -> dict:
    import tomllib

    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def test_what_the_panel_installs_is_pyprojects_requirements():
    """pyproject.toml does not ship with the extension: the panel's tables carry its requirements, minimums
    included, and must say the same."""
    from BrainTumorExplainLogic.library import LIBRARY_REQUIREMENTS, NNUNET_REQUIREMENTS, requirement_parts

    project = _pyproject()
    assert sorted(LIBRARY_REQUIREMENTS.values()) == sorted(project["dependencies"])
    assert sorted(NNUNET_REQUIREMENTS.values()) == sorted(project["optional-dependencies"]["nnunet"])
    for requirement in [*LIBRARY_REQUIREMENTS.values(), *NNUNET_REQUIREMENTS.values()]:
        requirement_parts(requirement)  # each one a form the version check reads
    assert requirement_parts(LIBRARY_REQUIREMENTS["torch"]) == ("torch", "2.6")  # weights_only is safe from 2.6


def test_versions_older_than_the_minimums_count_as_missing(tmp_path):
    """An older torch or MONAI (another extension's) is not enough; a package Slicer builds itself (importable,
    no pip metadata) is taken as it is; local version labels and pre-release tails do not confuse the check."""
    from BrainTumorExplainLogic import install_plan, missing_dependencies

    versions = {"torch": "2.4.1+cu121", "monai": "1.3.2", "SimpleITK": "", "numpy": "1.24.0", "scipy": None}
    installed = lambda module, project: versions.get(project, "99.0")  # noqa: E731
    assert missing_dependencies(installed=installed) == {"torch>=2.6": "2.4.1+cu121", "monai>=1.4": "1.3.2",
                                                         "scipy>=1.10": None}
    versions.update(torch="2.6.0+cpu", monai="1.4.0rc1", scipy="1.10")
    assert missing_dependencies(installed=installed) == {}
    versions["numpy"] = "1.23.5"
    assert missing_dependencies(["numpy", "torch"], installed=installed) == {"numpy>=1.24": "1.23.5"}
    nnunet = tmp_path / "Dataset137" / "nnUNetTrainer__nnUNetPlans__3d_fullres"
    nnunet.mkdir(parents=True)
    (nnunet / "plans.json").write_text("{}")
    (nnunet / "dataset.json").write_text("{}")
    versions.update(numpy="2.0", **{"scikit-image": "0.19.2", "dynamic-network-architectures": None})
    assert missing_dependencies(network=str(nnunet), installed=installed) == {
        "dynamic-network-architectures>=0.4": None, "scikit-image>=0.19.3": "0.19.2"}
    versions.update(torch="2.5.1", scipy="1.9.3")
    plan = install_plan(missing_dependencies(installed=installed), True)
    assert plan.torch == "extension" and plan.torch_version == ">=2.6" and plan.packages == ("scipy>=1.10",)
    assert "this Slicer has 2.5.1" in plan.question and "this Slicer has 1.9.3" in plan.question
    assert missing_dependencies() == {}  # this environment has everything the library needs


# Third-party imports of the library that the panel does not install, and the only files that may make them: the
# benchmark's peers and the nnU-Net example of the tests (pyproject.toml's bench and test extras; nnunetv2 itself is
# installed with --no-deps by scripts/setup-venv.sh).
TEST_AND_BENCH_ONLY = {"captum": {"testbed/bench.py"}, "nnunetv2": {"testbed/bench.py", "testbed/nnunet_example.py"}}


def test_every_third_party_import_of_the_library_is_installed_by_the_panel_or_test_only():
    """What the analysis process may import must be something the panel installs (a missing module would fail
    deep inside a run): scikit-image for nnU-Net's resizing and PyYAML for a bundle's YAML config among them."""
    from BrainTumorExplainLogic.library import LIBRARY_REQUIREMENTS, NNUNET_REQUIREMENTS

    installed = set(LIBRARY_REQUIREMENTS) | set(NNUNET_REQUIREMENTS)
    library = ROOT / "BrainTumorExplainLib"
    seen = set()
    for path in library.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for top in {name.split(".")[0] for name in names} - set(sys.stdlib_module_names) - {
                    "BrainTumorExplainLib"}:
                seen.add(top)
                where = path.relative_to(library).as_posix()
                assert top in installed or where in TEST_AND_BENCH_ONLY.get(top, ()), (
                    f"{where} imports {top}: add it to BrainTumorExplainLogic/library.py and pyproject.toml, or "
                    "declare it test/bench-only here")
    assert {"skimage", "yaml", "torch", "monai"} <= seen
    extras = _pyproject()["optional-dependencies"]
    assert any(r.startswith("captum") for r in extras["bench"]) and any(r.startswith("captum") for r in extras["test"])


def test_the_panel_names_its_own_controls_where_the_library_names_options(tmp_path):
    """Every setting the panel offers has a control whose text names it (CONTROLS in the module, the .ui's text),
    and the library's refusals of an untrusted bundle read, in the panel, as the control to tick."""
    from BrainTumorExplainLib.app.settings import ExplainConfig
    from BrainTumorExplainLib.errors import InputError
    from BrainTumorExplainLib.models.bundle import _load_torchscript, build_network
    from BrainTumorExplainLogic import panel_wording

    tree = ast.parse(MODULE_FILE.read_text())
    controls = next(ast.literal_eval(node.value) for node in tree.body if isinstance(node, ast.Assign)
                    and getattr(node.targets[0], "id", "") == "CONTROLS")
    texts = {widget.get("name"): prop.find("string").text for widget in ElementTree.parse(UI_FILE).iter("widget")
             for prop in widget.findall("property") if prop.get("name") == "text"}
    assert set(controls) <= set(ExplainConfig.__dataclass_fields__) and "trust_bundle" in controls
    labels = {name: texts[widget].rstrip(":") for name, widget in controls.items()}
    refusals = []
    for refuse in (lambda: build_network({"_target_": "$import os"}, tmp_path / "inference.json"),
                   lambda: build_network({"_target_": "my.Net"}, tmp_path / "inference.json"),
                   lambda: _load_torchscript(tmp_path, tmp_path / "model.ts", "cpu", False)):
        with pytest.raises(InputError) as refused:
            refuse()
        refusals.append(str(refused.value))
    for message in refusals:
        assert "--trust-bundle" in message
        worded = panel_wording(message, labels)
        assert f"tick '{labels['trust_bundle']}'" in worded and "--" not in worded, worded
    assert panel_wording("--folds goes with an nnU-Net folder", labels) == "--folds goes with an nnU-Net folder"


def test_logic_test_is_opt_in():
    from BrainTumorExplainLogic.selftest import logic_test_enabled

    assert not logic_test_enabled({}) and not logic_test_enabled({"BRAINTUMOREXPLAIN_TEST_LOGIC": "0"})
    assert logic_test_enabled({"BRAINTUMOREXPLAIN_TEST_LOGIC": "1"})
    source = MODULE_FILE.read_text()
    round_trip = source.split("def test_explain_round_trip_on_the_sample_case")[1]
    assert round_trip.index("logic_test_enabled()") < round_trip.index("check_explain_round_trip(")


@pytest.mark.parametrize("fails", [True, False])
def test_the_readme_self_test_command_exits_with_the_tests_result(tmp_path, fails):
    """scripts/slicer_selftest.py run with a stand-in for the parts of the application it calls
    (slicer.selfTests and slicer.util.exit): a raising test must end in a non-zero exit, not a hang."""
    stand_in = tmp_path / "slicer"
    stand_in.mkdir()
    (stand_in / "__init__.py").write_text(textwrap.dedent(f"""
        import sys
        def _test():
            if {fails}:
                raise AssertionError("the self-test failed")
        selfTests = {{"BrainTumorExplain": _test}}
        class util:
            EXIT_SUCCESS, EXIT_FAILURE = 0, 1
            @staticmethod
            def exit(status=0):
                sys.exit(status)
    """))
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / "slicer_selftest.py")], capture_output=True,
                          text=True, env=dict(os.environ, PYTHONPATH=str(tmp_path)), timeout=60)
    assert done.returncode == (1 if fails else 0), done.stderr
    assert ("the self-test failed" in done.stderr) == fails
    readme = (ROOT / "README.md").read_text()
    assert "--python-script" in readme and "scripts/slicer_selftest.py" in readme


def test_extension_index_checks_can_pass():
    """What Slicer/ExtensionsIndex scripts/check_description_files.py checks of a submission, as far as a checkout
    can tell: licence file, project name, repository name and topic, image URLs that exist in the repository."""
    assert (ROOT / "LICENSE").is_file() and "Apache License" in (ROOT / "LICENSE").read_text()
    cmake = (ROOT / "CMakeLists.txt").read_text()
    assert re.search(r"project\s*\(\s*BrainTumorExplain\s*\)", cmake)
    assert (ROOT / "BrainTumorExplain.json").is_file()  # the description file is named after the extension
    entry = json.loads((ROOT / "BrainTumorExplain.json").read_text())
    repository = entry["scm_url"].rstrip("/").removesuffix(".git").split("/")[-1]
    assert repository.startswith("Slicer"), repository
    assert "PyTorch" in entry["build_dependencies"] and 'set(EXTENSION_DEPENDS "PyTorch")' in cmake
    urls = re.findall(r'"(https://raw\.githubusercontent\.com/[^" ]+)', cmake) + re.findall(
        r" (https://raw\.githubusercontent\.com/[^\" ]+)", cmake)
    assert len(urls) >= 2
    for url in urls:
        owner_repo_branch, path = re.match(r"https://raw\.githubusercontent\.com/([^/]+/[^/]+/[^/]+)/(.+)", url).groups()
        assert owner_repo_branch.split("/")[1] == repository, url
        assert (ROOT / path).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", url
    readme = (ROOT / "README.md").read_text()
    assert repository in readme and "3d-slicer-extension" in readme
    for version in ("5.6", "5.8", "5.10"):
        assert version in readme and version in cmake


def _segments(segmentation):
    segments = segmentation.GetSegmentation()
    return [segments.GetNthSegment(i) for i in range(segments.GetNumberOfSegments())]


def test_segments_carry_terminology_that_slicer_can_resolve(scene):
    """The segments' terminology is stored as the tag every supported Slicer reads, in a context the module
    registers; each entry resolves there (Slicer's DICOM master list has no enhancing lesion)."""
    terminologies = slicer.vtkSlicerTerminologiesModuleLogic()
    assert terminologies.LoadContextFromFile(str(TERMINOLOGY_FILE))
    assert register_terminology(terminologies) == TERMINOLOGY_CONTEXT == register_terminology(terminologies)
    import vtk

    names = vtk.vtkStringArray()
    terminologies.GetLoadedTerminologyNames(names)
    assert [names.GetValue(i) for i in range(names.GetNumberOfValues())].count(TERMINOLOGY_CONTEXT) == 1
    nodes = load_case_nodes(scene, SAMPLE_CASE)
    classes = load_case(SAMPLE_CASE).labels
    with RunOutputs(scene, nodes.volumes["flair"], "run") as run:
        segmentation, _ = run.add_segmentation(classes)
    entries = {segment.GetName(): _terminology(segment) for segment in _segments(segmentation)}
    assert len(entries) == 3
    fresh = slicer.vtkSlicerTerminologiesModuleLogic()
    register_terminology(fresh)
    assert all(terminology_resolves(fresh, entry) for entry in entries.values()), entries
    assert entries["Enhancing tumor"] == terminology_entry(3) and "NCIt^C113842" in entries["Enhancing tumor"]


def test_pushing_results_registers_nothing_in_the_segmentation_framework(scene):
    """One module logic per push re-registered node classes and appended converter rules every run; the import
    is static."""
    factory = slicer.vtkSegmentationConverterFactory.GetInstance()
    nodes = load_case_nodes(scene, SAMPLE_CASE)
    classes = load_case(SAMPLE_CASE).labels
    rules, node_classes = len(factory.GetConverterRules()), scene.GetNumberOfRegisteredNodeClasses()
    for index in range(2):
        with RunOutputs(scene, nodes.volumes["flair"], f"run {index}") as run:
            run.add_segmentation(classes)
    assert (len(factory.GetConverterRules()), scene.GetNumberOfRegisteredNodeClasses()) == (rules, node_classes)


def test_the_push_check_of_the_desktop_self_test_passes_here(scene):
    check_results_push(scene, SAMPLE_CASE, slicer.vtkSlicerTerminologiesModuleLogic())


def test_sample_data_source_uses_arguments_every_supported_slicer_accepts():
    # registerCustomSampleDataSource's keyword arguments in Modules/Scripted/SampleData/SampleData.py, v5.6.0
    # (v5.8 renamed loadFileType to loadFileTypes and kept the old name; both are left out here)
    accepted = {"category", "sampleName", "uris", "fileNames", "nodeNames", "customDownloader", "thumbnailFileName",
                "loadFiles", "loadFileProperties", "checksums"}
    thumbnail = MODULE / "Resources" / "Icons" / "Phantom_01003.png"
    source = sample_data_source(thumbnail)
    assert set(source) <= accepted and Path(source["thumbnailFileName"]).is_file()
    assert len(source["uris"]) == len(source["fileNames"]) == len(source["nodeNames"]) == 5
    for uri, name in zip(source["uris"], source["fileNames"]):
        assert uri.startswith("file://") and (SAMPLE_CASE / name).is_file()
    assert "customDownloader=lambda source: loadSampleCase()" in MODULE_FILE.read_text()


def _alive(pid: int) -> bool:
    """Running (a zombie that no one reaped yet counts as ended)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _children(pid: int) -> list[int]:
    found = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        found += [int(child) for child in (task / "children").read_text().split()]
    return found


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="reads the process tree from /proc")
def test_cancel_ends_the_launchers_child_too(scene, small_phantom, tmp_path):
    """PythonSlicer is a launcher that runs python-real as its child: a stand-in launcher that does the same must
    lose both processes on Cancel, and the run's folder must stay deleted."""
    launcher = tmp_path / "PythonSlicer"
    launcher.write_text(f"#!{sys.executable}\nimport subprocess, sys\n"
                        f"sys.exit(subprocess.call([{sys.executable!r}] + sys.argv[1:]))\n")
    launcher.chmod(0o755)
    nodes = load_case_nodes(scene, small_phantom.flair.parent)
    process = ExplainProcess(dict(nodes.volumes), panel_config(quick=False, passes=100, device="cpu"), str(launcher))
    deadline = time.monotonic() + 60
    while not _children(process.process.pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    real = _children(process.process.pid)
    assert real, "the stand-in launcher never started its child"
    time.sleep(1.0)
    process.cancel()
    assert not _alive(process.process.pid) and not any(_alive(pid) for pid in real)
    time.sleep(1.0)
    assert not process.folder.exists()


def test_the_pytorch_probe_never_waits(tmp_path):
    slow = tmp_path / "slow-python"
    slow.write_text(f"#!{sys.executable}\nimport time\ntime.sleep(30)\n")
    slow.chmod(0o755)
    probe = TorchProbe(str(slow), timeout_s=1.0)
    started = time.monotonic()
    assert probe.poll() is None
    assert time.monotonic() - started < 1.0  # it asked and came back: the GUI timer polls again later
    time.sleep(1.2)
    with pytest.raises(TimeoutError):
        probe.poll()
    assert probe.process.poll() is not None
    answer = TorchProbe()
    deadline = time.monotonic() + 120
    while (result := answer.poll()) is None and time.monotonic() < deadline:
        time.sleep(0.1)
    import torch

    assert result == (torch.__version__, torch.cuda.is_available())


def _linear_transform(scene, matrix: np.ndarray):
    import vtk

    transform = scene.AddNewNodeByClass("vtkMRMLLinearTransformNode", "patient tilt")
    vtk_matrix = vtk.vtkMatrix4x4()
    for row in range(4):
        for column in range(4):
            vtk_matrix.SetElement(row, column, matrix[row, column])
    transform.SetMatrixTransformToParent(vtk_matrix)
    return transform


def _rotation(degrees: float, translation=(4.0, -7.0, 2.5)) -> np.ndarray:
    angle = np.deg2rad(degrees)
    matrix = np.eye(4)
    matrix[:3, :3] = [[np.cos(angle), 0, np.sin(angle)], [0, 1, 0], [-np.sin(angle), 0, np.cos(angle)]]
    matrix[:3, 3] = translation
    return matrix


def test_inputs_under_a_linear_transform_are_analysed_where_they_are_seen(scene, small_phantom, tmp_path):
    nodes = load_case_nodes(scene, small_phantom.flair.parent)
    flair = nodes.volumes["flair"]
    transform = _linear_transform(scene, _rotation(30.0))
    for node in nodes.volumes.values():
        node.SetAndObserveTransformNodeID(transform.GetID())
    check_input_nodes(dict(nodes.volumes))
    world = world_ijk_to_ras(flair)
    np.testing.assert_allclose(world, _rotation(30.0) @ ijk_to_ras(flair), atol=1e-9)
    write_node(flair, tmp_path / "flair.nrrd")
    image = read_image(tmp_path / "flair.nrrd", "flair")  # what the analysis reads
    lps = np.diag([-1.0, -1.0, 1.0])
    direction = np.array(image.GetDirection()).reshape(3, 3) * np.array(image.GetSpacing())
    np.testing.assert_allclose(lps @ direction, world[:3, :3], atol=1e-6)
    np.testing.assert_allclose(lps @ np.array(image.GetOrigin()), world[:3, 3], atol=1e-6)
    # a result computed on that file comes back under the same transform, voxel for voxel on the FLAIR
    import SimpleITK as sitk

    from BrainTumorExplainLib.data.grid import ReferenceGrid

    grid = ReferenceGrid.from_image(image)
    canonical = grid.to_canonical(sitk.GetArrayFromImage(image))
    result = add_volume_from_canonical(scene, flair, canonical.astype(np.float32), "result")
    assert result.GetTransformNodeID() == transform.GetID()
    np.testing.assert_array_equal(ijk_to_ras(result), ijk_to_ras(flair))
    np.testing.assert_array_equal(slicer.util.arrayFromVolume(result), slicer.util.arrayFromVolume(flair))
    assert ijk_to_ras(flair).tolist() != world.tolist()  # the input itself was not hardened or moved


@pytest.mark.parametrize("kind", ["non-linear", "shear"])
def test_transforms_that_would_resample_are_refused_by_name(scene, small_phantom, kind):
    nodes = load_case_nodes(scene, small_phantom.flair.parent)
    if kind == "non-linear":
        transform = scene.AddNewNodeByClass("vtkMRMLGridTransformNode", "warp")
        message = "non-linear transform 'warp'"
    else:
        shear = np.eye(4)
        shear[0, 1] = 0.3
        transform = _linear_transform(scene, shear)
        message = "shears its voxel grid"
    for node in nodes.volumes.values():
        node.SetAndObserveTransformNodeID(transform.GetID())
    count = scene.GetNumberOfNodes()
    with pytest.raises(ValueError, match=message):
        ExplainProcess(dict(nodes.volumes), panel_config(device="cpu"))
    assert scene.GetNumberOfNodes() == count

