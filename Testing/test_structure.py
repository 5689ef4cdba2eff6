"""Project rules that a reader of the files can check: layering, lazy torch, packaging lists, icon."""

import ast
import re
import struct
from pathlib import Path

from conftest import loaded_with_the_module

ROOT = Path(__file__).resolve().parents[1]
LIBRARY = ROOT / "BrainTumorExplainLib"
MODULE = ROOT / "BrainTumorExplain"


def _imports(path: Path, top_level_only: bool = False) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    names = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def test_library_never_imports_slicer_qt_or_vtk():
    for path in LIBRARY.rglob("*.py"):
        assert not _imports(path) & {"slicer", "qt", "ctk", "vtk", "PythonQt"}, path


def test_module_logic_imports_no_qt_and_nothing_in_the_module_imports_torch_at_load():
    for path in (MODULE / "BrainTumorExplainLogic").rglob("*.py"):
        assert not _imports(path) & {"qt", "ctk", "PythonQt"}, path
    for path in MODULE.rglob("*.py"):
        assert "torch" not in _imports(path, top_level_only=True), path


def test_what_the_module_imports_from_the_library_at_load_does_not_load_torch():
    """The modules' own imports are not enough: every library module the Slicer module imports at load, with all it
    imports in turn (deferred imports in the library keep torch out), is imported in a fresh interpreter."""
    import subprocess
    import sys

    modules = sorted({node.module for path in MODULE.rglob("*.py") for node in ast.parse(path.read_text()).body
                      if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("BrainTumorExplainLib")})
    assert "BrainTumorExplainLib.app.settings" in modules and "BrainTumorExplainLib.data.case" in modules
    code = "import sys\n" + "".join(f"import {name}\n" for name in modules) + \
        "print([m for m in ('torch', 'monai', 'nnunetv2') if m in sys.modules])"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 0 and done.stdout.strip() == "[]", done.stdout + done.stderr[-2000:]


def test_only_the_module_file_sits_directly_in_the_module_folder():
    # Slicer loads every .py directly in a module folder as a module: helpers live in the subpackage.
    assert sorted(p.name for p in MODULE.glob("*.py")) == ["BrainTumorExplain.py"]


def test_module_cmake_lists_every_script_and_the_icon():
    cmake = (MODULE / "CMakeLists.txt").read_text()
    for path in MODULE.rglob("*.py"):
        relative = path.relative_to(MODULE).as_posix()
        assert relative.replace("BrainTumorExplain.py", "${MODULE_NAME}.py") in cmake or relative in cmake, relative
    assert "Resources/Icons/${MODULE_NAME}.png" in cmake and "Resources/UI/${MODULE_NAME}.ui" in cmake
    assert "slicer_add_python_unittest" in cmake


def test_every_ui_widget_the_panel_uses_exists_in_the_ui_file():
    import xml.etree.ElementTree as ElementTree

    tree = ElementTree.parse(MODULE / "Resources" / "UI" / "BrainTumorExplain.ui")
    names = {widget.get("name") for widget in tree.iter("widget")}
    used = set(re.findall(r"self\.ui\.(\w+)", (MODULE / "BrainTumorExplain.py").read_text()))
    assert used and used <= names, sorted(used - names)
    # every parameter the .ui binds is a field of the parameter node, and the four inputs are bound
    bound = {prop.find("string").text for prop in tree.iter("property") if prop.get("name") == "SlicerParameterName"}
    source = (MODULE / "BrainTumorExplain.py").read_text()
    fields = set(re.findall(r"^    (\w+): ", source.split("class BrainTumorExplainParameterNode")[1].split("class ")[0],
                            re.MULTILINE))
    assert {"flair", "t1", "t1ce", "t2"} <= bound <= fields, (bound, fields)


def test_extension_metadata_is_complete():
    cmake = (ROOT / "CMakeLists.txt").read_text()
    for key in ("HOMEPAGE", "CATEGORY", "CONTRIBUTORS", "DESCRIPTION", "ICONURL", "SCREENSHOTURLS", "DEPENDS"):
        assert re.search(rf"set\(EXTENSION_{key} ", cmake), key
    assert "add_subdirectory(BrainTumorExplain)" in cmake and "BrainTumorExplainLib/*.py" in cmake


def test_extensions_index_entry_agrees_with_the_cmake_metadata():
    import json

    entry = json.loads((ROOT / "BrainTumorExplain.json").read_text())
    cmake = (ROOT / "CMakeLists.txt").read_text()
    assert {"$schema", "category", "scm_url"} <= set(entry)  # the schema's required keys
    assert set(entry) <= {"$schema", "build_dependencies", "build_subdirectory", "category", "scm_revision",
                          "scm_type", "scm_url", "tier"}  # the schema allows no others
    assert f'set(EXTENSION_CATEGORY "{entry["category"]}")' in cmake
    assert f"set(EXTENSION_BUILD_SUBDIRECTORY {entry['build_subdirectory']})" in cmake
    assert entry["scm_url"].removesuffix(".git") in re.search(r'EXTENSION_HOMEPAGE "([^"]+)"', cmake).group(1)


def test_icons_are_128_pixel_pngs():
    for path in (ROOT / "BrainTumorExplain.png", MODULE / "Resources" / "Icons" / "BrainTumorExplain.png"):
        header = path.read_bytes()[:24]
        assert header[:8] == b"\x89PNG\r\n\x1a\n"
        assert struct.unpack(">II", header[16:24]) == (128, 128)


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    assert "bash scripts/demo.sh" in readme and "bash scripts/test.sh" in readme
    assert "scripts/test.sh" in (ROOT / ".ci" / "run").read_text()


def test_library_functions_stay_short():
    """About 60 lines at most, docstring aside, unless the docstring says why (``Long because``)."""
    for path in LIBRARY.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            docstring = ast.get_docstring(node) or ""
            first = node.body[1] if docstring and len(node.body) > 1 else node.body[0]
            length = node.end_lineno - first.lineno + 1
            assert length <= 60 or "Long because" in docstring, f"{path.relative_to(ROOT)}:{node.name} is {length} lines"


def test_the_wheel_lists_every_package_folder():
    import tomllib

    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {".".join(p.parent.relative_to(ROOT).parts) for p in LIBRARY.rglob("__init__.py")}
    assert found | {"BrainTumorExplainLogic"} == listed
    assert (MODULE / "BrainTumorExplainLogic" / "__init__.py").is_file()


def test_the_library_layers_import_only_downwards():
    """data ← models ← analyses / scoring ← app: no module imports a layer above its own."""
    order = {"data": 0, "models": 1, "analyses": 2, "scoring": 2, "app": 3, "testbed": 3}
    for path in LIBRARY.rglob("*.py"):
        parts = path.relative_to(LIBRARY).parts
        if len(parts) < 2 or parts[0] not in order:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level >= 2 and node.module:
                target = node.module.split(".")[0]
                if target in order:
                    assert order[target] <= order[parts[0]], f"{path.relative_to(ROOT)} imports {node.module}"


def test_only_the_models_layer_tells_the_kinds_of_network_apart():
    """Issue 38: an analysis is written once for every kind of network, through models/interface.py; above the
    models layer nothing asks whether a network is 2D or described (3D)."""
    for layer in ("analyses", "scoring", "app", "testbed"):
        for path in (LIBRARY / layer).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "isinstance":
                    kinds = ast.unparse(node.args[1]) if len(node.args) > 1 else ""
                    assert "DescribedNetwork" not in kinds and "SegmentationNet" not in kinds, \
                        f"{path.relative_to(ROOT)}:{node.lineno} tells network kinds apart: {ast.unparse(node)}"


def _module_name(path: Path) -> str:
    """A library file's dotted module name (a package's ``__init__.py``: the package)."""
    parts = path.with_suffix("").relative_to(ROOT).parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _import_graph() -> dict[str, set[str]]:
    """Library module → the library modules it imports: every import statement, those inside functions too."""
    modules = {_module_name(path): path for path in LIBRARY.rglob("*.py")}
    graph = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
        imported = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                base = package.split(".")[:len(package.split(".")) - node.level + 1] if node.level else []
                stem = ".".join(base + ([node.module] if node.module else []))
                imported |= {stem} | {f"{stem}.{alias.name}" for alias in node.names}
            elif isinstance(node, ast.Import):
                imported |= {alias.name for alias in node.names}
        graph[name] = {target for target in imported if target in modules and target != name}
    return graph


def test_the_library_has_no_import_circles():
    """Issue 38: a circle (deferred imports included) hides which module stands on which; each was broken by moving
    the shared piece below both (data.grid, data.labels, data.imagefiles, models.base, analyses.concepts)."""
    graph = _import_graph()
    assert "BrainTumorExplainLib.data.grid" in graph and graph["BrainTumorExplainLib.analyses.dissection"]
    done: set[str] = set()

    def visit(module: str, path: list[str]) -> None:
        for target in sorted(graph[module]):
            assert target not in path, "import circle: " + " → ".join(path[path.index(target):] + [target])
            if target not in done:
                visit(target, path + [target])
        done.add(module)

    for module in sorted(graph):
        if module not in done:
            visit(module, [module])
    assert not any("outputs" in target for module, targets in graph.items() if ".data." in module
                   for target in targets), "the data layer imports outputs, a module above it"


# Why an import waits inside a function, by package: nowhere else may one.
DEFERRED_BECAUSE = {
    "torch": "the Slicer panel's start (settings, contract, data) never loads PyTorch",
    "SimpleITK": "the data modules the panel reads at start import numpy only",
    "scipy": "the data modules the panel reads at start import numpy only",
    "skimage": "the data modules the panel reads at start import numpy only",
    "tqdm": "the data modules the panel reads at start import numpy only",
    "monai": "a MONAI bundle only (an optional kind of network)",
    "yaml": "a MONAI bundle's YAML configs only",
    "nnunetv2": "an nnU-Net folder only (an optional kind of network)",
    "dynamic_network_architectures": "an nnU-Net folder only (nnunetv2's network classes)",
    "captum": "the benchmark's peer, a test dependency",
    "resource": "peak memory in the benchmark only; Windows has no resource module",
}


def test_imports_wait_inside_functions_only_for_a_stated_reason():
    """Issue 38: a deferred import hides what a module stands on. One waits only for a package of DEFERRED_BECAUSE,
    or — a library module — inside a module the Slicer panel imports at start (where it keeps torch out)."""
    loaded_at_start = {_module_name(path) for path in loaded_with_the_module(ROOT) if LIBRARY in path.parents}
    unexplained = []
    for path in LIBRARY.rglob("*.py"):
        module = _module_name(path)
        for function in ast.walk(ast.parse(path.read_text())):
            if not isinstance(function, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            for node in ast.walk(function):
                if isinstance(node, ast.ImportFrom) and node.level:
                    if module not in loaded_at_start:
                        unexplained.append(f"{path.relative_to(ROOT)}:{node.lineno} {ast.unparse(node)}")
                elif isinstance(node, (ast.Import, ast.ImportFrom)):
                    names = [node.module] if isinstance(node, ast.ImportFrom) else [a.name for a in node.names]
                    if any(name.split(".")[0] not in DEFERRED_BECAUSE for name in names):
                        unexplained.append(f"{path.relative_to(ROOT)}:{node.lineno} {ast.unparse(node)}")
    assert "BrainTumorExplainLib.data.case" in loaded_at_start and not unexplained, unexplained


def _clone_size():
    import importlib.util

    spec = importlib.util.spec_from_file_location("clone_size", ROOT / "scripts" / "clone_size.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _git_checkout(path: Path) -> bool:
    import subprocess

    try:
        done = subprocess.run(["git", "-C", str(path), "rev-parse", "--is-inside-work-tree", "--is-shallow-repository"],
                              capture_output=True, text=True)
    except FileNotFoundError:  # no git
        return False
    return done.returncode == 0 and done.stdout.split() == ["true", "false"]


def test_a_full_clone_stays_under_the_extensions_index_limit():
    """Slicer's ExtensionsIndex clones the whole history and refuses more than 100 MiB (README: In 3D Slicer)."""
    import pytest

    if not _git_checkout(ROOT):
        pytest.skip("not a full git checkout (an sdist, or a shallow CI clone): the history cannot be measured")
    sizes = _clone_size()
    history, checkout = sizes.clone_size_mib(ROOT)
    assert history + checkout < sizes.LIMIT_MIB - sizes.MARGIN_MIB, (
        f"a full clone is about {history + checkout:.1f} MiB (history {history:.1f}, checkout {checkout:.1f}): "
        "see the README before publishing")


def test_the_clone_size_counts_deleted_files_in_the_history(tmp_path):
    """A file committed and then deleted still travels with every clone."""
    import os
    import shutil
    import subprocess

    import pytest

    if shutil.which("git") is None:
        pytest.skip("git is needed")
    sizes = _clone_size()
    identity = {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
                "GIT_COMMITTER_EMAIL": "t@t"}

    def git(*args):
        subprocess.run(["git", "-C", str(tmp_path), *args], check=True, capture_output=True,
                       env={**os.environ, **identity})

    git("init", "-q")
    (tmp_path / "weights.bin").write_bytes(os.urandom(2**20))  # random bytes: zlib cannot shrink them
    (tmp_path / "kept.bin").write_bytes(os.urandom(2**19))
    git("add", ".")
    git("commit", "-q", "-m", "both")
    git("rm", "-q", "weights.bin")
    git("commit", "-q", "-m", "one deleted")
    history, checkout = sizes.clone_size_mib(tmp_path)
    assert checkout == pytest.approx(0.5, abs=0.01) and history == pytest.approx(1.5, abs=0.1)
    assert sizes.main([str(tmp_path)]) == 0
    # an object no ref reaches (added, then reset) lies in this copy only: a clone never receives it
    (tmp_path / "discarded.bin").write_bytes(os.urandom(2**20))
    git("add", "discarded.bin")
    git("reset", "-q")
    assert sizes.clone_size_mib(tmp_path)[0] == pytest.approx(history, abs=0.01)


def test_the_command_line_starts_without_unix_only_modules():
    """Windows has no ``resource``: building the parser (which reads every verb's config, bench's too) must not
    need it; only the benchmark that measures peak memory does."""
    import subprocess
    import sys

    code = ("import sys; sys.modules['resource'] = None\n"  # what an import of it raises on Windows
            "from BrainTumorExplainLib.app.cli import build_parser\n"
            "build_parser().parse_args(['segment', 'c', '--model', 'resunet', '--out', 'x.nii.gz'])")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-2000:]
