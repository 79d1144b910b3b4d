"""The house rules, checked on the source: module size, no import circles, no private names across
modules, function-local imports only for optional heavy dependencies (docs/development.md)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("sae", "geometry")
MAX_LINES = 400
# imported inside functions on purpose: heavy or optional, and not needed on every path
HEAVY = ("transformers", "plotly", "kaleido", "umap", "sklearn", "igraph", "leidenalg", "scipy", "pandas", "tqdm",
         "torch.distributed", "huggingface_hub", "gguf", "accelerate", "pyarrow", "sae_lens", "matplotlib",
         "safetensors", "numpy", "datasets", "choreographer")


def modules() -> dict[str, Path]:
    """{dotted name: file} of every module of the two packages."""
    out = {}
    for pkg in PACKAGES:
        for path in sorted((ROOT / pkg).rglob("*.py")):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            out[".".join(parts)] = path
    return out


def imports(path: Path, name: str, known: dict[str, Path]) -> list[tuple[str, str, bool, int]]:
    """(imported module, imported name or '', inside a function?, line) of each project import of a module."""
    tree = ast.parse(path.read_text())
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = []

    def visit(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            local = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef))
            if isinstance(child, ast.Import):
                found.extend((a.name, "", in_function, child.lineno) for a in child.names)
            elif isinstance(child, ast.ImportFrom):
                base = child.module or ""
                if child.level:
                    base = ".".join(package.split(".")[: len(package.split(".")) - child.level + 1] + ([base] if base else []))
                for a in child.names:
                    sub = f"{base}.{a.name}"
                    found.append((sub, "", in_function, child.lineno) if sub in known else (base, a.name, in_function, child.lineno))
            visit(child, local)

    visit(tree, False)
    return found


def project_edges() -> dict[str, set[str]]:
    known = modules()
    edges: dict[str, set[str]] = {m: set() for m in known}
    for name, path in known.items():
        for target, _, _, _ in imports(path, name, known):
            if target in known and target != name:
                edges[name].add(target)
    return edges


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def strong(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in edges[v]:
            if w not in index:
                strong(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in edges:
        if v not in index:
            strong(v)
    return out


def test_the_cycle_finder_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_module_is_over_the_limit():
    long = {name: n for name, path in modules().items() if (n := len(path.read_text().splitlines())) > MAX_LINES}
    assert not long, f"modules over {MAX_LINES} lines: {long}"


def test_no_import_circles():
    assert cycles(project_edges()) == []


def test_no_private_names_across_modules():
    known = modules()
    bad = [f"{name}:{line} imports {target}.{what}" for name, path in known.items()
           for target, what, _, line in imports(path, name, known)
           if what.startswith("_") and target.split(".")[0] in PACKAGES and target != name]
    assert not bad, "\n".join(bad)


def test_function_local_imports_are_only_for_heavy_dependencies():
    known = modules()
    bad = [f"{name}:{line} imports {target} inside a function" for name, path in known.items()
           for target, _, local, line in imports(path, name, known)
           if local and not target.startswith(HEAVY)]
    assert not bad, "\n".join(bad)


@pytest.mark.parametrize("package", PACKAGES)
def test_importing_a_package_pulls_no_heavy_optional_dependency(package):
    import subprocess
    import sys

    code = f"import sys, {package}; print(sorted(m for m in ('plotly', 'umap', 'sklearn', 'igraph') if m in sys.modules))"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert r.returncode == 0 and r.stdout.strip() == "[]", r.stdout + r.stderr
