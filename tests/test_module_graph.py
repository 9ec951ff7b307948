"""The module graph, read from the code's own imports (``ast``, function-level imports included).

Rules (docs/architecture.md, "Layers"):

1. The box (``appliance/*`` outside ``appliance/fleet``) never imports the clinic (``appliance.fleet``), the
   training code (``models``), nor the clinic's or the trainer's third-party packages.
2. The protocol layer (``appliance.protocol``) imports nothing of the box or the clinic.
3. The clinic (``appliance.fleet``) imports, of this project, only the protocol layer and itself: what it shares
   with the box is a contract defined once in ``appliance.protocol``, never a box module.
4. A box module imports only modules of its own layer or lower ones (:data:`LAYERS`, lowest first).

Every box module must be placed in a layer: a new module fails here until it is put on the map (here and in
docs/architecture.md), so the map cannot silently go stale.
"""
from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent

LAYERS: list[tuple[str, set[str]]] = [
    ("protocol", {"appliance.protocol", "appliance.protocol.ids", "appliance.protocol.signing",
                  "appliance.protocol.stages", "appliance.protocol.schema", "appliance.protocol.commands",
                  "appliance.protocol.updates", "appliance.protocol.safety", "appliance.protocol.boxconfig",
                  "appliance.protocol.transport", "appliance.protocol.cliparse", "appliance.protocol.version",
                  "appliance.protocol.userfiles"}),
    ("foundation", {"appliance", "appliance.hypnogram", "appliance.epoch", "appliance.audit", "appliance.tflite",
                    "appliance.config", "appliance.jsonl", "appliance.episodes"}),
    ("hardware edge", {"appliance.ring", "appliance.ads1299", "appliance.ads1299_sim", "appliance.signal_sources",
                       "appliance.ads1299_frame", "appliance.ads1299_selftest", "appliance.synthetic_eeg",
                       "appliance.acquisition", "appliance.outputs", "appliance.hardware", "appliance.selftest"}),
    ("signal and staging", {"appliance.filters", "appliance.filter_designs", "appliance.dsp", "appliance.stager",
                            "appliance.loop_model", "appliance.edfplus", "appliance.nightfolder",
                            "appliance.epoch_assembler"}),
    ("loops and breather", {"appliance.loops", "appliance.breather"}),
    ("services", {"appliance.homeassistant", "appliance.outbox",
                  "appliance.mqtt", "appliance.report", "appliance.report_load", "appliance.report_draw",
                  "appliance.updates", "appliance.pushed_config"}),
    ("night", {"appliance.night_journal", "appliance.alerts", "appliance.night_pipeline", "appliance.night_parts",
               "appliance.clinic_commands", "appliance.morning_report"}),
    ("daemon", {"appliance.daemon"}),
    ("cli", {"appliance.cli"}),
    ("demo", {"appliance.demo"}),
]
"""Box modules by layer, lowest first: a module may import its own layer and the ones before it."""

CLINIC = "appliance.fleet"
TRAINING = "models"
NOT_ON_A_BOX = ("fastapi", "starlette", "uvicorn", "sqlalchemy", "psycopg", "jinja2", "argon2", "itsdangerous",
                "tensorflow", "yasa")
"""Third-party packages of the clinic's and the trainer's extras (pyproject.toml ``fleet``, ``train``, ``bench``)."""


def _module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def imports_of(path: Path, module: str) -> set[str]:
    """Every module ``path`` imports, anywhere in it (top level, functions, ``try`` blocks), as absolute names.

    ``from a import b`` counts as importing both ``a`` and ``a.b`` (``b`` may be a submodule).
    """
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join(up + ([node.module] if node.module else []))
            found.add(base)
            found |= {f"{base}.{a.name}" for a in node.names}
    return found


def graph(root: Path = REPO) -> dict[str, set[str]]:
    """Module name -> the names it imports, for every module of the ``appliance`` package under ``root``."""
    return {_module_name(p, root): imports_of(p, _module_name(p, root))
            for p in sorted((root / "appliance").rglob("*.py"))}


def _within(name: str, package: str) -> bool:
    return name == package or name.startswith(package + ".")


def box_modules(g: dict[str, set[str]]) -> list[str]:
    return [m for m in g if not _within(m, CLINIC)]


def test_imports_are_read_from_function_bodies_and_relative_imports(tmp_path: Path) -> None:
    pkg = tmp_path / "appliance"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "x.py").write_text("def f():\n    try:\n        from .fleet import signing\n    except ImportError:\n"
                              "        import models.stager.train\n")
    assert {"appliance.fleet", "appliance.fleet.signing", "models.stager.train"} <= graph(tmp_path)["appliance.x"]


def test_the_box_never_imports_the_clinic_or_the_training_code() -> None:
    g = graph()
    bad = sorted(f"{m} imports {i}" for m in box_modules(g) for i in g[m]
                 if _within(i, CLINIC) or _within(i, TRAINING) or i.split(".")[0] in NOT_ON_A_BOX)
    assert not bad, "the box must not import the clinic or the training code:\n" + "\n".join(bad)


def test_the_protocol_layer_imports_neither_side() -> None:
    g = graph()
    bad = sorted(f"{m} imports {i}" for m in g if _within(m, "appliance.protocol") for i in g[m]
                 if _within(i, "appliance") and not _within(i, "appliance.protocol"))
    assert not bad, "appliance.protocol is shared by box and clinic and imports neither:\n" + "\n".join(bad)


def clinic_imports_of_the_box(g: dict[str, set[str]]) -> list[str]:
    """``"<clinic module> imports <name>"`` for every import of the clinic that is neither the protocol, the clinic
    itself, nor third-party (the bare package ``appliance``, which any ``appliance.x`` import runs, only when no name
    is taken from it)."""
    return sorted(f"{m} imports {i}" for m in g if _within(m, CLINIC) for i in g[m]
                  if _within(i, "appliance") and i != "appliance"
                  and not _within(i, "appliance.protocol") and not _within(i, CLINIC))


def test_the_clinic_imports_only_the_protocol_and_itself() -> None:
    bad = clinic_imports_of_the_box(graph())
    assert not bad, ("the clinic imports box modules; what it shares with the box belongs in appliance.protocol:\n"
                     + "\n".join(bad))


def test_a_clinic_import_of_a_box_module_is_caught(tmp_path: Path) -> None:
    # the rule's own check: function-level and "from appliance import x" forms are both seen
    (tmp_path / "appliance" / "fleet").mkdir(parents=True)
    (tmp_path / "appliance" / "__init__.py").write_text("")
    (tmp_path / "appliance" / "fleet" / "__init__.py").write_text("from appliance.protocol import schema\n")
    (tmp_path / "appliance" / "fleet" / "x.py").write_text(
        "from appliance import __version__\nfrom . import y\ndef f():\n    from appliance.config import ConfigError\n")
    assert clinic_imports_of_the_box(graph(tmp_path)) == [
        "appliance.fleet.x imports appliance.__version__", "appliance.fleet.x imports appliance.config",
        "appliance.fleet.x imports appliance.config.ConfigError"]


def test_every_box_module_is_on_the_map() -> None:
    placed = set().union(*(mods for _, mods in LAYERS))
    missing = sorted(set(box_modules(graph())) - placed)
    assert not missing, (f"put {missing} in a layer in tests/test_module_graph.py (LAYERS) and in "
                         "docs/architecture.md ('Layers')")


@pytest.mark.parametrize("layer", [name for name, _ in LAYERS])
def test_no_layer_imports_a_higher_one(layer: str) -> None:
    rank = {m: i for i, (_, mods) in enumerate(LAYERS) for m in mods}
    g = graph()
    here = next(i for i, (name, _) in enumerate(LAYERS) if name == layer)
    bad = sorted(f"{m} ({layer}) imports {i} ({LAYERS[rank[i]][0]})" for m in LAYERS[here][1] if m in g
                 for i in g[m] if rank.get(i, -1) > here)
    assert not bad, "a lower layer imports a higher one:\n" + "\n".join(bad)


def _catches_import_error(handler: ast.ExceptHandler) -> bool:
    names = handler.type.elts if isinstance(handler.type, ast.Tuple) else [handler.type]
    return any(isinstance(n, ast.Name) and n.id in ("ImportError", "ModuleNotFoundError") for n in names)


def test_no_import_error_fallback_for_a_module_of_the_box_itself() -> None:
    # a box module is always installed with the others (one wheel), so `except ImportError` around importing one
    # is a branch that cannot run; appliance._native (compiled at install) and third-party runtimes are different
    bad = []
    for path in sorted((REPO / "appliance").rglob("*.py")):
        module = _module_name(path, REPO)
        if _within(module, CLINIC):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.Try) or not any(_catches_import_error(h) for h in node.handlers):
                continue
            guarded = imports_of_nodes(node.body, module, path)
            own = sorted(i for i in guarded if _within(i, "appliance") and not _within(i, "appliance._native"))
            if own:
                bad.append(f"{path.relative_to(REPO)}:{node.lineno} guards {own}")
    assert not bad, "unreachable ImportError fallbacks:\n" + "\n".join(bad)


def imports_of_nodes(body: list[ast.stmt], module: str, path: Path) -> set[str]:
    """The modules some statements import (``from a import b`` counts as ``a``), as absolute names."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()
    for node in (n for stmt in body for n in ast.walk(stmt)):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            up = package.split(".")[: len(package.split(".")) - (node.level - 1)] if node.level else []
            found.add(".".join(up + ([node.module] if node.module else [])))
    return found


def test_sources_cite_no_absolute_path_of_a_development_machine() -> None:
    import re

    pattern = re.compile(r"(?<![\w.])/(work|home|Users|root)/\w")
    bad = [f"{p.relative_to(REPO)}:{n}" for d in ("appliance", "native", "models", "systemd")
           for p in sorted((REPO / d).rglob("*")) if p.suffix in (".py", ".c", ".h", ".sh", ".service", ".md")
           for n, line in enumerate(p.read_text(errors="replace").splitlines(), 1) if pattern.search(line)]
    assert not bad, "cite shared files relatively (../shared/...):\n" + "\n".join(bad)


def architecture_paragraph_heads(text: str) -> set[str]:
    """The files named in the bold head of a paragraph of docs/architecture.md, before its first colon:
    ``**`path`**: ...``, ``**`path`** (protocol layer): ...``, or several joined, as in
    ``**`native/ring.h` + `native/ring.c` + `appliance/ring.py`**: ...``."""
    named: set[str] = set()
    for para in text.split("\n\n"):
        head = re.match(r"\*\*`[^\n]*?:(?=\s|$)", para.lstrip())
        if head:
            named.update(re.findall(r"`([^`]+)`", head.group(0)))
    return named


def test_every_module_has_its_paragraph_in_the_architecture_map() -> None:
    # "one paragraph per module": a file added without its paragraph fails here (package __init__ files and the
    # native tests excepted)
    files = [p.relative_to(REPO).as_posix() for p in sorted((REPO / "appliance").rglob("*.py"))
             if p.name != "__init__.py" and "__pycache__" not in p.parts]
    files += [p.relative_to(REPO).as_posix() for p in sorted((REPO / "native").glob("*.[ch]"))]
    named = architecture_paragraph_heads((REPO / "docs" / "architecture.md").read_text())
    missing = [f for f in files if f not in named]
    assert not missing, f"give these their paragraph in docs/architecture.md: {missing}"


def test_paragraph_heads_are_read_as_written() -> None:
    text = ("**`a/x.py`**: one.\n\n**`a/y.py`**, **`n/z.c`** + `n/z.h`**: two, naming `a/w.py` in the body.\n\n"
            "**`p/q.py`** (protocol layer): three: `a/u.py`.\n\nA body that names `a/v.py`.")
    assert architecture_paragraph_heads(text) == {"a/x.py", "a/y.py", "n/z.c", "n/z.h", "p/q.py"}
