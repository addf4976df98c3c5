"""Where the data files that ship with gpuconv are: the repository checkout, or inside an installed wheel."""

from __future__ import annotations

from pathlib import Path

_PACKAGE = Path(__file__).resolve().parent


def data_dir(installed: str, checkout: str) -> Path:
    """``gpuconv/<installed>`` in a wheel install, else ``<repo>/<checkout>`` (an editable install or a checkout)."""
    inside = _PACKAGE / installed
    return inside if inside.is_dir() else _PACKAGE.parent / checkout


def hash_files(paths: list[Path]) -> str:
    """A short sha256 over files' names (relative to the repository or install root) and contents."""
    import hashlib

    h = hashlib.sha256()
    for p in sorted(paths):
        h.update(p.resolve().relative_to(_PACKAGE.parent).as_posix().encode() + b"\0" + p.read_bytes() + b"\0")
    return h.hexdigest()[:16]
