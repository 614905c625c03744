"""Triton's CPU interpreter, made to run this project's kernels under NumPy >= 2.4.

Test harness only: ``tests/conftest.py`` sets ``TRITON_INTERPRET=1`` where there is no CUDA
device and calls :func:`patch_for_numpy2` before any test module imports a kernel. The kernels
themselves (``kernels/``) import only torch and triton and patch nothing.
"""

from __future__ import annotations

__all__ = ["patch_for_numpy2"]


def patch_for_numpy2() -> None:
    """Let ``range(lo, hi)`` take loaded scalars under ``TRITON_INTERPRET=1`` with NumPy >= 2.4.

    The interpreter holds scalars as 1-element arrays and converts loop bounds with
    ``int(array)``, which NumPy 2.4 rejects for ``ndim > 0`` (triton-lang/triton#9171). Triton
    releases with that fixed (``int(data.squeeze())``: 3.9, what the development environment
    has) need nothing, and the patch does the same as their own code; ``pyproject.toml`` allows
    Triton from 3.1. Only the CPU interpreter is touched, and only when Triton runs in it;
    calling this twice patches once.
    """
    try:
        import triton
    except ImportError:  # no Triton on this platform: no kernel runs, nothing to patch
        return
    if not triton.knobs.runtime.interpret:
        return
    from triton.runtime import interpreter

    original = interpreter._patch_lang_tensor
    if getattr(original, "_numpy2_patched", False):
        return

    def patch_lang_tensor(tensor, scope):
        original(tensor, scope)
        scope.set_attr(tensor, "__index__", lambda self: int(self.handle.data.reshape(())))

    patch_lang_tensor._numpy2_patched = True
    interpreter._patch_lang_tensor = patch_lang_tensor
