"""Triton launches for host-bound steps: the compiled kernel is looked up once, then called.

``kernel[grid](*args)`` binds and specialises every argument, builds a string cache key, reads
its knobs and runs the (empty) launch hooks on each call: several times the host time of an
aten op per launch. A decode step is host-bound (the GPU idles between launches), so a Triton
kernel that replaces a few aten ops only pays off on the host when it is launched cheaply.
:class:`Launcher` keeps each compiled kernel under a key of its own, at least as fine as
Triton's specialisation::

    tensor -> (dtype, data_ptr % 16 == 0)     int -> (== 1, % 16 == 0, fits in int32)
    anything else (float, bool, None) -> (type, value)     constexprs, launch options -> values

and launches it through the compiled kernel's C launcher. The first call of a key, Triton's
interpreter (``TRITON_INTERPRET=1``) and a set launch hook (a profiler) go through
``kernel[grid]`` as usual.
"""

from __future__ import annotations

import torch
import triton
from triton import knobs

__all__ = ["Launcher", "cdiv", "next_power_of_2"]


def next_power_of_2(n: int) -> int:
    """``triton.next_power_of_2`` for host code (Triton's is a constexpr function, far dearer)."""
    return 1 << (n - 1).bit_length() if n > 0 else 1


def cdiv(a: int, b: int) -> int:
    return -(-a // b)


def _hooked() -> bool:
    """Whether a launch hook is set (Triton 3.6 keeps an empty chain when there is none)."""
    hook = knobs.runtime.launch_enter_hook
    return hook is not None and bool(getattr(hook, "calls", True))


class Launcher:
    """``fn[grid](*args, **meta)`` at a few microseconds of host time after a key's first call.

    Args:
        fn: a ``@triton.jit`` kernel whose constexpr parameters come after all the others.

    Call with the grid, the non-constexpr arguments in order, and the constexprs and launch
    options (``num_warps``, ``num_stages``) as keywords, always in the same order at a site.
    """

    def __init__(self, fn: triton.runtime.JITFunction) -> None:
        self.fn = fn
        self._kernels: dict = {}
        # Off for good under the interpreter, or if this Triton's kernels lack what is used.
        self._fast = hasattr(fn, "constexprs") and hasattr(fn, "arg_names")
        if self._fast:
            names = fn.arg_names
            self.num_args = len(names) - len(fn.constexprs)
            if sorted(fn.constexprs) != list(range(self.num_args, len(names))):
                raise ValueError(f"{fn.__name__}: constexpr parameters must come last")
            self.constexpr_names = names[self.num_args :]

    def __call__(self, grid: tuple[int, ...], *args, **meta) -> None:
        if not self._fast or knobs.runtime.interpret or _hooked():
            self.fn[grid](*args, **meta)
            return
        device = torch.cuda.current_device()
        # The specialisation key, inline (a function call per argument costs as much again).
        # Anything but tensors and ints keys by (type, value): finer than Triton needs, so safe.
        spec = [
            (a.dtype, a.data_ptr() % 16 == 0)
            if isinstance(a, torch.Tensor)
            else (a == 1, a % 16 == 0, -0x80000000 <= a <= 0x7FFFFFFF)
            if type(a) is int
            else (type(a), a)
            for a in args
        ]
        key = (device, *spec, *meta.items())
        entry = self._kernels.get(key)
        if entry is None:
            self._first_launch(key, grid, args, meta)
            return
        run, function, packed, constexprs = entry
        stream = torch._C._cuda_getCurrentRawStream(device)  # what Triton's own launch reads
        g1 = grid[1] if len(grid) > 1 else 1
        g2 = grid[2] if len(grid) > 2 else 1
        run(grid[0], g1, g2, stream, function, packed, None, None, None, *args, *constexprs)

    def _first_launch(self, key, grid, args, meta) -> None:
        if len(args) != self.num_args:
            raise TypeError(f"{self.fn.__name__} takes {self.num_args} arguments, got {len(args)}")
        kernel = self.fn[grid](*args, **meta)
        if hasattr(kernel, "result"):  # compiled asynchronously
            kernel = kernel.result()
        try:
            constexprs = tuple(meta[name] for name in self.constexpr_names)
            self._kernels[key] = (kernel.run, kernel.function, kernel.packed_metadata, constexprs)
        except (AttributeError, KeyError):
            self._fast = False
