"""The package's layers (README, Layout): a module imports only from its own layer and the layers below it; the
scripts in ``tools/`` import only the package; the README's Layout names every module of the package, and no other."""

from __future__ import annotations

import ast
import re
from pathlib import Path

from tests.conftest import REPO

#: bottom layer first, as the README lists them; the root modules (``pipeline``, ``io``, ``errors``) share layer 0
LAYERS = ("", "networks", "data", "transforms", "synth", "engine", "inference", "study", "bench", "commands", "cli")
ROOT_MODULES = {"pipeline", "io", "errors"}


def _layer(module: str) -> str:
    """The layer of a dotted module name inside ``pipeline``."""
    parts = module.split(".")
    return "" if len(parts) == 1 or parts[1] in ROOT_MODULES else parts[1]


def _imported(path: Path, module: str, prefix: str = "pipeline") -> list[str]:
    """The ``prefix`` modules ``path`` imports, lazy imports in functions included."""
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    names = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = package.split(".")[: len(package.split(".")) - node.level + 1] if node.level else []
            names.append(".".join([*base, node.module] if node.module else base))
        elif isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
    return [name for name in names if name == prefix or name.startswith(f"{prefix}.")]


def arrows() -> set[tuple[str, str, str]]:
    """Every (importing module, its layer, imported layer) between two different layers."""
    found = set()
    for path in sorted((REPO / "pipeline").rglob("*.py")):
        parts = path.relative_to(REPO).with_suffix("").parts
        module = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        for name in _imported(path, module):
            if _layer(name) != _layer(module):
                found.add((module, _layer(module), _layer(name)))
    return found


def test_every_package_has_a_layer():
    packages = {p.name for p in (REPO / "pipeline").iterdir() if p.is_dir() and any(p.glob("*.py"))}
    assert packages | {"cli"} == set(LAYERS) - {""}


def test_no_module_imports_a_layer_above_its_own():
    upward = sorted(f"{m} ({a}) imports {b}" for m, a, b in arrows() if LAYERS.index(b) > LAYERS.index(a))
    assert not upward, "\n".join(upward)


def test_the_check_sees_lazy_imports():
    assert ("pipeline.engine.keys", "engine", "networks") in arrows()


def test_tools_import_nothing_from_the_tests():
    scripts = sorted((REPO / "tools").glob("*.py"))
    imports = {path.name: _imported(path, f"tools.{path.stem}", "tests") for path in scripts}
    assert scripts and not {name: found for name, found in imports.items() if found}


def layout_modules(readme: str) -> set[str]:
    """The package's modules and folders the README's Layout names (``data/``, ``data/manifest.py``, ``cli.py``): an
    entry's first column names folders or modules, the ``*.py`` of a folder's text are its modules."""
    block = readme.split("## Layout\n", 1)[1].split("```")[1].split("\npipeline/", 1)[1]
    entries: dict[str, str] = {}
    for line in block.splitlines():
        if not line.startswith(" "):
            break  # the next top-level folder
        if re.match(r"  \S", line):  # an entry of pipeline/; its text continues on the deeper-indented lines
            names, _, text = re.split(r"(\s{2,})", line.strip(), maxsplit=1)
            entries[names] = text
        elif entries:
            entries[names] += " " + line.strip()
    listed = set()
    for names, text in entries.items():
        for name in re.split(r",\s*", names):
            listed.add(name)
            if name.endswith("/"):
                listed |= {name + module for module in re.findall(r"(?<![\w/.])(\w+\.py)\b", text)}
    return listed


def test_the_readme_layout_names_every_module_of_the_package_and_no_other():
    package = REPO / "pipeline"
    modules = {
        str(p.relative_to(package)) for p in package.rglob("*.py") if p.parent == package or p.name != "__init__.py"
    }
    modules |= {f"{p.name}/" for p in package.iterdir() if p.is_dir() and any(p.glob("*.py"))}
    assert layout_modules((REPO / "README.md").read_text()) == modules
