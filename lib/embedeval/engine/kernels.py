"""The matrix product behind every tile, on numpy (BLAS) or torch (CPU or CUDA).

Tiles only use the GEMM to *rank* candidates; every decision a GEMM value cannot settle within its
rigorous error bound is redone in canonical float64 (``engine.exact``). So the backend changes speed,
never a result: the same scores come out of numpy, torch on CPU and torch on CUDA.

- ``numpy`` (default): ``a @ b.T`` through numpy's BLAS.
- ``torch`` on ``cpu`` or ``cuda``: the operands go to the device, one matmul, the product comes back.
  TF32 tensor cores are used only when ``allow_tf32`` is set; the error bound then uses TF32's unit
  roundoff (``unit_roundoff``), so exactness still holds, with more values rechecked.

A task selects its backend with ``use_backend`` (the runners pass ``score.device`` to every task).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np

DEVICES = ("cpu", "cuda", "torch")


@dataclass(frozen=True)
class Backend:
    name: str = "numpy"       # numpy | torch
    device: str = "cpu"       # cpu | cuda (torch only)
    allow_tf32: bool = False


_current = Backend()


def use_backend(backend: Backend) -> None:
    """Select the GEMM backend of this process (called at the start of each task)."""
    global _current
    if backend.name == "torch":
        import torch

        if backend.device == "cuda" and not torch.cuda.is_available():
            raise RuntimeError("score.device is 'cuda' but this worker has no CUDA device; use 'auto' or 'cpu'")
        if backend.device == "cuda":
            torch.backends.cuda.matmul.allow_tf32 = backend.allow_tf32
    _current = backend


def current() -> Backend:
    return _current


def backend_for(device: str, allow_tf32: bool = False) -> Backend:
    """``score.device`` -> a backend: ``cpu`` numpy, ``torch`` torch on CPU, ``cuda`` torch on the GPU."""
    if device == "cpu":
        return Backend()
    if device == "torch":
        return Backend("torch", "cpu", False)
    if device == "cuda":
        return Backend("torch", "cuda", allow_tf32)
    raise ValueError(f"unknown device {device!r}; use one of {DEVICES} or 'auto'")


def matmul_t(a: np.ndarray, b: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """``a @ b.T`` on the current backend, in the operands' dtype (float32 or float64)."""
    if _current.name == "numpy":
        return np.matmul(a, b.T, out=out)
    import torch

    with warnings.catch_warnings():
        # Blocks from the worker's cache are read-only; torch warns about a tensor over such an array,
        # though these tensors are only read (the product is a new tensor).
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable", category=UserWarning)
        ta = torch.from_numpy(np.ascontiguousarray(a)).to(_current.device)
        tb = torch.from_numpy(np.ascontiguousarray(b)).to(_current.device)
    result = (ta @ tb.T).cpu().numpy()
    if out is not None:
        out[...] = result
        return out
    return result


def unit_roundoff(dtype: Any) -> float:
    """The unit roundoff of the current backend's GEMM in ``dtype`` (TF32 keeps 10 mantissa bits)."""
    if np.dtype(dtype) == np.float64:
        return 2.0 ** -53
    if _current.name == "torch" and _current.device == "cuda" and _current.allow_tf32:
        return 2.0 ** -11
    return 2.0 ** -24
