"""The package's shape: layers that import only downwards, no import cycles, no reach-ins, one public API; and the
scripts beside it (benchmarks/, experiments/, scripts/) use only public names and never patch it."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

import vptq_lab

REPO = Path(__file__).resolve().parents[1]
# Lower ranks never import higher ones. kernels/ installs as vptq_lab.kernels.
RANKS = {
    "errors": 0,
    "files": 0,
    "memory": 0,
    "core": 1,
    "kernels": 2,
    "model": 3,
    "io": 4,
    "lab": 5,
    "cli": 6,
    "testing": 6,
}


def _sources() -> dict[str, Path]:
    """Dotted module name -> file, for the package and the kernels."""
    out = {}
    for root, package in ((REPO / "vptq_lab", "vptq_lab"), (REPO / "kernels", "vptq_lab.kernels")):
        for path in root.rglob("*.py"):
            parts = list(path.relative_to(root).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join([package, *parts])] = path
    return out


MODULES = _sources()
# Scripts outside the package (benchmarks, one-off probes, build steps) use it as a user would: public names only,
# and never patched.
SCRIPT_FOLDERS = ("benchmarks", "experiments", "scripts")
SCRIPTS = {str(p.relative_to(REPO)): p for folder in SCRIPT_FOLDERS for p in sorted((REPO / folder).glob("*.py"))}


def _imports(name: str, path: Path) -> list[tuple[str, list[str], int]]:
    """(imported module, names taken from it, line) for every import in the file, lazy ones included."""
    is_package = path.name == "__init__.py"
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found += [(alias.name, [], node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = name.split(".") if is_package else name.split(".")[:-1]
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            names = [alias.name for alias in node.names]
            submodules = [n for n in names if f"{base}.{n}" in MODULES]
            found += [(f"{base}.{n}", [], node.lineno) for n in submodules]
            found.append((base, [n for n in names if n not in submodules], node.lineno))
    return [(mod, names, line) for mod, names, line in found if mod.startswith("vptq_lab")]


def _where(path: Path) -> str:
    return str(path.relative_to(REPO)) if path.is_relative_to(REPO) else str(path)


def _owner(module: str) -> str:
    """The module that holds ``module``'s code: ``vptq_lab.lab.plots`` as is, a package's name as itself."""
    while module not in MODULES and "." in module:
        module = module.rpartition(".")[0]
    return module


def _rank(module: str) -> int | None:
    parts = module.split(".")
    return RANKS.get(parts[1]) if len(parts) > 1 else None


def test_every_module_has_a_layer():
    unranked = [m for m in MODULES if m != "vptq_lab" and _rank(m) is None]
    assert unranked == [], f"add these to RANKS (and the layer list in vptq_lab/__init__.py): {unranked}"


def test_layers_import_only_downwards():
    # core is the pure algorithm: it must not reach model surgery, files, evaluation or the workbench.
    upward = []
    for name, path in MODULES.items():
        rank = _rank(name)
        for mod, _, line in _imports(name, path):
            target = _rank(mod)
            if rank is not None and target is not None and target > rank:
                upward.append(f"{_where(path)}:{line} imports {mod}")
    assert upward == []


def test_core_imports_only_torch_numpy_pandas_and_the_standard_library():
    # pandas only for the DataFrame views of results; numpy for reductions torch does slowly on the CPU (k-means'
    # argmin) and the allocation's dynamic program
    allowed_third_party = {"torch", "pandas", "numpy"}
    bad = []
    for name, path in MODULES.items():
        if not name.startswith("vptq_lab.core"):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.Import, ast.ImportFrom)) and not getattr(node, "level", 0):
                roots = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module]
                for root in (r.split(".")[0] for r in roots):
                    if root not in allowed_third_party and root != "vptq_lab" and not _is_stdlib(root):
                        bad.append(f"{_where(path)}:{node.lineno} imports {root}")
    assert bad == []


def _is_stdlib(name: str) -> bool:
    import sys

    return name in sys.stdlib_module_names or name == "__future__"


def test_no_import_cycles():
    graph = {
        name: {_owner(mod) for mod, _, _ in _imports(name, path) if _owner(mod) != name}
        for name, path in MODULES.items()
    }
    graph = {n: {d for d in deps if d in MODULES and d != "vptq_lab"} for n, deps in graph.items()}
    cycles, state = [], {}

    def visit(node: str, stack: list[str]) -> None:
        state[node] = "open"
        for dep in sorted(graph.get(node, ())):
            if state.get(dep) == "open":
                cycles.append(" -> ".join(stack[stack.index(dep) :] + [dep]))
            elif dep not in state:
                visit(dep, stack + [dep])
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    assert cycles == []


def test_no_module_takes_another_modules_private_names():
    reach_ins = [
        f"{_where(path)}:{line} takes {mod}.{n}"
        for name, path in {**MODULES, **SCRIPTS}.items()
        for mod, names, line in _imports(name, path)
        for n in names
        if n.startswith("_") and _owner(mod) != name
    ]
    reach_ins += [
        f"{_where(path)}:{node.lineno} takes {ast.unparse(node)}"
        for path in SCRIPTS.values()
        for node in _attributes_of_the_library(ast.parse(path.read_text()))
        if _is_private(node.attr)
    ]
    assert reach_ins == [], "\n".join(reach_ins)


def _is_private(name: str) -> bool:
    return name.startswith("_") and not name.endswith("__")


def _library_names(tree: ast.AST) -> set[str]:
    """Names a file binds to vptq_lab or to something imported from it (a module, class or function)."""
    bound = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            bound |= {a.asname or a.name.split(".")[0] for a in node.names if a.name.split(".")[0] == "vptq_lab"}
        elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "vptq_lab":
            bound |= {a.asname or a.name for a in node.names}
    return bound


def _root(node: ast.AST) -> ast.AST:
    while isinstance(node, (ast.Attribute, ast.Subscript)):
        node = node.value
    return node


def _attributes_of_the_library(tree: ast.AST) -> list[ast.Attribute]:
    """Every ``X.attr`` (``X.y.attr`` too) whose ``X`` is a name bound to the library."""
    bound = _library_names(tree)
    return [
        node
        for node in ast.walk(tree)
        if isinstance(node, ast.Attribute) and isinstance(_root(node), ast.Name) and _root(node).id in bound
    ]


def _patches(tree: ast.AST) -> list[tuple[int, str]]:
    """(line, code) of every write into the library: an assignment to (or ``del`` of) an attribute of a name bound to
    it, and any ``setattr``/``delattr`` other than on ``self`` (a helper handed a module patches it that way)."""
    targets = {id(node) for node in _attributes_of_the_library(tree) if isinstance(node.ctx, (ast.Store, ast.Del))}
    found = [(node.lineno, ast.unparse(node)) for node in ast.walk(tree) if id(node) in targets]
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in ("setattr", "delattr"):
            owner = _root(node.args[0]) if node.args else None
            if not (isinstance(owner, ast.Name) and owner.id == "self"):
                found.append((node.lineno, ast.unparse(node)))
    return found


def test_no_script_patches_the_library():
    patched = [
        f"{_where(path)}:{line} patches: {code}"
        for path in SCRIPTS.values()
        for line, code in _patches(ast.parse(path.read_text()))
    ]
    assert patched == [], "\n".join(patched)


def test_the_checks_above_can_fail(tmp_path, monkeypatch):
    # A core module importing the model layer, a cycle and a private import are all caught.
    bad = tmp_path / "bad.py"
    bad.write_text("from vptq_lab.model.calibrate import _first_output\nimport vptq_lab.core.config\n")
    monkeypatch.setitem(MODULES, "vptq_lab.core.bad", bad)
    with pytest.raises(AssertionError, match="imports vptq_lab.model.calibrate"):
        test_layers_import_only_downwards()
    with pytest.raises(AssertionError, match="takes vptq_lab.model.calibrate._first_output"):
        test_no_module_takes_another_modules_private_names()
    for me, other in (("a", "b"), ("b", "a")):
        (tmp_path / f"{me}.py").write_text(f"import vptq_lab.core.fake_{other}\n")
        monkeypatch.setitem(MODULES, f"vptq_lab.core.fake_{me}", tmp_path / f"{me}.py")
    with pytest.raises(AssertionError, match="vptq_lab.core.fake_a -> vptq_lab.core.fake_b -> vptq_lab.core.fake_a"):
        test_no_import_cycles()
    # A script that reaches into the library's private names, or patches it, directly or through setattr.
    script = tmp_path / "probe.py"
    script.write_text(
        "import vptq_lab.model.calibrate as cal\n"
        "from vptq_lab.model import distill\n"
        "from vptq_lab.model.calibrate import _hidden, run_block\n"
        "cal.run_block = print\n"
        "distill.distill_.__doc__ = ''\n"
        "run_block.x = 1\n"
        "setattr(distill, 'distill_', print)\n"
        "print(cal._first_output)\n"
        "self.x = cal.run_block  # assigning from the library is fine\n"
    )
    monkeypatch.setitem(SCRIPTS, "experiments/probe.py", script)
    with pytest.raises(AssertionError) as private:
        test_no_module_takes_another_modules_private_names()
    assert "takes vptq_lab.model.calibrate._hidden" in str(private.value)
    assert "probe.py:8 takes cal._first_output" in str(private.value)
    with pytest.raises(AssertionError) as patching:
        test_no_script_patches_the_library()
    for line, code in ((4, "cal.run_block"), (5, "distill.distill_.__doc__"), (6, "run_block.x")):
        assert f"probe.py:{line} patches: {code}" in str(patching.value)
    assert "probe.py:7 patches: setattr(distill, 'distill_', print)" in str(patching.value)
    assert "probe.py:9" not in str(patching.value)


# The public API ------------------------------------------------------------------------------------------

ISSUE_API = [
    "quantize_",
    "VPTQConfig",
    "recipe",
    "vptq_quantize",
    "dequantize",
    "save_quantized",
    "load_quantized",
    "load_model",
    "perplexity",
    "load_wikitext2",
    "calibration_windows",
    "compare",
    "suggest",
]


def test_public_api_at_the_root():
    assert set(ISSUE_API) <= set(vptq_lab.__all__)
    assert sorted(vptq_lab.__all__) == sorted(vptq_lab._API)
    for name in vptq_lab.__all__:
        value = getattr(vptq_lab, name)
        home = importlib.import_module(vptq_lab._API[name])
        assert value is getattr(home, name), name
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        vptq_lab.nope  # noqa: B018


def test_importing_the_package_loads_no_heavy_module():
    import subprocess
    import sys

    code = "import sys, vptq_lab; print(sorted(m for m in ('torch', 'transformers', 'pandas') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_notebooks_and_readme_use_the_root_api():
    import json

    root_names = set(vptq_lab.__all__)
    for nb in sorted((REPO / "notebooks").glob("*.ipynb")):
        code = "\n".join("".join(c["source"]) for c in json.loads(nb.read_text())["cells"] if c["cell_type"] == "code")
        for node in ast.walk(ast.parse(_strip_magics(code))):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("vptq_lab."):
                deep = sorted(a.name for a in node.names if a.name in root_names)
                assert deep == [], f"{nb.name}: import {deep} from vptq_lab, not {node.module}"
    readme = (REPO / "README.md").read_text()
    assert "from vptq_lab import " in readme


def _strip_magics(code: str) -> str:
    return "\n".join(line for line in code.splitlines() if not line.lstrip().startswith(("%", "!")))
