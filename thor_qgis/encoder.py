"""The THOR v1 encoder, inference only, in plain torch.

State-dict compatible with the official checkpoints once their ``encoder.`` prefix is stripped
(see :mod:`.weights`). The forward pass follows the reference implementation step by step:

1. every input band is resized on its own (bilinear, ``align_corners=False``, no antialias) to
   ``ground_cover / GSD`` pixels;
2. per-band patch embedding with the band's own 16×16 kernel (FlexiViT pseudo-inverse resize of
   the kernel when the patch size is not 16);
3. per spectral group: the mean of the members' embeddings, stacked in the group's definition
   order, plus one constant vector (patch-size sincos ‖ ``band_embed.group<k>``);
4. groups concatenated in group order; one 2-D ALiBi bias shared by all blocks;
5. pre-norm ViT blocks; the output is the last block's tokens *before* the final ``norm``.

In float32 (the default) every matrix product runs at full float32 precision whatever
``torch.set_float32_matmul_precision`` says (see :func:`full_fp32_precision`). In a reduced precision
(bfloat16, float16: see :mod:`.accel`) the blocks' linear layers and attention run in that precision from
weights cast once, while the residual stream, LayerNorm, softmax, the patch embedding and the group merge
stay in float32 (and, on the CPU, the ALiBi bias); outputs are float32.
"""
from __future__ import annotations

import contextlib
import math
import threading
from dataclasses import dataclass
from typing import Dict, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from . import accel
from .errors import ThorConfigError, ThorInputError
from .specs import MODEL_VARIANTS, S2_BANDS, S2_GSD_M, S2_THOR_NAMES, ModelVariant

# --------------------------------------------------------------------------------------------
# Band names and spectral groups
# --------------------------------------------------------------------------------------------

#: The ten spectral groups, by patch-embedding (checkpoint) band name, in definition order.
#: The order of the groups is their index everywhere (``band_embed.group<k>``, token order);
#: the order of the members is the order of the subset mean.
THOR_GROUPS: Tuple[Tuple[str, ...], ...] = (
    ("S2:Red", "S2:Green", "S2:Blue", "S2:NIR"),
    ("S2:RE1", "S2:RE2", "S2:RE3", "S2:RE4", "S2:SWIR1", "S2:SWIR2"),
    ("S2:CoastAerosal", "S2:WaterVapor"),
    ("S1:VH", "S1:VV"),
    ("S1:HV", "S1:HH"),
    ("S3:Oa01_reflectance", "S3:Oa02_reflectance", "S3:Oa03_reflectance", "S3:Oa04_reflectance",
     "S3:Oa05_reflectance", "S3:Oa06_reflectance", "S3:Oa07_reflectance"),
    ("S3:Oa08_reflectance", "S3:Oa09_reflectance", "S3:Oa10_reflectance", "S3:Oa11_reflectance",
     "S3:Oa12_reflectance", "S3:Oa13_reflectance", "S3:Oa14_reflectance"),
    ("S3:Oa15_reflectance", "S3:Oa16_reflectance", "S3:Oa17_reflectance", "S3:Oa18_reflectance",
     "S3:Oa19_reflectance", "S3:Oa20_reflectance", "S3:Oa21_reflectance"),
    ("S3:S1_reflectance_an", "S3:S2_reflectance_an", "S3:S3_reflectance_an",
     "S3:S4_reflectance_an", "S3:S5_reflectance_an", "S3:S6_reflectance_an"),
    ("S3:S7_BT_in", "S3:S8_BT_in", "S3:S9_BT_in"),
)
#: Ground sampling distance (m) of each group, as the reference model defines it.
THOR_GROUP_GSD: Tuple[int, ...] = (10, 20, 60, 10, 10, 240, 240, 240, 480, 960)
#: Human-readable group labels (used in metadata: "g0 S2 10m (Red, Green, Blue, NIR)").
THOR_GROUP_LABELS: Tuple[str, ...] = (
    "S2 10m (Red, Green, Blue, NIR)",
    "S2 20m (RE1, RE2, RE3, RE4, SWIR1, SWIR2)",
    "S2 60m (CoastAerosol, WaterVapor)",
    "S1 (VH, VV)",
    "S1 (HV, HH)",
    "S3 OLCI (Oa01-Oa07)",
    "S3 OLCI (Oa08-Oa14)",
    "S3 OLCI (Oa15-Oa21)",
    "S3 SLSTR (S1-S6 reflectance)",
    "S3 SLSTR (S7-S9 brightness temperature)",
)
#: All 46 patch-embedding band names, in group order. Every one has a kernel in a checkpoint.
THOR_BAND_NAMES: Tuple[str, ...] = tuple(b for g in THOR_GROUPS for b in g)

REFERENCE_PATCH_SIZE = 16  # the kernels stored in the checkpoints are 16×16
FLEXIVIT_REF_PATCH_SIZE = 4  # reference patch size of the patch-size embedding
MIN_GSD_M = 10  # smallest GSD among all THOR channels
LAYERNORM_EPS = 1e-6
MLP_RATIO = 4


def group_name(index: int) -> str:
    return f"g{index} {THOR_GROUP_LABELS[index]}"


# --------------------------------------------------------------------------------------------
# Precision: full float32 matrix products regardless of the process-wide setting
# --------------------------------------------------------------------------------------------

#: Held while an encoder runs and while engine code changes torch's process-wide precision flags.
PRECISION_LOCK = threading.RLock()


def _new_api_targets() -> List[Tuple[str, object]]:
    """(backend, op-level object) of torch's newer fp32 precision API (torch >= 2.9), when present."""
    targets = []
    for backend in ("cuda", "mkldnn"):
        try:
            obj = getattr(getattr(torch.backends, backend), "matmul")
            obj.fp32_precision  # noqa: B018  (probe)
        except Exception:
            continue
        targets.append((backend, obj))
    return targets


def _effective_new_api(obj: object, backend: str) -> str:
    value = getattr(obj, "fp32_precision", "none")
    if value != "none":
        return value
    parent = {"cuda": getattr(torch.backends, "cudnn", None), "mkldnn": getattr(torch.backends, "mkldnn", None)}
    pv = getattr(parent.get(backend), "fp32_precision", "none") if parent.get(backend) is not None else "none"
    if pv != "none":
        return pv
    gv = getattr(torch.backends, "fp32_precision", "none")
    return "ieee" if gv == "none" else gv


@contextlib.contextmanager
def full_fp32_precision() -> Iterator[None]:
    """Run float32 matrix products at full precision, then restore the caller's settings.

    Importing terratorch, for one, calls ``torch.set_float32_matmul_precision("medium")``,
    which makes CPU (oneDNN, bf16-capable CPUs) and CUDA (TF32) matmuls, and the fused
    attention kernels built on them, lose precision. Torch keeps that setting process-wide,
    so this context switches it to full precision for the duration and puts back exactly
    what was there. It holds :data:`PRECISION_LOCK` throughout, so engine threads never
    interleave their changes; code outside the engine that changes the setting *during* a
    forward pass is not protected against.
    """
    with PRECISION_LOCK:
        legacy: Optional[str]
        try:
            legacy = torch.get_float32_matmul_precision()
        except Exception:  # torch >= 2.9 refuses when the legacy and new APIs were mixed
            legacy = None
        targets = [t for _, t in _new_api_targets()]
        if targets:
            effective = [_effective_new_api(t, b) for b, t in _new_api_targets()]
            already = all(v == "ieee" for v in effective) and legacy in (None, "highest")
        else:
            already = legacy == "highest"
        if already:
            yield
            return
        if legacy is not None:
            torch.set_float32_matmul_precision("highest")
            try:
                yield
            finally:
                torch.set_float32_matmul_precision(legacy)
        else:
            saved = [t.fp32_precision for t in targets]
            for t in targets:
                t.fp32_precision = "ieee"
            try:
                yield
            finally:
                for t, v in zip(targets, saved):
                    t.fp32_precision = v


def precision_snapshot() -> tuple:
    """The process-wide float32 matmul precision settings, for :func:`precision_restore`."""
    try:
        legacy = torch.get_float32_matmul_precision()
    except Exception:
        legacy = None
    return legacy, [(t, t.fp32_precision) for _, t in _new_api_targets()]


def precision_restore(snapshot: tuple) -> None:
    """Put back settings captured by :func:`precision_snapshot` (e.g. after importing a package
    that changes them as an import side effect, as terratorch does)."""
    legacy, values = snapshot
    with PRECISION_LOCK:
        if legacy is not None:
            try:
                current = torch.get_float32_matmul_precision()
            except Exception:
                current = None
            if current != legacy:
                torch.set_float32_matmul_precision(legacy)
        else:
            for target, value in values:
                if target.fp32_precision != value:
                    target.fp32_precision = value


# --------------------------------------------------------------------------------------------
# Fixed embeddings
# --------------------------------------------------------------------------------------------


def sincos_1d(dim: int, positions: Union[Sequence[float], np.ndarray]) -> np.ndarray:
    """1-D sincos embedding, float64 [len(positions), dim]: [sin(pos·ω_j) ‖ cos(pos·ω_j)],
    ω_j = 1 / 10000^(j / (dim/2)), j = 0 .. dim/2 − 1."""
    if dim % 2:
        raise ValueError(f"sincos embedding dimension must be even, got {dim}")
    omega = np.arange(dim // 2, dtype=np.float64) / (dim / 2.0)
    omega = 1.0 / 10000.0 ** omega
    out = np.outer(np.asarray(positions, dtype=np.float64).reshape(-1), omega)
    return np.concatenate([np.sin(out), np.cos(out)], axis=1)


def patch_size_position(patch_size: int, gsd: int) -> float:
    """Position fed to the patch-size sincos: p·GSD / (ref patch size · min GSD) = p·GSD / 40."""
    return patch_size * gsd / float(FLEXIVIT_REF_PATCH_SIZE * MIN_GSD_M)


def alibi_slopes(num_heads: int) -> List[float]:
    """Standard ALiBi slopes (tiny, 3 heads: 0.0625, 0.00390625, 0.25)."""

    def power_of_two(n: int) -> List[float]:
        start = 2.0 ** (-8.0 / n)
        return [start ** (i + 1) for i in range(n)]

    if num_heads <= 0:
        raise ValueError("num_heads must be positive")
    if math.log2(num_heads).is_integer():
        return power_of_two(num_heads)
    closest = 2 ** int(math.floor(math.log2(num_heads)))
    return power_of_two(closest) + alibi_slopes(2 * closest)[0::2][: num_heads - closest]


# --------------------------------------------------------------------------------------------
# FlexiViT pseudo-inverse kernel resize
# --------------------------------------------------------------------------------------------


def pi_resize_matrix(new_size: int, old_size: int = REFERENCE_PATCH_SIZE) -> torch.Tensor:
    """The pseudo-inverse resize matrix P (float64, [new², old²]).

    M ([old², new²]) holds in row i the basis kernel e_i (old×old) resized to new×new with
    bicubic, antialiased interpolation; P = pinv(M); a resized kernel is P · vec(W).
    """
    n_old = old_size * old_size
    basis = torch.eye(n_old, dtype=torch.float64).reshape(n_old, 1, old_size, old_size)
    resized = F.interpolate(basis, size=(new_size, new_size), mode="bicubic", antialias=True,
                            align_corners=False)
    m = resized.reshape(n_old, new_size * new_size)
    return torch.linalg.pinv(m)


def pi_resize_kernel(weight: torch.Tensor, new_size: int,
                     pinv: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Resize conv kernels [D, C, k, k] to [D, C, new, new] (computed in float64, cast back)."""
    d, c, kh, kw = weight.shape
    if kh != kw:
        raise ValueError("patch kernels must be square")
    if new_size == kh:
        return weight
    if pinv is None:
        pinv = pi_resize_matrix(new_size, kh)
    w64 = weight.detach().to(torch.float64).reshape(d * c, kh * kw)
    out = w64 @ pinv.to(w64.device).T
    return out.reshape(d, c, new_size, new_size).to(weight.dtype)


# --------------------------------------------------------------------------------------------
# Token layout
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class GroupLayout:
    index: int  # group index 0..9
    bands: Tuple[str, ...]  # members present, in definition order
    input_indices: Tuple[int, ...]  # their channel indices in the input
    gsd: int
    pixels: int  # side of the band after resizing to ground_cover / GSD
    patch_size: int
    side: int  # tokens per side

    @property
    def tokens(self) -> int:
        return self.side * self.side

    @property
    def name(self) -> str:
        return group_name(self.index)


@dataclass(frozen=True)
class TokenLayout:
    groups: Tuple[GroupLayout, ...]
    ground_cover_m: int
    patch_size: int

    @property
    def num_tokens(self) -> int:
        return sum(g.tokens for g in self.groups)

    @property
    def sides(self) -> Tuple[int, ...]:
        return tuple(g.side for g in self.groups)

    @property
    def max_side(self) -> int:
        return max(self.sides)

    @property
    def tokens_per_group(self) -> Tuple[int, ...]:
        return tuple(g.tokens for g in self.groups)

    @property
    def group_names(self) -> Tuple[str, ...]:
        return tuple(g.name for g in self.groups)


def ground_cover_m(image_size: int, scale_m: float = 10.0) -> int:
    return int(round(float(scale_m) * int(image_size)))


def layout_for_bands(band_names: Sequence[str], band_gsd: Sequence[int], image_size: int,
                     patch_size: int, scale_m: float = 10.0) -> TokenLayout:
    """The token layout for input bands (THOR names, with their GSD) at a given size and scale."""
    if len(band_names) != len(band_gsd):
        raise ValueError("band_names and band_gsd differ in length")
    position = {b: i for i, b in enumerate(band_names)}
    unknown = [b for b in band_names if b not in THOR_BAND_NAMES]
    if unknown:
        raise ThorInputError(f"unknown THOR band name(s): {', '.join(unknown)}")
    p = int(patch_size)
    gc = ground_cover_m(image_size, scale_m)
    groups = []
    for gi, members in enumerate(THOR_GROUPS):
        present = tuple(b for b in members if b in position)
        if not present:
            continue
        gsd = int(band_gsd[position[present[0]]])
        for b in present:
            if int(band_gsd[position[b]]) != gsd:
                raise ThorInputError(f"bands of group {group_name(gi)} must share one GSD")
        if gc % (p * gsd):
            raise ThorConfigError(
                f"patch size {p} does not tile the {gsd} m bands: the ground cover "
                f"({image_size} px × {float(scale_m):g} m = {gc} m) must be a multiple of "
                f"{p} × {gsd} m = {p * gsd} m. Pick an image size, scale or patch size that fits "
                f"(at 10 m scale: image size a multiple of {2 * p}).")
        pixels = int(gc / gsd)
        groups.append(GroupLayout(gi, present, tuple(position[b] for b in present), gsd, pixels, p,
                                  gc // (p * gsd)))
    if not groups:
        raise ThorInputError("no THOR band among the inputs")
    return TokenLayout(tuple(groups), gc, p)


#: THOR names and GSD of the Sentinel-2 SR input bands, in input order (B2..B12).
S2_INPUT_THOR_NAMES: Tuple[str, ...] = tuple(S2_THOR_NAMES[b] for b in S2_BANDS)
S2_INPUT_GSD: Tuple[int, ...] = tuple(int(S2_GSD_M[b]) for b in S2_BANDS)


def s2_layout(image_size: int, patch_size: int, scale_m: float = 10.0) -> TokenLayout:
    """Token layout of the 10-band Sentinel-2 input: g0 (10 m) then g1 (20 m)."""
    return layout_for_bands(S2_INPUT_THOR_NAMES, S2_INPUT_GSD, image_size, patch_size, scale_m)


def alibi_bias(layout: TokenLayout, slopes: Union[Sequence[float], torch.Tensor]) -> torch.Tensor:
    """2-D ALiBi bias [H, N, N] (float32, computed in float64): −slope_h · euclidean distance
    between token centres in metres, divided by the largest patch footprint p·GSD."""
    pts = []
    for g in layout.groups:
        line = (np.arange(g.side, dtype=np.float64) * g.patch_size + g.patch_size / 2.0) * g.gsd
        rows, cols = np.meshgrid(line, line, indexing="ij")
        pts.append(np.stack([rows.reshape(-1), cols.reshape(-1)], axis=1))
    p = np.concatenate(pts, axis=0) / float(max(g.patch_size * g.gsd for g in layout.groups))
    diff = p[:, None, :] - p[None, :, :]
    dist = np.sqrt((diff * diff).sum(-1))
    s = (slopes.detach().cpu().to(torch.float64).numpy() if torch.is_tensor(slopes)
         else np.asarray(slopes, dtype=np.float64))
    bias = -(s[:, None, None] * dist[None, :, :])
    return torch.from_numpy(bias.astype(np.float32))


# --------------------------------------------------------------------------------------------
# Modules
# --------------------------------------------------------------------------------------------


class _Attention(nn.Module):
    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, dim * 3, bias=True)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, c // self.num_heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
        return self.proj(out.transpose(1, 2).reshape(b, n, c))


class _Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class _Block(nn.Module):
    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=LAYERNORM_EPS)
        self.attn = _Attention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim, eps=LAYERNORM_EPS)
        self.mlp = _Mlp(dim, dim * MLP_RATIO)

    def forward(self, x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x), bias)
        return x + self.mlp(self.norm2(x))


class _ReducedBlock:
    """One block's linear layers in a reduced precision (see :func:`ThorEncoder.reduced_weights`).

    The residual stream ``h`` stays float32: each LayerNorm runs in float32 and its output is cast to
    the compute dtype; qkv, the attention, the projection and the MLP run in that dtype (products
    accumulate in float32 in every kernel used); their outputs are added to ``h`` in float32.
    """

    __slots__ = ("qkv", "proj", "fc1", "fc2", "dtype")

    def __init__(self, blk: "_Block", dtype: torch.dtype, pack: bool):
        self.dtype = dtype
        self.qkv = accel.Linear(blk.attn.qkv, dtype, pack)
        self.proj = accel.Linear(blk.attn.proj, dtype, pack)
        self.fc1 = accel.Linear(blk.mlp.fc1, dtype, pack)
        self.fc2 = accel.Linear(blk.mlp.fc2, dtype, pack)

    def __call__(self, h: torch.Tensor, blk: "_Block", mask: torch.Tensor, num_heads: int,
                 in_place: bool = True) -> torch.Tensor:
        b, n, c = h.shape
        n1, n2 = blk.norm1, blk.norm2
        y = F.layer_norm(h, (c,), n1.weight, n1.bias, n1.eps).to(self.dtype)
        q, k, v = self.qkv(y).view(b, n, 3, num_heads, c // num_heads).permute(2, 0, 3, 1, 4).unbind(0)
        o = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        a = self.proj(o.transpose(1, 2).reshape(b, n, c))
        h = h.add_(a) if in_place else h + a
        y = F.layer_norm(h, (c,), n2.weight, n2.bias, n2.eps).to(self.dtype)
        m = self.fc2(self.fc1(y, gelu=True))
        return h.add_(m) if in_place else h + m


class _IndPatchEmbed(nn.Module):
    """Holds ``patch_embed.<band>`` 16×16 conv kernels for all 46 bands (checkpoint layout)."""

    def __init__(self, dim: int):
        super().__init__()
        self.patch_embed = nn.ModuleDict({
            b: nn.Conv2d(1, dim, kernel_size=REFERENCE_PATCH_SIZE, stride=REFERENCE_PATCH_SIZE)
            for b in THOR_BAND_NAMES
        })


class ThorEncoder(nn.Module):
    """THOR v1 encoder (tiny / small / base / large), inference only.

    ``forward(x, layout)`` takes bands already normalised, [B, C, H, W], with the channels
    that ``layout`` indexes (for the S2 input: B2..B12 at the image size), and returns the last
    block's tokens [B, N, D] before the final norm.
    """

    def __init__(self, variant: Union[ModelVariant, str]):
        super().__init__()
        if isinstance(variant, str):
            if variant not in MODEL_VARIANTS:
                raise ThorConfigError(
                    f"model key must be one of {', '.join(MODEL_VARIANTS)}, got {variant!r}")
            variant = MODEL_VARIANTS[variant]
        self.variant = variant
        d = variant.embed_dim
        if variant.patch_size_embed_dim + variant.group_embed_dim != d:
            raise ThorConfigError(f"inconsistent dims for {variant.key}")
        self.embed_dim = d
        self.num_heads = variant.num_heads
        self.register_buffer("encoder_slopes", torch.tensor(alibi_slopes(variant.num_heads),
                                                            dtype=torch.float32))
        self.ind_patch_embed = _IndPatchEmbed(d)
        band_sincos = sincos_1d(variant.group_embed_dim, np.arange(len(THOR_GROUPS)))
        self.band_embed = nn.ParameterDict({
            f"group{i}": nn.Parameter(torch.from_numpy(band_sincos[i]).float(), requires_grad=False)
            for i in range(len(THOR_GROUPS))
        })
        self.blocks = nn.ModuleList([_Block(d, variant.num_heads) for _ in range(variant.depth)])
        self.norm = nn.LayerNorm(d, eps=LAYERNORM_EPS)
        self.requires_grad_(False)
        self.eval()
        self._cache_lock = threading.RLock()
        self._kernel_cache: Dict[tuple, Tuple[torch.Tensor, torch.Tensor]] = {}
        self._pinv_cache: Dict[int, torch.Tensor] = {}
        self._bias_cache: Dict[tuple, torch.Tensor] = {}
        self._reduced_cache: Dict[tuple, list] = {}
        self._fp32_mask_ok = True
        self._state_version = 0

    # ---- initialisation / caches --------------------------------------------------------

    def init_random(self, seed: int = 0) -> "ThorEncoder":
        """Deterministic random init (xavier linear, zero biases, unit LayerNorm), like the
        reference's init. Does not touch the global RNG."""
        gen = torch.Generator().manual_seed(int(seed))
        with torch.no_grad():
            for m in self.modules():
                if isinstance(m, nn.Linear):
                    fan_out, fan_in = m.weight.shape
                    a = math.sqrt(6.0 / (fan_in + fan_out))
                    m.weight.copy_(torch.rand(m.weight.shape, generator=gen) * 2 * a - a)
                    m.bias.zero_()
                elif isinstance(m, nn.Conv2d):
                    fan_in = m.weight[0].numel()
                    a = 1.0 / math.sqrt(fan_in)
                    m.weight.copy_(torch.rand(m.weight.shape, generator=gen) * 2 * a - a)
                    m.bias.copy_(torch.rand(m.bias.shape, generator=gen) * 2 * a - a)
                elif isinstance(m, nn.LayerNorm):
                    m.weight.fill_(1.0)
                    m.bias.zero_()
        self.clear_caches()
        return self

    def clear_caches(self) -> None:
        with self._cache_lock:
            self._kernel_cache.clear()
            self._bias_cache.clear()
            self._reduced_cache.clear()
            self._state_version += 1

    def load_state_dict(self, state_dict, strict: bool = True, **kwargs):  # type: ignore[override]
        result = super().load_state_dict(state_dict, strict=strict, **kwargs)
        self.clear_caches()
        return result

    def _apply(self, fn, *args, **kwargs):  # .to(), .cuda(), .float() ...
        out = super()._apply(fn, *args, **kwargs)
        if hasattr(self, "_kernel_cache"):
            self.clear_caches()
        return out

    def pinv(self, patch_size: int) -> torch.Tensor:
        with self._cache_lock:
            if patch_size not in self._pinv_cache:
                self._pinv_cache[patch_size] = pi_resize_matrix(patch_size, REFERENCE_PATCH_SIZE)
            return self._pinv_cache[patch_size]

    def group_kernels(self, group: GroupLayout) -> Tuple[torch.Tensor, torch.Tensor]:
        """Stacked (and, for p ≠ 16, PI-resized) kernels of a group's present members:
        weights [k, p², D] and biases [k, 1, D], cached per patch size and device."""
        p = group.patch_size
        dev = self.encoder_slopes.device
        key = (group.bands, p, str(dev))
        with self._cache_lock:
            hit = self._kernel_cache.get(key)
            if hit is not None:
                return hit
            ws, bs = [], []
            for band in group.bands:
                conv = self.ind_patch_embed.patch_embed[band]
                w = conv.weight
                if p != REFERENCE_PATCH_SIZE:  # in float64 on the CPU (MPS has no float64)
                    w = pi_resize_kernel(w.cpu(), p, self.pinv(p)).to(w.device)
                ws.append(w.reshape(self.embed_dim, p * p).T)
                bs.append(conv.bias.reshape(1, self.embed_dim))
            entry = (torch.stack(ws).contiguous(), torch.stack(bs).contiguous())
            self._kernel_cache[key] = entry
            return entry

    def attention_bias(self, layout: TokenLayout) -> torch.Tensor:
        dev = self.encoder_slopes.device
        key = (layout, str(dev))
        with self._cache_lock:
            hit = self._bias_cache.get(key)
            if hit is None:
                hit = alibi_bias(layout, self.encoder_slopes).to(dev).unsqueeze(0)
                self._bias_cache[key] = hit
            return hit

    def aux_embed(self, group: GroupLayout, dtype=torch.float32) -> torch.Tensor:
        """The constant vector added to every token of a group: patch-size sincos ‖ band_embed."""
        pos = patch_size_position(group.patch_size, group.gsd)
        sc = torch.from_numpy(sincos_1d(self.variant.patch_size_embed_dim, [pos])[0])
        ge = self.band_embed[f"group{group.index}"]
        return torch.cat([sc.to(dtype).to(ge.device), ge.to(dtype)])  # cast on the CPU: MPS has no float64

    # ---- forward ----------------------------------------------------------------------------

    def embed(self, x: torch.Tensor, layout: TokenLayout,
              intermediates: Optional[Dict[str, torch.Tensor]] = None) -> torch.Tensor:
        """Tokens entering the first block, [B, N, D]."""
        b = x.shape[0]
        d = self.embed_dim
        tokens = []
        for g in layout.groups:
            xb = x[:, list(g.input_indices)]
            if xb.shape[-2:] != (g.pixels, g.pixels):
                xb = F.interpolate(xb, size=(g.pixels, g.pixels), mode="bilinear", align_corners=False,
                                   antialias=False)
            if intermediates is not None:
                intermediates[f"x_pre_g{g.index}"] = xb
            k, n, p = len(g.bands), g.side, g.patch_size
            patches = (xb.reshape(b, k, n, p, n, p).permute(1, 0, 2, 4, 3, 5)
                       .reshape(k, b * n * n, p * p))
            w, bias = self.group_kernels(g)
            emb = torch.baddbmm(bias.to(x.dtype), patches, w.to(x.dtype))  # [k, B·n², D]
            # subset mean over the members, stacked last in definition order
            emb = emb.reshape(k, b, n * n, d).permute(1, 2, 3, 0).contiguous().mean(-1)
            aux = self.aux_embed(g, x.dtype)
            if intermediates is not None:
                intermediates[f"aux_embed_g{g.index}"] = aux
            tokens.append(emb.add_(aux))
        return torch.cat(tokens, dim=1)

    def reduced_weights(self, dtype: torch.dtype) -> List["_ReducedBlock"]:
        """The blocks' linear layers cast once to ``dtype`` (bfloat16 on the CPU: packed for oneDNN
        where torch has it), cached per dtype and device until the weights change."""
        dev = self.encoder_slopes.device
        key = (dtype, str(dev))
        with self._cache_lock:
            hit = self._reduced_cache.get(key)
            if hit is None:
                pack = dev.type == "cpu" and dtype == torch.bfloat16 and accel.onednn_packed_linear_ok()[0]
                hit = [_ReducedBlock(blk, dtype, pack) for blk in self.blocks]
                self._reduced_cache[key] = hit
            return hit

    def reduced_linear_path(self, dtype: torch.dtype) -> str:
        """How the linear layers run in ``dtype`` on this encoder's device (for the run's record)."""
        dev = self.encoder_slopes.device
        if dev.type == "cpu" and dtype == torch.bfloat16:
            return accel.onednn_packed_linear_ok()[1]
        return f"{str(dtype).replace('torch.', '')} linear on {dev.type}"

    def _mask_for(self, bias: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """The ALiBi bias as the attention takes it in a reduced precision: float32 on the CPU (its fused
        kernel adds a float32 mask to float32 scores; measured: half the attention error of a bfloat16
        mask), the compute dtype on a GPU (what the fused GPU kernels accept)."""
        if bias.device.type == "cpu" and self._fp32_mask_ok:
            return bias
        key = ("mask", dtype, bias.data_ptr(), tuple(bias.shape))
        with self._cache_lock:
            hit = self._bias_cache.get(key)
            if hit is None:
                hit = bias.to(dtype)
                self._bias_cache[key] = hit
            return hit

    def forward(self, x: torch.Tensor, layout: TokenLayout, apply_norm: bool = False,
                intermediates: Optional[Dict[str, object]] = None, precision: str = "float32") -> torch.Tensor:
        if x.ndim != 4:
            raise ThorInputError(f"encoder input must be [B, C, H, W], got shape {tuple(x.shape)}")
        if precision not in accel.DTYPES:
            raise ThorConfigError(f"encoder precision must be one of {', '.join(accel.DTYPES)}, got {precision!r}")
        dtype = accel.DTYPES[precision]
        with torch.inference_mode(), full_fp32_precision():
            x = x.to(device=self.encoder_slopes.device, dtype=torch.float32)
            h = self.embed(x, layout, intermediates)
            bias = self.attention_bias(layout)
            if intermediates is not None:
                intermediates["tokens_embed"] = h
                intermediates["alibi"] = bias[0]
                intermediates["tokens_per_layer"] = []
            if dtype == torch.float32:
                for blk in self.blocks:
                    h = blk(h, bias)
                    if intermediates is not None:
                        intermediates["tokens_per_layer"].append(h)
            else:
                reduced = self.reduced_weights(dtype)
                mask = self._mask_for(bias, dtype)
                for blk, rb in zip(self.blocks, reduced):
                    try:
                        h = rb(h, blk, mask, self.num_heads, in_place=intermediates is None)
                    except RuntimeError:
                        if mask.dtype == dtype or mask.device.type != "cpu":
                            raise
                        # an older torch whose attention wants the mask in the query's dtype
                        self._fp32_mask_ok = False
                        mask = self._mask_for(bias, dtype)
                        h = rb(h, blk, mask, self.num_heads, in_place=intermediates is None)
                    if intermediates is not None:
                        intermediates["tokens_per_layer"].append(h)
            if apply_norm:
                h = self.norm(h)
            return h


def build_encoder(model_key: str) -> ThorEncoder:
    return ThorEncoder(model_key)
