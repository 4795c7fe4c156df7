"""`trellis init`: a new project folder that works at once.

The plain project is the template under ``trellis/templates/project``: definitions holding commented examples
and no definition yet, the dbt project's own files (``dbt_project.yml``, ``profiles.yml``, macros, generic
tests), the Feast repo's data folder, a Dagster workspace and its code location, a ``.gitignore``, and an empty
flags file (``flags/flags.flagd.json``: no flag, so the model's alias serves every request until a flag is added;
``trellis.flags``). The fraud example is the same folder with the reference project's definitions (this checkout's
``definitions/``: the simulated card network and the card_fraud model) in place of the examples, and its flags
(``flags/``: the champion serves, the challenger in shadow) in place of the empty file. Either way the generated files
(dbt models, Feast repo) are then written by the compiler, so ``trellis compile --check`` passes on the new
folder as it is.
"""

from __future__ import annotations

import shutil
from pathlib import Path

TEMPLATE = Path(__file__).resolve().parent / "templates" / "project"
EXAMPLES = {"fraud": "the reference project: simulated card transactions and labels, the card_fraud model"}
# Template files stored under another name: a dotfile in the package would act on this repository itself.
_RENAMED = {"dot_gitignore": ".gitignore"}


class InitError(Exception):
    """A folder `trellis init` will not write into; the message says why and what to do."""


def reference_definitions() -> Path:
    """The reference project's definitions: the ``definitions/`` folder of the checkout Trellis runs from."""
    folder = Path(__file__).resolve().parent.parent / "definitions"
    if not folder.is_dir():
        raise InitError(f"the fraud example is the reference project of a Trellis checkout, and {folder} is not "
                        f"there (Trellis is installed without its repository)")
    return folder


def reference_flags() -> Path | None:
    """The reference project's flags folder (``flags/`` of the checkout), or None without one."""
    folder = Path(__file__).resolve().parent.parent / "flags"
    return folder if folder.is_dir() else None


def init_project(dest: str | Path, example: str | None = None) -> list[str]:
    """Lay out a project in ``dest`` (missing or empty; never overwritten) and compile it; returns the files
    written, relative to ``dest``. ``example='fraud'`` lays out the reference project instead of the empty one."""
    dest = Path(dest)
    if example is not None and example not in EXAMPLES:
        raise InitError(f"unknown example {example!r}; the examples: {', '.join(EXAMPLES)}")
    if dest.exists() and not dest.is_dir():
        raise InitError(f"{dest} is a file, not a folder")
    if dest.is_dir() and any(dest.iterdir()):
        raise InitError(f"{dest} is not empty; `trellis init` writes only into a new or empty folder")
    definitions = reference_definitions() if example == "fraud" else None
    flags = reference_flags() if example == "fraud" else None
    replaced = {part for part, folder in (("definitions", definitions), ("flags", flags)) if folder}
    written = []
    for path in sorted(TEMPLATE.rglob("*")):
        rel = path.relative_to(TEMPLATE)
        if path.is_dir() or "__pycache__" in rel.parts or rel.parts[0] in replaced:
            continue
        target = dest / rel.parent / _RENAMED.get(rel.name, rel.name)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, target)
        written.append(target)
    if definitions is not None:
        for path in sorted(definitions.rglob("*.y*ml")):
            target = dest / "definitions" / path.relative_to(definitions)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, target)
            written.append(target)
    if flags is not None:
        for path in sorted(flags.glob("*.json")):
            target = dest / "flags" / path.name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, target)
            written.append(target)
    from trellis import compile as compiler
    from trellis.spec import load_project

    compiled = compiler.write(load_project(dest))
    return sorted({str(p.relative_to(dest)) for p in written} | set(compiled))
