"""Running a published repository's code beside ours, from a checkout the user names.

The published repositories are research code: top-level packages named ``wan``, ``utils``,
``pipeline`` and ``model`` (LongLive and Rolling Forcing both have them), a module that asks for
the current CUDA device at import, and attention through flash-attn. :func:`checkout` imports
such a tree for the length of a ``with`` block and takes every module it imported out of
``sys.modules`` afterwards, so two checkouts can be run one after the other in one process.
Nothing of a checkout is copied into this repository.

What a CPU lacks is shimmed, nothing else: ``torch.cuda.current_device`` answers 0 while the
checkout imports (``utils/memory.py`` builds a ``cuda:N`` device object at import and never
uses it on this path), and :func:`float32_attention` stands in for the flash-attn kernel (which
computes in bf16 on a GPU; its SDPA fallback casts to bf16 too), so a float32 comparison is
float32 on both sides. The packages a checkout imports only for paths not run here (``wan``'s
image-to-video imports torchvision, which PyPI's build cannot import beside every torch build)
are stubbed where missing: any attribute of a stub is another stub, and calling one fails.
The published code's own pure-Python requirements (easydict, einops, ftfy, omegaconf) are the
``fidelity`` extra.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import io
import random
import subprocess
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any
from unittest import mock

import numpy as np
import torch
import torch.nn.functional as F

__all__ = [
    "COMMIT_FILE",
    "attention_everywhere",
    "checkout",
    "commit_of",
    "float32_attention",
    "float32_attention_everywhere",
    "quiet",
]

# where an exported checkout (evals/devtools/export_checkouts.py) keeps the commit it was
# exported at, having no .git
COMMIT_FILE = "COMMIT"


def commit_of(path: Path) -> str | None:
    """The commit a checkout is at: git's answer, else its :data:`COMMIT_FILE`, else None."""
    path = Path(path)
    if (path / ".git").exists():
        out = subprocess.run(
            ["git", "-C", str(path), "rev-parse", "HEAD"], capture_output=True, text=True
        )
        if out.stdout.strip():
            return out.stdout.strip()
    recorded = path / COMMIT_FILE
    if recorded.is_file():
        return recorded.read_text().strip() or None
    return None


@contextlib.contextmanager
def checkout(
    path: Path,
    modules: Sequence[str],
    stubs: Sequence[str] = (),
    fixed: Mapping[str, Mapping[str, Any]] | None = None,
) -> Iterator[list[ModuleType]]:
    """Import ``modules`` from the checkout at ``path``.

    ``stubs`` stand in for the packages of those names that do not import here; ``fixed``
    modules (name -> attributes) stand in for imports the comparison never calls whose real
    values matter (constants). Every module the checkout brought in, every stand-in, leaves
    ``sys.modules`` with the block, and the global random states its imports seed are restored.
    """
    path = Path(path).resolve()
    if not path.is_dir():
        raise FileNotFoundError(f"no checkout at {path}")
    finder = _StubFinder([name for name in stubs if not _importable(name)])
    before = set(sys.modules)
    states = (random.getstate(), np.random.get_state(), torch.get_rng_state())
    sys.path.insert(0, str(path))
    sys.meta_path.insert(0, finder)
    fixed = fixed or {}
    for name, attributes in fixed.items():
        parent = any(other.startswith(f"{name}.") for other in fixed)
        sys.modules[name] = _Fixed(name, attributes, parent)
    try:
        with mock.patch.object(torch.cuda, "current_device", lambda: 0), quiet():
            imported = [importlib.import_module(name) for name in modules]
        yield imported
    finally:
        sys.meta_path.remove(finder)
        sys.path.remove(str(path))
        # decided for all before any goes: a namespace package's path is recomputed from its
        # parent's, which must still be there
        leaving = [name for name in set(sys.modules) - before if _from(sys.modules[name], path)]
        for name in leaving:
            del sys.modules[name]
        random.setstate(states[0])
        np.random.set_state(states[1])
        torch.set_rng_state(states[2])


def _from(module: ModuleType, path: Path) -> bool:
    """Whether ``module`` is a stand-in or lives in the checkout at ``path``."""
    if isinstance(module, _Stub | _Fixed):
        return True
    where = [getattr(module, "__file__", None), *getattr(module, "__path__", [])]
    return any(str(path) in str(w) for w in where if w)


def _importable(name: str) -> bool:
    try:
        importlib.import_module(name)
    except Exception:
        return False
    return True


class _Stub(ModuleType):
    """A package that is never used on the path run: its attributes are stubs too."""

    def __getattr__(self, name: str) -> _Stub:
        if name.startswith("__"):
            raise AttributeError(name)
        return _Stub(f"{self.__name__}.{name}")

    def __call__(self, *args, **kwargs):
        raise RuntimeError(f"{self.__name__} is a stub: the fidelity eval does not run this path")


class _Fixed(ModuleType):
    """A stand-in module holding given attributes."""

    def __init__(self, name: str, attributes: Mapping[str, Any], package: bool) -> None:
        super().__init__(name)
        self.__dict__.update(attributes)
        if package:  # other stand-ins are its submodules
            self.__path__: list[str] = []


class _StubFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def __init__(self, packages: list[str]) -> None:
        self.packages = packages

    def find_spec(self, name, path=None, target=None):
        if any(name == p or name.startswith(p + ".") for p in self.packages):
            return importlib.machinery.ModuleSpec(name, self, is_package=True)
        return None

    def create_module(self, spec) -> _Stub:
        return _Stub(spec.name)

    def exec_module(self, module: ModuleType) -> None:
        module.__path__ = []


def float32_attention(q, k, v, q_lens=None, k_lens=None, **kwargs) -> torch.Tensor:
    """The published ``attention`` / ``flash_attention(q, k, v)`` (``[B, L, H, D]`` in and
    out), full, in the inputs' dtype. Text-to-video passes no padding lengths."""
    if q_lens is not None or k_lens is not None or kwargs.get("causal"):
        raise ValueError("the float32 attention shim takes no lengths and no causal mask")
    out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
    return out.transpose(1, 2).contiguous().to(v.dtype)


@contextlib.contextmanager
def attention_everywhere(attention: Callable, *modules: ModuleType) -> Iterator[None]:
    """Every ``attention`` and ``flash_attention`` bound in ``modules`` is ``attention`` for
    the block."""
    with contextlib.ExitStack() as stack:
        for module in modules:
            for name in ("attention", "flash_attention"):
                if hasattr(module, name):
                    stack.enter_context(mock.patch.object(module, name, attention))
        yield


def float32_attention_everywhere(*modules: ModuleType) -> contextlib.AbstractContextManager:
    """Every ``attention`` and ``flash_attention`` bound in ``modules`` is
    :func:`float32_attention` for the block."""
    return attention_everywhere(float32_attention, *modules)


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """The published loops print every window; keep the eval's own output readable."""
    with contextlib.redirect_stdout(io.StringIO()):
        yield
