"""Optuna, imported on demand: the module itself, quiet studies, and the storage behind ``--storage``."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Iterator


def optuna_module() -> Any:
    try:
        import optuna
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError("the autotuner needs Optuna: pip install 'gpuconv[tune]'") from e
    return optuna


@contextmanager
def quiet_optuna() -> Iterator[None]:
    """Silence Optuna's per-trial INFO lines for the duration of a study, then restore the caller's level."""
    optuna = optuna_module()
    before = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        yield
    finally:
        optuna.logging.set_verbosity(before)


def make_storage(spec: str | None) -> Any:
    """An Optuna storage for ``--storage``: None (in memory), a URL (``sqlite:///t.db``, ``postgresql://...``),
    or a file path for a journal (``JournalStorage(JournalFileBackend(path))``), shareable across processes.

    Raises:
        ValueError: a journal path whose directory does not exist.
    """
    if spec is None:
        return None
    if "://" in spec:
        return optuna_module().storages.RDBStorage(spec)
    from pathlib import Path

    parent = Path(spec).resolve().parent
    if not parent.is_dir():
        raise ValueError(f"storage: the directory of the journal file {spec!r} does not exist")
    from optuna.storages.journal import JournalFileBackend, JournalStorage

    return JournalStorage(JournalFileBackend(str(spec)))
