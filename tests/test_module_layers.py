"""The package's structure: every module imports on its own, the modules' imports form no circle,
and no function imports a module of the package to dodge one (``cli.py`` alone loads each verb's
module when that verb runs, so ``ketta-build lint`` never imports the matrix)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "ketta_build"
# Every module of the package by dotted name below it: "wheel", "commands.apply", ...
MODULES = sorted(".".join(p.relative_to(PACKAGE).with_suffix("").parts).removesuffix(".__init__")
                 for p in PACKAGE.rglob("*.py") if p.stem != "__main__" and "__pycache__" not in p.parts)
VERBS = "commands"  # the verbs' modules: each loads the library when its verb runs, so `ketta-build lint`
# never imports the matrix; the dispatcher, cli, loads the verbs' modules


def _plugin_verbs() -> set[str]:
    """The verbs the built-in plugins add (``letta.serve_command``): verbs like those in commands/."""
    from ketta_build.profile import PLUGINS, plugin_module

    return {f"{kind}.{name}" for kind in PLUGINS for name in getattr(plugin_module(kind), "VERBS", ())}


PLUGIN_VERBS = _plugin_verbs()


def _is_verb(module: str) -> bool:
    return module.startswith(VERBS + ".") or module in PLUGIN_VERBS


def _is_lazy_loader(module: str) -> bool:
    """The CLI and the verbs load the library when a verb runs; a plugin's package (``letta``) loads its
    modules when one of its hooks is called, so that reading its profile and flag spellings is cheap."""
    from ketta_build.profile import PLUGINS

    return module == "cli" or _is_verb(module) or module == VERBS or module in PLUGINS


def _source(module: str) -> Path:
    path = PACKAGE.joinpath(*module.split("."))
    return path / "__init__.py" if path.is_dir() else path.with_suffix(".py")


def _resolve(module: str, node: ast.ImportFrom | ast.Import) -> list[str]:
    """The package's modules ``node`` (in ``module``) imports, relative or absolute, by dotted name."""
    if isinstance(node, ast.Import):
        names = [a.name.removeprefix("ketta_build.") for a in node.names if a.name.startswith("ketta_build.")]
    elif node.level:
        here = module.split(".")
        if not _source(module).name == "__init__.py":
            here = here[:-1]
        base = here[: len(here) - (node.level - 1)] if node.level > 1 else here
        prefix = ".".join([*base, node.module] if node.module else base)
        names = [prefix] if node.module else [f"{prefix}.{a.name}".lstrip(".") for a in node.names]
        names += [f"{prefix}.{a.name}".lstrip(".") for a in node.names] if node.module else []
    elif node.module and (node.module == "ketta_build" or node.module.startswith("ketta_build.")):
        prefix = node.module.removeprefix("ketta_build").lstrip(".")
        names = [prefix] if prefix else []
        names += [f"{prefix}.{a.name}".lstrip(".") for a in node.names]
    else:
        return []
    found = []
    for name in names:
        while name and name not in MODULES:
            name = name.rpartition(".")[0]
        if name:
            found.append(name)
    return list(dict.fromkeys(found))


def _package_imports(tree: ast.AST, module: str = "") -> list[tuple[str, bool]]:
    """(imported module of the package, whether inside a function) for each import of the package."""
    found = []

    def visit(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            inside = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef))
            if isinstance(child, (ast.ImportFrom, ast.Import)):
                found.extend((n, inside) for n in _resolve(module, child))
            if isinstance(child, ast.If) and isinstance(child.test, ast.Name) and child.test.id == "TYPE_CHECKING":
                continue  # annotations only
            visit(child, inside)

    visit(tree, False)
    return [(m, f) for m, f in dict.fromkeys(found) if m != module]


GRAPH = {m: _package_imports(ast.parse(_source(m).read_text()), m) for m in MODULES}


@pytest.mark.parametrize("module", MODULES)
def test_each_module_imports_on_its_own(module):
    proc = subprocess.run([sys.executable, "-c", f"import ketta_build.{module}"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_no_function_imports_a_module_of_the_package():
    late = sorted({(m, target) for m, imports in GRAPH.items() if not _is_lazy_loader(m) for target, inside in imports
                   if inside})
    assert late == [], f"function-level imports of the package's modules: {late}"


def test_the_layers_point_one_way():
    """The library never imports a verb or the CLI; a verb imports the library and commands.common,
    never another verb or the CLI; nothing in the package imports the compatibility suites or edits
    sys.path to reach them (absolute imports included)."""
    wrong = []
    for module, imports in GRAPH.items():
        for target, _ in imports:
            if not _is_lazy_loader(module) and (target == "cli" or target.startswith(VERBS) or target in PLUGIN_VERBS):
                wrong.append(f"library {module} imports {target}")
            if _is_verb(module) and (target == "cli" or (_is_verb(target) and target != VERBS + ".common")):
                wrong.append(f"verb {module} imports {target}")
    for module in MODULES:
        text = _source(module).read_text()
        tree = ast.parse(text)
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "compat_tests" or \
                    isinstance(node, ast.Import) and any(a.name.split(".")[0] == "compat_tests" for a in node.names):
                wrong.append(f"{module} imports compat_tests")
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "__import__":
                wrong.append(f"{module} calls __import__")
        if "sys.path" in text:
            wrong.append(f"{module} touches sys.path")
    assert wrong == []


def test_the_layer_checks_see_absolute_and_relative_imports():
    assert _resolve("commands.apply", ast.parse("from ..buildtree import x").body[0]) == ["buildtree"]
    assert _resolve("commands.apply", ast.parse("from .common import x").body[0]) == ["commands.common"]
    assert _resolve("wheel", ast.parse("from ketta_build.matrix import run_matrix").body[0]) == ["matrix"]
    assert _resolve("wheel", ast.parse("import ketta_build.commands.apply").body[0]) == ["commands.apply"]
    assert _resolve("wheel", ast.parse("from ketta_build import cli").body[0]) == ["cli"]


def find_circle(edges: dict[str, list[str]]) -> list[str] | None:
    """A circle in the import graph, as the modules along it, or None."""
    state: dict[str, int] = {}
    path: list[str] = []

    def walk(m: str) -> list[str] | None:
        state[m] = 1
        path.append(m)
        for t in edges.get(m, []):
            if state.get(t) == 1:
                return path[path.index(t):] + [t]
            if t not in state and (cycle := walk(t)):
                return cycle
        path.pop()
        state[m] = 2
        return None

    for m in sorted(edges):
        if m not in state and (cycle := walk(m)):
            return cycle
    return None


def test_the_imports_form_no_circle():
    edges = {m: sorted({t for t, inside in imports if not inside and t != m}) for m, imports in GRAPH.items()}
    cycle = find_circle(edges)
    assert cycle is None, "import circle: " + " -> ".join(cycle or [])


def test_the_checks_see_a_circle_and_a_late_import():
    # The detector itself: a module pair that imports each other, one of them late.
    circle = ast.parse("from .b import x\n")
    late = ast.parse("def f():\n    from .a import y\n")
    global MODULES
    saved = MODULES
    MODULES = [*saved, "a", "b"]
    try:
        assert _package_imports(circle, "x") == [("b", False)]
        assert _package_imports(late, "x") == [("a", True)]
    finally:
        MODULES = saved
    assert find_circle({"a": ["b"], "b": ["c"], "c": ["a"], "d": []}) == ["a", "b", "c", "a"]
    assert find_circle({"a": ["b"], "b": ["c"], "c": []}) is None


def test_each_compat_suite_file_is_named_after_its_suite():
    import re

    from ketta_build.suites import load_suites

    tests = PACKAGE.parent / "compat_tests"
    SUITES = load_suites(tests).names
    wrong = []
    for path in sorted(tests.glob("test_*.py")):
        marks = set(re.findall(r"pytest\.mark\.(\w+)", path.read_text())) & set(SUITES)
        if len(marks) != 1 or not re.fullmatch(rf"test_{next(iter(marks))}(_\w+)?", path.stem):
            wrong.append((path.name, sorted(marks)))
    assert wrong == [], f"compat_tests files whose name does not start with test_<their one suite>: {wrong}"


def test_no_name_is_undefined_unused_or_shadowed():
    # The compatibility suites' fixtures run only in the matrix, so a name an edit left undefined
    # there (an import block re-sorted over a change) surfaced only after minutes of servers.
    # pyflakes' checks through ruff find it in a second.
    ruff = Path(sys.executable).with_name("ruff")
    root = PACKAGE.parent
    proc = subprocess.run([str(ruff), "check", "--no-cache", "--isolated", "--select", "F821,F811,F401,F841",
                           "--output-format", "concise", "ketta_build", "compat_tests", "tests", "bench"],
                          cwd=root, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_every_suite_variable_is_defined_once_and_read_through_the_contract():
    """The KETTA_* variables between the matrix and the suites are defined in ketta_build/suiteenv.py,
    listed in docs/testing.md, and read nowhere by hand (``os.environ`` with a KETTA_ name)."""
    import re

    from ketta_build.suiteenv import VARIABLES

    docs = (PACKAGE.parent / "docs" / "testing.md").read_text()
    assert [v.name for v in VARIABLES if f"| `{v.name}` |" not in docs] == []
    by_hand = []
    for path in [*(PACKAGE.parent / "compat_tests").glob("*.py"), *PACKAGE.glob("*.py")]:
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if re.search(r"os\.environ(\.get)?[\[(]\s*[\"']KETTA_", line) and path.name not in ("cache.py", "index.py"):
                by_hand.append(f"{path.name}:{number}")
    assert by_hand == [], f"KETTA_* read by hand (use ketta_build.suiteenv): {by_hand}"


# What of Letta the core still names, outside the Letta plugin (ketta_build/letta/): the one line that
# registers the built-in plugin. A new mention of Letta in the core fails this test until it is moved
# into the plugin (or, if it must stay, added here with its reason).
LETTA_IN_THE_CORE = {
    ("profile.py", 'PLUGINS = ("letta",)'),
}


def test_the_core_names_letta_only_where_it_is_listed():
    """Issue #32: the core reads the profile, never a project's name; what only Letta needs lives in
    ketta_build/letta/ (its profile, wheel, servers, suites' contract, serve verb, flag spellings)."""
    found = set()
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE)
        if rel.parts[0] == "letta" or "__pycache__" in rel.parts:
            continue
        for line in path.read_text().splitlines():
            if "letta" in line.lower():
                found.add((rel.as_posix(), line.strip()))
    assert found - LETTA_IN_THE_CORE == set(), "Letta named in the core: move it into ketta_build/letta/"
    assert LETTA_IN_THE_CORE - found == set(), "listed but gone: take it off LETTA_IN_THE_CORE"
