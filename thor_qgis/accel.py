"""Accelerators and numeric precision: which device runs the encoder, in which precision, with how
many tiles per batch, and the CPU's fast reduced-precision matrix products.

Device
    ``auto`` takes a CUDA GPU when torch sees one, else Apple's MPS (Metal) when torch has it, else the CPU.

Precision (``ModelSpec.precision``)
    ``float32``   the default: every product at full float32 precision (parity with the official stack).
    ``bfloat16``  matrix products (linear layers, attention) in bfloat16 with float32 accumulation; the
                  residual stream, LayerNorm, softmax, the ALiBi attention bias (on the CPU), the patch
                  embedding and the group merge stay in float32; outputs are float32.
    ``float16``   the same with float16, on a GPU only (a CPU has no fast float16 products: refused).
    ``auto``      the user's opt-in to a reduced precision where the hardware runs it natively: bfloat16 on
                  a CPU with native bfloat16 products (AVX512-BF16 or AMX, read from /proc/cpuinfo) and
                  float32 on any other CPU; bfloat16 on a CUDA GPU that supports it, else float16; float16
                  on MPS. The default stays float32, so reduced precision is never chosen unless asked for.
"""
from __future__ import annotations

import os
import threading
from typing import Callable, Optional, Tuple

import torch
import torch.nn.functional as F

from .errors import ThorBackendError, ThorConfigError
from .specs import DEVICES, PRECISIONS

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}

#: Tiles per batch when the batch size is left at auto and the device gives no better guide.
DEFAULT_BATCH_SIZE = 4
#: Largest automatic batch on a GPU.
MAX_AUTO_BATCH = 64

# --------------------------------------------------------------------------------------------
# Devices
# --------------------------------------------------------------------------------------------


def mps_available() -> bool:
    """Apple's Metal backend is built into this torch and usable on this machine."""
    mps = getattr(torch.backends, "mps", None)
    try:
        return bool(mps is not None and mps.is_available())
    except Exception:
        return False


def cuda_available() -> bool:
    try:
        return bool(torch.cuda.is_available())
    except Exception:
        return False


def resolve_device(device: str = "auto", cuda: Callable[[], bool] = cuda_available,
                   mps: Callable[[], bool] = mps_available) -> str:
    """``auto`` → ``cuda`` when torch sees a GPU, else ``mps`` (Apple Silicon), else ``cpu``; an explicit
    ``cuda`` or ``mps`` that torch cannot use is an error. ``cuda`` and ``mps`` are the availability
    checks (replaceable in tests)."""
    d = str(device if device is not None else "auto").strip().lower()
    if d == "auto":
        if cuda():
            return "cuda"
        return "mps" if mps() else "cpu"
    if d == "cpu":
        return "cpu"
    if d == "cuda" or d.startswith("cuda:"):
        if not cuda():
            raise ThorBackendError(
                f"device = {d} was asked for but this PyTorch ({torch.__version__}) sees no CUDA GPU; "
                "use device = cpu or auto")
        return d
    if d == "mps":
        if not mps():
            raise ThorBackendError(
                f"device = mps was asked for but this PyTorch ({torch.__version__}) cannot use Apple's Metal "
                "(MPS) backend: it needs an Apple Silicon Mac, macOS 12.3 or later and a PyTorch built with "
                "MPS; use device = cpu or auto")
        return "mps"
    raise ThorConfigError(f"device must be one of {', '.join(DEVICES)}, got {device!r}")


def device_kind(device: str) -> str:
    """``cpu``, ``cuda`` or ``mps`` for a resolved device string (``cuda:1`` → ``cuda``)."""
    return str(device).split(":", 1)[0]


# --------------------------------------------------------------------------------------------
# CPU capabilities
# --------------------------------------------------------------------------------------------

_CPU_BF16: Optional[Tuple[bool, str]] = None


def _read_cpuinfo() -> str:
    try:
        with open("/proc/cpuinfo", "r", encoding="utf-8", errors="replace") as fh:
            return fh.read(1 << 20)
    except OSError:
        return ""


def cpu_bf16_native(cpuinfo: Optional[str] = None) -> Tuple[bool, str]:
    """(native, what): whether this x86 CPU multiplies bfloat16 natively (AMX-BF16 or AVX512-BF16),
    read from the ``flags`` of ``/proc/cpuinfo`` (``cpuinfo``: that text, for tests). Other CPUs and
    systems without /proc/cpuinfo count as not native: auto precision then keeps float32."""
    global _CPU_BF16
    if cpuinfo is None and _CPU_BF16 is not None:
        return _CPU_BF16
    text = _read_cpuinfo() if cpuinfo is None else cpuinfo
    flags = set()
    for line in text.splitlines():
        if line.lower().startswith("flags"):
            flags.update(line.split(":", 1)[-1].split())
            break
    if "amx_bf16" in flags:
        found = (True, "AMX-BF16")
    elif "avx512_bf16" in flags:
        found = (True, "AVX512-BF16")
    elif not text:
        found = (False, "CPU features unknown (no /proc/cpuinfo)")
    else:
        found = (False, "no AVX512-BF16 or AMX")
    if cpuinfo is None:
        _CPU_BF16 = found
    return found


# --------------------------------------------------------------------------------------------
# Precision
# --------------------------------------------------------------------------------------------


def resolve_precision(requested: str, device: str, cpu_bf16: Optional[Tuple[bool, str]] = None,
                      cuda_bf16: Optional[Callable[[], bool]] = None) -> Tuple[str, str]:
    """(precision, why) for a requested precision on a resolved device; an impossible request is a
    :class:`ThorConfigError` that says what to choose instead."""
    p = str(requested if requested is not None else "float32").strip().lower()
    if p not in PRECISIONS:
        raise ThorConfigError(f"precision must be one of {', '.join(PRECISIONS)}, got {requested!r}")
    kind = device_kind(device)
    if kind == "cpu":
        native, what = cpu_bf16 if cpu_bf16 is not None else cpu_bf16_native()
    if p == "float32":
        return "float32", "float32 (the default; exact)"
    if p == "float16":
        if kind == "cpu":
            raise ThorConfigError(
                "precision float16 runs on a GPU only (CUDA or Apple MPS): CPUs have no fast float16 matrix "
                "products. On this CPU use bfloat16 (fast on CPUs with AVX512-BF16 or AMX) or float32.")
        return "float16", "float16 (asked for)"
    if p == "bfloat16":
        if kind == "cpu":
            if native:
                return "bfloat16", f"bfloat16 (asked for; this CPU has {what})"
            return "bfloat16", (f"bfloat16 (asked for; this CPU has {what}, so bfloat16 products are emulated "
                                "and likely slower than float32)")
        if kind == "cuda" and not _cuda_bf16(cuda_bf16):
            raise ThorConfigError("precision bfloat16 needs a GPU that supports it (NVIDIA Ampere or newer); "
                                  "use float16 on this GPU")
        return "bfloat16", "bfloat16 (asked for)"
    # auto
    if kind == "cpu":
        if native:
            return "bfloat16", f"bfloat16 (auto: this CPU has {what})"
        return "float32", f"float32 (auto: this CPU has {what})"
    if kind == "cuda":
        if _cuda_bf16(cuda_bf16):
            return "bfloat16", "bfloat16 (auto: the GPU supports it)"
        return "float16", "float16 (auto: the GPU has no bfloat16)"
    return "float16", "float16 (auto, Apple MPS)"


def _cuda_bf16(check: Optional[Callable[[], bool]]) -> bool:
    if check is not None:
        return bool(check())
    try:
        return bool(torch.cuda.is_bf16_supported())
    except Exception:
        return False


# --------------------------------------------------------------------------------------------
# Batch size
# --------------------------------------------------------------------------------------------


def tile_bytes(num_tokens: int, embed_dim: int, image_size: int, precision: str = "float32") -> int:
    """A generous estimate of the device memory one tile takes during a forward pass: input bands and
    their resized copies, patches, and per block the live activations (residual stream, normalised
    copy, qkv, the MLP's hidden layer at 4·D), with the attention scores of one head as margin."""
    elem = 4 if precision == "float32" else 2
    act = num_tokens * embed_dim * (4 + 4 + elem * (1 + 3 + 4 + 4 + 1))
    scores = num_tokens * num_tokens * 4 * 2
    inputs = 10 * image_size * image_size * 4 * 3
    return int(act + scores + inputs)


def auto_batch_size(device: str, num_tokens: int, embed_dim: int, image_size: int, precision: str = "float32",
                    free_bytes: Optional[int] = None, fraction: float = 0.5) -> Tuple[int, str]:
    """(batch size, why) for a batch size left at auto: on a CUDA GPU, as many tiles as fit in
    ``fraction`` of its free memory (``free_bytes``: measured with ``torch.cuda.mem_get_info`` unless
    given), from 1 to :data:`MAX_AUTO_BATCH`; elsewhere :data:`DEFAULT_BATCH_SIZE`."""
    if device_kind(device) != "cuda":
        return DEFAULT_BATCH_SIZE, f"{DEFAULT_BATCH_SIZE} (auto, {device_kind(device)})"
    if free_bytes is None:
        try:
            free_bytes, _ = torch.cuda.mem_get_info(torch.device(device))
        except Exception as exc:
            return DEFAULT_BATCH_SIZE, f"{DEFAULT_BATCH_SIZE} (auto; free GPU memory unknown: {exc})"
    per = tile_bytes(num_tokens, embed_dim, image_size, precision)
    n = int(max(0, free_bytes) * fraction // per)
    n = max(1, min(MAX_AUTO_BATCH, n))
    return n, f"{n} (auto, from {free_bytes / 2**30:.1f} GiB free GPU memory, ~{per / 2**20:.0f} MiB per tile)"


# --------------------------------------------------------------------------------------------
# Fast linear layers in bfloat16 on the CPU (oneDNN with weights packed once)
# --------------------------------------------------------------------------------------------

_ONEDNN_LOCK = threading.Lock()
_ONEDNN_OK: Optional[Tuple[bool, str]] = None


def _onednn_ops():
    mk = torch.ops.mkldnn
    return mk._reorder_linear_weight, mk._linear_pointwise


def onednn_packed_linear_ok() -> Tuple[bool, str]:
    """Whether torch's oneDNN linear with pre-packed bfloat16 weights works here and agrees with
    ``F.linear`` (checked once per process on a small case; any failure means the plain path)."""
    global _ONEDNN_OK
    with _ONEDNN_LOCK:
        if _ONEDNN_OK is not None:
            return _ONEDNN_OK
        try:
            if not torch.backends.mkldnn.is_available():
                raise RuntimeError("oneDNN not available in this torch")
            reorder, linear = _onednn_ops()
            g = torch.Generator().manual_seed(0)
            x = torch.randn(2, 37, 64, generator=g).to(torch.bfloat16)
            w = (torch.randn(96, 64, generator=g) / 8).to(torch.bfloat16)
            b = torch.randn(96, generator=g).to(torch.bfloat16)
            ref = F.linear(x.float(), w.float(), b.float())
            packed = reorder(w, None)
            out = linear(x, packed, b, "none", [], "")
            out_g = linear(x, packed, b, "gelu", [], "none")
            tol = 0.02 * float(ref.abs().max()) + 1e-2
            if out.dtype != torch.bfloat16 or tuple(out.shape) != (2, 37, 96):
                raise RuntimeError(f"unexpected output {out.dtype} {tuple(out.shape)}")
            err = float((out.float() - ref).abs().max())
            err_g = float((out_g.float() - F.gelu(ref)).abs().max())
            if not (err <= tol and err_g <= tol):
                raise RuntimeError(f"disagrees with F.linear (max abs {err:.3g} / {err_g:.3g})")
            _ONEDNN_OK = (True, "oneDNN bfloat16 linear with packed weights")
        except Exception as exc:  # private ops absent in this torch, or broken: the plain path
            _ONEDNN_OK = (False, f"plain bfloat16 linear ({type(exc).__name__}: {str(exc)[:160]})")
        return _ONEDNN_OK


class Linear:
    """A linear layer's weights cast once to a reduced precision (and, for bfloat16 on the CPU, packed
    once for oneDNN), called as ``lin(x)`` or ``lin(x, gelu=True)`` (the exact GELU, fused when packed)."""

    __slots__ = ("weight", "bias", "packed")

    def __init__(self, layer: torch.nn.Linear, dtype: torch.dtype, pack: bool):
        w = layer.weight.detach().to(dtype)
        self.bias = layer.bias.detach().to(dtype) if layer.bias is not None else None
        self.packed = False
        if pack:
            reorder, _ = _onednn_ops()
            w = reorder(w.contiguous(), None)
            self.packed = True
        self.weight = w

    def __call__(self, x: torch.Tensor, gelu: bool = False) -> torch.Tensor:
        if self.packed:
            _, linear = _onednn_ops()
            return linear(x, self.weight, self.bias, "gelu" if gelu else "none", [], "none" if gelu else "")
        y = F.linear(x, self.weight, self.bias)
        return F.gelu(y) if gelu else y


def mps_op_error(exc: BaseException) -> Optional[ThorBackendError]:
    """A clear error for an operation this torch lacks on Apple MPS (None when ``exc`` is something else)."""
    text = str(exc)
    if "MPS" not in text and "mps" not in text:
        return None
    if os.environ.get("PYTORCH_ENABLE_MPS_FALLBACK", "") not in ("", "0"):
        return None
    return ThorBackendError(
        "an operation THOR needs is not implemented on Apple MPS in this PyTorch "
        f"({torch.__version__}): {text.splitlines()[0][:300]}. Update PyTorch, use device = cpu, or start "
        "QGIS with the environment variable PYTORCH_ENABLE_MPS_FALLBACK=1 so that such operations run on "
        "the CPU (slower).")
