"""utils/ is layered: utils/__init__.py's docstring lists every module under bottom, middle or top, and a module imports
only from its own layer or below, never in a cycle, and never from inside a function (the way a cycle gets hidden).

The checks read the source with ast (nothing is imported), so they take milliseconds. Each also runs on a small
package with one planted violation, so that a check which stopped finding anything fails too.
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass
from pathlib import Path

import pytest

UTILS = Path(__file__).resolve().parent.parent / "utils"
LAYERS = ("bottom", "middle", "top")  # the docstring's section headers, lowest first
HEADER = re.compile(rf"^({'|'.join(LAYERS)}): ")
MODULE_LINE = re.compile(r"^ {4}(\w+) {2,}\S")  # "    name   what it holds"
SCOPES = (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda, ast.ClassDef)  # code that runs later than the import of its module


@dataclass(frozen=True)
class Import:
    """One import statement naming a utils module (target '' for the bare package)."""

    source: str  # the importing module, e.g. 'detectors'
    target: str  # the imported utils module, e.g. 'assets'
    line: int
    statement: str
    top_level: bool  # False: inside a function, method or class body

    def where(self) -> str:
        return f"utils/{self.source}.py:{self.line}: `{self.statement}`"


def modules(utils: Path) -> list[str]:
    """The package's modules, by file name (no __init__)."""
    return sorted(path.stem for path in utils.glob("*.py") if path.stem != "__init__")


def read_layers(utils: Path) -> dict[str, int]:
    """module -> layer index (0 = bottom) as utils/__init__.py's docstring lists them."""
    docstring = ast.get_docstring(ast.parse((utils / "__init__.py").read_text())) or ""
    layers: dict[str, int] = {}
    layer = None
    for line in docstring.splitlines():
        if header := HEADER.match(line):
            layer = LAYERS.index(header.group(1))
        elif (listed := MODULE_LINE.match(line)) and layer is not None:
            assert listed.group(1) not in layers, f"utils/__init__.py lists {listed.group(1)} twice"
            layers[listed.group(1)] = layer
    return layers


def targets(node: ast.Import | ast.ImportFrom, known: set[str]) -> list[str]:
    """The utils modules an import statement names ('' for the bare package)."""
    if isinstance(node, ast.Import):  # import utils.video [as video]
        parts = [alias.name.split(".") for alias in node.names]
        return [part[1] if len(part) > 1 else "" for part in parts if part[0] == "utils"]
    if node.level == 0:  # from utils.video import x, from utils import video
        parts = (node.module or "").split(".")
        if parts[0] != "utils":
            return []
        module = parts[1] if len(parts) > 1 else None
    else:  # from .video import x, from . import video: relative, so inside utils
        module = node.module.split(".")[0] if node.module else None
    if module:
        return [module]
    return [alias.name if alias.name in known else "" for alias in node.names]


def utils_imports(utils: Path) -> list[Import]:
    """Every import of a utils module in every utils module, with whether it runs when its module is imported."""
    known = set(modules(utils))
    found = []

    def visit(node: ast.AST, source: str, top_level: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.Import | ast.ImportFrom):
                for target in targets(child, known):
                    found.append(Import(source, target, child.lineno, ast.unparse(child), top_level))
            visit(child, source, top_level and not isinstance(child, SCOPES))

    for source in sorted(known):
        path = utils / f"{source}.py"
        visit(ast.parse(path.read_text(), filename=str(path)), source, True)
    return found


######################################################################################################################
# The four checks: each returns one message per problem, naming the file and the import


def cycles(utils: Path) -> list[str]:
    """One message per group of modules that import each other in a ring (module-level imports), with the ring's imports."""
    edges: dict[str, dict[str, Import]] = {}
    for item in utils_imports(utils):
        if item.top_level and item.target:
            edges.setdefault(item.source, {}).setdefault(item.target, item)
    problems, reported = [], set()
    for start in sorted(edges):
        ring = _path_back(start, edges)
        if ring and not set(ring) & reported:
            reported |= set(ring)
            hops = [edges[a][b].where() for a, b in zip(ring, [*ring[1:], ring[0]], strict=True)]
            problems.append(f"import cycle {' -> '.join([*ring, ring[0]])}: {'; '.join(hops)}")
    return problems


def _path_back(start: str, edges: dict[str, dict[str, Import]]) -> list[str] | None:
    """The modules of a shortest import path from `start` back to itself (start first), or None."""
    parents: dict[str, str] = {}
    frontier = [start]
    while frontier:
        following = []
        for module in frontier:
            for target in sorted(edges.get(module, {})):
                if target == start:
                    ring = [module]
                    while ring[-1] != start:
                        ring.append(parents[ring[-1]])
                    return ring[::-1]
                if target not in parents:
                    parents[target] = module
                    following.append(target)
        frontier = following
    return None


def imports_from_higher_layers(utils: Path) -> list[str]:
    """One message per module-level import of a module listed in a higher layer than the importer's."""
    layers = read_layers(utils)
    return [
        f"{item.where()} imports {item.target} ({LAYERS[layers[item.target]]}) into {item.source} ({LAYERS[layers[item.source]]})"
        for item in utils_imports(utils)
        if item.top_level and item.source in layers and item.target in layers and layers[item.target] > layers[item.source]
    ]


def hidden_imports(utils: Path) -> list[str]:
    """One message per utils import inside a function, method or class body: it hides a dependency (and maybe a cycle)."""
    return [f"{item.where()} is inside a function or class: import it at the top" for item in utils_imports(utils) if not item.top_level]


def unlisted_modules(utils: Path) -> list[str]:
    """One message per module missing from utils/__init__.py's layer lists, and per listed module with no file."""
    layers, present = read_layers(utils), modules(utils)
    missing = [f"utils/{name}.py is not listed in utils/__init__.py (one line under its layer)" for name in present if name not in layers]
    stale = [f"utils/__init__.py lists {name}, but there is no utils/{name}.py" for name in layers if name not in present]
    return missing + stale


######################################################################################################################
# The real package


def test_every_utils_module_is_listed_under_a_layer():
    problems = unlisted_modules(UTILS)
    assert not problems, "\n" + "\n".join(problems)


def test_no_import_cycle_in_utils():
    problems = cycles(UTILS)
    assert not problems, "\n" + "\n".join(problems)


def test_no_utils_module_imports_from_a_higher_layer():
    problems = imports_from_higher_layers(UTILS)
    assert not problems, "\n" + "\n".join(problems)


def test_no_utils_import_hidden_inside_a_function():
    problems = hidden_imports(UTILS)
    assert not problems, "\n" + "\n".join(problems)


def test_assets_imports_nothing_from_utils_but_cli():
    found = {item.target for item in utils_imports(UTILS) if item.source == "assets"}
    assert found <= {"cli"}, f"utils/assets.py imports {sorted(found - {'cli'})}: it must sit under everything but cli"


def test_the_docstring_parser_sees_all_three_layers():
    layers = read_layers(UTILS)
    assert {layers["cli"], layers["detectors"], layers["onnx_export"]} == {0, 1, 2}


######################################################################################################################
# Each check on a planted violation

INIT = '''"""A package in three layers, as utils/__init__.py lists them.

bottom: base
    cli      errors
    draw     drawing
middle: readers
    reader   a reader
    other    another reader
top: tools
    tool     a tool
"""
'''
CLEAN = {  # every import form the checks must see: from utils.x, from utils import x, import utils.x, relative
    "__init__.py": INIT,
    "cli.py": "class UserError(Exception):\n    pass\n",
    "draw.py": "import numpy\n",
    "reader.py": "from utils.cli import UserError\n",
    "other.py": "from utils import cli\n",
    "tool.py": "import utils.reader\nfrom .other import thing\n",
}
PLANTS = {
    "cycle": ({"other.py": "from utils.reader import read\n", "reader.py": "from utils import other\n"}, cycles, "import cycle other -> reader -> other: utils/other.py:2: `from utils.reader import read`; utils/reader.py:2: `from utils import other`"),
    "higher layer": ({"draw.py": "from utils.tool import build\n"}, imports_from_higher_layers, "utils/draw.py:2: `from utils.tool import build` imports tool (top) into draw (bottom)"),
    "relative higher layer": ({"reader.py": "from . import tool\n"}, imports_from_higher_layers, "utils/reader.py:2: `from . import tool` imports tool (top)"),
    "hidden in a function": ({"reader.py": "def read():\n    from utils.tool import build\n"}, hidden_imports, "utils/reader.py:3: `from utils.tool import build` is inside a function"),
    "hidden in a method": ({"draw.py": "class Canvas:\n    def paint(self):\n        import utils.reader\n"}, hidden_imports, "utils/draw.py:4: `import utils.reader` is inside"),
    "unlisted module": ({"extra.py": "X = 1\n"}, unlisted_modules, "utils/extra.py is not listed in utils/__init__.py"),
}  # fmt: skip


def write_package(root: Path, additions: dict[str, str]) -> Path:
    """CLEAN as a package in `root`/utils, each addition appended to (or creating) its file."""
    utils = root / "utils"
    utils.mkdir()
    for name in {**CLEAN, **additions}:
        (utils / name).write_text(CLEAN.get(name, "") + additions.get(name, ""))
    return utils


def test_the_clean_package_passes_every_check(tmp_path):
    utils = write_package(tmp_path, {})
    assert read_layers(utils) == {"cli": 0, "draw": 0, "reader": 1, "other": 1, "tool": 2}
    assert {item.target for item in utils_imports(utils)} == {"cli", "reader", "other"}  # every import form is seen
    for check in (cycles, imports_from_higher_layers, hidden_imports, unlisted_modules):
        assert check(utils) == [], check.__name__


@pytest.mark.parametrize(("additions", "check", "expected"), PLANTS.values(), ids=PLANTS.keys())
def test_each_check_catches_its_violation(tmp_path, additions, check, expected):
    problems = check(write_package(tmp_path, additions))
    assert len(problems) == 1 and expected in problems[0], problems


def test_a_listed_module_without_a_file_is_caught(tmp_path):
    utils = write_package(tmp_path, {})
    (utils / "other.py").unlink()
    assert unlisted_modules(utils) == ["utils/__init__.py lists other, but there is no utils/other.py"]
