"""tox's inline plugin: every CPython 3.9+ installed by pyenv is an interpreter tox can use.

tox looks for ``python3.9``, ``python3.10``, ... on PATH; pyenv puts only the selected version
there, so a machine with Python 3.9 to 3.13 installed by pyenv would skip most envs. This adds
each ``$(pyenv root)/versions/3.X.Y/bin/python3`` (3.9 and later) to tox's ``--discover`` list,
the interpreters tried first; an env still takes only the one matching its ``base_python``.
No PATH is edited, and a machine without pyenv is left as it is.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

from tox.plugin import impl

OLDEST = (3, 9)


def pyenv_root() -> Path | None:
    """``$PYENV_ROOT``, else what ``pyenv root`` says, else ``~/.pyenv`` if it exists."""
    if os.environ.get("PYENV_ROOT"):
        return Path(os.environ["PYENV_ROOT"])
    pyenv = shutil.which("pyenv")
    if pyenv is not None:
        try:
            out = subprocess.run(
                [pyenv, "root"], capture_output=True, text=True, timeout=10, check=True
            ).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            out = ""
        if out:
            return Path(out)
    default = Path.home() / ".pyenv"
    return default if default.is_dir() else None


def pyenv_pythons(root: Path | None) -> list[str]:
    """The ``python3`` of each CPython ``3.X.Y`` under ``root/versions``, 3.9 and later."""
    if root is None or not (root / "versions").is_dir():
        return []
    found = []
    for version in sorted((root / "versions").iterdir()):
        match = re.fullmatch(r"(\d+)\.(\d+)\.\d+", version.name)  # CPython only: no pypy, no -dev
        if match is None or (int(match[1]), int(match[2])) < OLDEST:
            continue
        executable = version / "bin" / "python3"
        if executable.is_file():
            found.append(str(executable))
    return found


@impl
def tox_add_core_config(core_conf: Any, state: Any) -> None:
    options = state.conf.options
    known = list(getattr(options, "discover", None) or [])
    options.discover = known + [exe for exe in pyenv_pythons(pyenv_root()) if exe not in known]
