"""The DINOv3 ViT, computed as the official model code (facebookresearch/dinov3) computes it.

timm ships a port of this network (``timm.models.eva``, ``vit_*_patch16_dinov3``), but it does
not give the official patch tokens of every checkpoint: it regenerates the RoPE periods in
float32 where the official model uses the periods stored in the checkpoint (bfloat16-rounded in
the released files), it computes RoPE in float32 where networks built for training compute it
in bfloat16 (DINOv3's ``build_model`` leaves ``pos_embed_rope_dtype`` at that default), and it
has no key bias (official networks with ``mask_k_bias=False``, the training default, learn one).
So dsekit builds the network itself, with the official state-dict names, and registers it
with timm as ``dsekit_dinov3_vit`` (:func:`register`), so that it is created, loaded and read
like every other backbone (``forward_intermediates``).

The forward, as the official ``DinoVisionTransformer`` (eval mode):

* patch embedding (convolution), tokens ``[cls + 0·mask_token, storage tokens, patches]``;
* blocks ``x + ls1(attn(norm1(x)))``, ``x + ls2(ffn(norm2(x)))``; attention with the key bias
  masked by ``bias_mask`` (``mask_k_bias``), RoPE on the patch queries and keys only, in the
  RoPE dtype (q and k cast to it and back), then scaled dot-product attention;
* RoPE: coordinates ``(i + 0.5) / H`` and ``(j + 0.5) / W`` (``normalize_coords='separate'``;
  ``'min'`` / ``'max'`` divide by the shorter / longer side) mapped to ``[-1, 1]``, angles
  ``2π · coord / period`` for each axis and period, tiled twice, rotate-half convention;
* the patch tokens after the final norm ``norm`` (with ``untie_cls_and_patch_norms`` the class
  and storage tokens use ``cls_norm``; the patch tokens use ``norm`` either way).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["ARCH", "DINOv3ViT", "register", "rope_periods", "rope_sincos"]

#: the timm name under which :func:`register` makes the network available
ARCH = "dsekit_dinov3_vit"
_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


# --------------------------------------------------------------------------------------------------
# RoPE (pure)
# --------------------------------------------------------------------------------------------------


def rope_periods(
    head_dim: int,
    *,
    base: float | None = 100.0,
    min_period: float | None = None,
    max_period: float | None = None,
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """The ``head_dim // 4`` RoPE periods: geometric from ``min_period`` to ``max_period`` when
    both are given, else ``base ** (2k / (head_dim / 2))`` (computed in ``dtype``, as the official
    module does)."""
    n = head_dim // 4
    if min_period is None or max_period is None:
        if base is None:
            raise ValueError("rope: give base, or both min_period and max_period")
        return base ** (2 * torch.arange(n, dtype=dtype) / (head_dim // 2))
    ratio = max_period / min_period
    return ratio ** torch.linspace(0, 1, n, dtype=dtype) / ratio * max_period


def rope_sincos(rows: int, cols: int, periods: Tensor, *, normalize: str = "separate") -> tuple[Tensor, Tensor]:
    """``(sin, cos)``, each ``(rows·cols, 4·len(periods))``, in ``periods``' dtype, for a
    ``rows × cols`` patch grid in row-major order."""
    device, dtype = periods.device, periods.dtype
    if normalize == "separate":
        h = torch.arange(0.5, rows, device=device, dtype=dtype) / rows
        w = torch.arange(0.5, cols, device=device, dtype=dtype) / cols
    elif normalize in ("min", "max"):
        side = min(rows, cols) if normalize == "min" else max(rows, cols)
        h = torch.arange(0.5, rows, device=device, dtype=dtype) / side
        w = torch.arange(0.5, cols, device=device, dtype=dtype) / side
    else:
        raise ValueError(f"rope: normalize_coords must be 'separate', 'min' or 'max', got {normalize!r}")
    coords = torch.stack(torch.meshgrid(h, w, indexing="ij"), dim=-1).flatten(0, 1)
    coords = 2.0 * coords - 1.0
    angles = (2 * math.pi * coords[:, :, None] / periods[None, None, :]).flatten(1, 2).tile(2)
    return torch.sin(angles), torch.cos(angles)


def _rotate(x: Tensor, sin: Tensor, cos: Tensor) -> Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return x * cos + torch.cat([-x2, x1], dim=-1) * sin


# --------------------------------------------------------------------------------------------------
# Layers
# --------------------------------------------------------------------------------------------------


class _MaskedBiasLinear(nn.Linear):
    """``nn.Linear`` whose bias is multiplied by the buffer ``bias_mask`` (0 on the keys' third)."""

    bias_mask: Tensor

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        mask = torch.ones(self.out_features)
        mask[self.out_features // 3 : 2 * self.out_features // 3] = 0
        self.register_buffer("bias_mask", mask)

    def forward(self, x: Tensor) -> Tensor:
        bias = self.bias * self.bias_mask.to(self.bias.dtype) if self.bias is not None else None
        return F.linear(x, self.weight, bias)


class _LayerScale(nn.Module):
    def __init__(self, dim: int, init: float) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.full((dim,), float(init)))

    def forward(self, x: Tensor) -> Tensor:
        return x * self.gamma


class _RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:
        y = x.float()
        return (y * torch.rsqrt(y.pow(2).mean(-1, keepdim=True) + self.eps)).type_as(x) * self.weight


class _Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int, bias: bool) -> None:
        super().__init__()
        self.fc1, self.act, self.fc2 = nn.Linear(dim, hidden, bias=bias), nn.GELU(), nn.Linear(hidden, dim, bias=bias)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(x)))


class _SwiGLU(nn.Module):
    def __init__(self, dim: int, hidden: int, bias: bool) -> None:
        super().__init__()
        self.w1 = nn.Linear(dim, hidden, bias=bias)
        self.w2 = nn.Linear(dim, hidden, bias=bias)
        self.w3 = nn.Linear(hidden, dim, bias=bias)

    def forward(self, x: Tensor) -> Tensor:
        return self.w3(F.silu(self.w1(x)) * self.w2(x))


class _Attention(nn.Module):
    def __init__(self, dim: int, heads: int, qkv_bias: bool, proj_bias: bool, mask_k_bias: bool) -> None:
        super().__init__()
        self.heads = heads
        linear = _MaskedBiasLinear if mask_k_bias and qkv_bias else nn.Linear
        self.qkv = linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim, bias=proj_bias)

    def forward(self, x: Tensor, rope: tuple[Tensor, Tensor]) -> Tensor:
        B, N, C = x.shape
        q, k, v = (t.transpose(1, 2) for t in self.qkv(x).reshape(B, N, 3, self.heads, C // self.heads).unbind(2))
        sin, cos = rope
        prefix = N - sin.shape[-2]
        dtype = q.dtype
        qr, kr = q.to(sin.dtype), k.to(sin.dtype)
        q = torch.cat([qr[:, :, :prefix], _rotate(qr[:, :, prefix:], sin, cos)], dim=-2).to(dtype)
        k = torch.cat([kr[:, :, :prefix], _rotate(kr[:, :, prefix:], sin, cos)], dim=-2).to(dtype)
        out = F.scaled_dot_product_attention(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(B, N, C))


class _Block(nn.Module):
    def __init__(
        self,
        dim: int,
        heads: int,
        hidden: int,
        ffn: str,
        norm: Any,
        layerscale: float | None,
        qkv_bias: bool,
        proj_bias: bool,
        ffn_bias: bool,
        mask_k_bias: bool,
    ) -> None:
        super().__init__()
        self.norm1 = norm(dim)
        self.attn = _Attention(dim, heads, qkv_bias, proj_bias, mask_k_bias)
        self.ls1 = _LayerScale(dim, layerscale) if layerscale else nn.Identity()
        self.norm2 = norm(dim)
        self.mlp = (_SwiGLU if ffn == "swiglu" else _Mlp)(dim, hidden, ffn_bias)
        self.ls2 = _LayerScale(dim, layerscale) if layerscale else nn.Identity()

    def forward(self, x: Tensor, rope: tuple[Tensor, Tensor]) -> Tensor:
        x = x + self.ls1(self.attn(self.norm1(x), rope))
        return x + self.ls2(self.mlp(self.norm2(x)))


class _PatchEmbed(nn.Module):
    def __init__(self, patch: int, dim: int, img_size: int | tuple[int, int]) -> None:
        super().__init__()
        self.proj = nn.Conv2d(3, dim, kernel_size=patch, stride=patch)
        size = (img_size, img_size) if isinstance(img_size, int) else tuple(img_size)
        self.grid_size = (size[0] // patch, size[1] // patch)


class _Rope(nn.Module):
    """Holds the RoPE periods (the persistent buffer ``rope_embed.periods`` of official checkpoints)."""

    periods: Tensor

    def __init__(self, periods: Tensor, normalize: str) -> None:
        super().__init__()
        self.register_buffer("periods", periods)
        self.normalize = normalize

    def forward(self, rows: int, cols: int) -> tuple[Tensor, Tensor]:
        return rope_sincos(rows, cols, self.periods, normalize=self.normalize)


# --------------------------------------------------------------------------------------------------
# The network
# --------------------------------------------------------------------------------------------------


class DINOv3ViT(nn.Module):
    """The official DINOv3 ViT (see the module docstring) with timm's feature API.

    Args:
        embed_dim, depth, num_heads, patch_size: the network's shape.
        ffn_layer: ``"mlp"`` (``fc1`` / ``fc2``, GELU) or ``"swiglu"`` (``w1``, ``w2``, ``w3``).
        ffn_hidden: the FFN's hidden width (default: ``4 · embed_dim`` for mlp).
        n_storage_tokens: storage (register) tokens after the class token.
        layerscale: LayerScale initial value, or None for none.
        norm_layer: ``"layernorm"`` (eps 1e-6), ``"layernormbf16"`` (eps 1e-5) or ``"rmsnorm"``.
        mask_k_bias: the qkv bias is masked to zero on the keys (``bias_mask``).
        untie_cls_and_patch_norms, untie_global_and_local_cls_norm: the extra norms official
            checkpoints hold (``cls_norm``, ``local_cls_norm``); neither touches the patch tokens.
        rope_base, rope_min_period, rope_max_period, rope_normalize_coords: RoPE's settings.
        rope_dtype: ``"fp32"`` (the released networks) or ``"bf16"`` (networks built for training).
        img_size: input size (square or ``(H, W)``); inputs of other sizes are accepted too.
    """

    def __init__(
        self,
        *,
        embed_dim: int = 384,
        depth: int = 12,
        num_heads: int = 6,
        patch_size: int = 16,
        ffn_layer: str = "mlp",
        ffn_hidden: int | None = None,
        n_storage_tokens: int = 0,
        layerscale: float | None = None,
        norm_layer: str = "layernorm",
        qkv_bias: bool = True,
        proj_bias: bool = True,
        ffn_bias: bool = True,
        mask_k_bias: bool = False,
        untie_cls_and_patch_norms: bool = False,
        untie_global_and_local_cls_norm: bool = False,
        rope_base: float | None = 100.0,
        rope_min_period: float | None = None,
        rope_max_period: float | None = None,
        rope_normalize_coords: str = "separate",
        rope_dtype: str = "fp32",
        img_size: int | tuple[int, int] = 224,
    ) -> None:
        super().__init__()
        if embed_dim % (4 * num_heads):
            raise ValueError(f"embed_dim {embed_dim} must be a multiple of 4 * num_heads ({4 * num_heads})")
        if ffn_layer not in ("mlp", "swiglu"):
            raise ValueError(f"ffn_layer: expected 'mlp' or 'swiglu', got {ffn_layer!r}")
        if rope_dtype not in _DTYPES:
            raise ValueError(f"rope_dtype: expected one of {', '.join(_DTYPES)}, got {rope_dtype!r}")
        norms = {
            "layernorm": lambda d: nn.LayerNorm(d, eps=1e-6),
            "layernormbf16": lambda d: nn.LayerNorm(d, eps=1e-5),
            "rmsnorm": lambda d: _RMSNorm(d, 1e-5),
        }
        if norm_layer not in norms:
            raise ValueError(f"norm_layer: expected one of {', '.join(norms)}, got {norm_layer!r}")
        norm = norms[norm_layer]
        hidden = ffn_hidden or int(embed_dim * 4)
        self.embed_dim = self.num_features = embed_dim
        self.num_prefix_tokens = 1 + n_storage_tokens
        self.n_storage_tokens = n_storage_tokens
        self.patch_size = patch_size
        self.patch_embed = _PatchEmbed(patch_size, embed_dim, img_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        if n_storage_tokens:
            self.storage_tokens = nn.Parameter(torch.zeros(1, n_storage_tokens, embed_dim))
        periods = rope_periods(
            embed_dim // num_heads,
            base=rope_base,
            min_period=rope_min_period,
            max_period=rope_max_period,
            dtype=_DTYPES[rope_dtype],
        )
        self.rope_embed = _Rope(periods, rope_normalize_coords)
        self.blocks = nn.ModuleList(
            _Block(
                embed_dim, num_heads, hidden, ffn_layer, norm, layerscale, qkv_bias, proj_bias, ffn_bias, mask_k_bias
            )
            for _ in range(depth)
        )
        self.norm = norm(embed_dim)
        if untie_cls_and_patch_norms:
            self.cls_norm = norm(embed_dim)
        if untie_global_and_local_cls_norm:
            self.local_cls_norm = norm(embed_dim)
        self.mask_token = nn.Parameter(torch.zeros(1, embed_dim))
        self.feature_info = [
            {"module": f"blocks.{i}", "num_chs": embed_dim, "reduction": patch_size} for i in range(depth)
        ]

    def _tokens(self, x: Tensor) -> tuple[Tensor, int, int]:
        x = self.patch_embed.proj(x)
        rows, cols = x.shape[-2:]
        x = x.flatten(2).transpose(1, 2)
        prefix = [(self.cls_token + 0 * self.mask_token).expand(x.shape[0], -1, -1)]
        if self.n_storage_tokens:
            prefix.append(self.storage_tokens.expand(x.shape[0], -1, -1))
        return torch.cat([*prefix, x], dim=1), int(rows), int(cols)

    def forward_intermediates(
        self,
        x: Tensor,
        indices: int | Sequence[int] | None = None,
        *,
        norm: bool = True,
        output_fmt: str = "NLC",
        intermediates_only: bool = True,
        stop_early: bool = True,
        return_prefix_tokens: bool = False,
    ) -> list[Tensor]:
        """The patch tokens after blocks ``indices`` (timm's convention: an int takes the last
        ``n`` blocks, negative indices count from the end), after the final norm when ``norm``;
        ``(B, rows·cols, d)`` (``"NLC"``) or ``(B, d, rows, cols)`` (``"NCHW"``)."""
        n = len(self.blocks)
        if indices is None:
            indices = [n - 1]
        wanted = list(range(n - indices, n)) if isinstance(indices, int) else [i % n for i in indices]
        x, rows, cols = self._tokens(x)
        rope = self.rope_embed(rows, cols)
        out: dict[int, Tensor] = {}
        last = max(wanted) if stop_early else n - 1
        for i, blk in enumerate(self.blocks[: last + 1]):
            x = blk(x, rope)
            if i in wanted:
                out[i] = x
        tokens = []
        for i in wanted:
            t = self.norm(out[i][:, self.num_prefix_tokens :]) if norm else out[i][:, self.num_prefix_tokens :]
            if output_fmt == "NCHW":
                t = t.reshape(t.shape[0], rows, cols, -1).permute(0, 3, 1, 2)
            tokens.append(t)
        return tokens

    def forward_features(self, x: Tensor) -> dict[str, Tensor]:
        """The official ``forward_features`` keys: normed class, storage and patch tokens."""
        x, rows, cols = self._tokens(x)
        rope = self.rope_embed(rows, cols)
        for blk in self.blocks:
            x = blk(x, rope)
        p = self.num_prefix_tokens
        cls_norm = getattr(self, "cls_norm", self.norm)
        cls = cls_norm(x[:, :p])
        return {
            "x_norm_clstoken": cls[:, 0],
            "x_storage_tokens": cls[:, 1:],
            "x_norm_patchtokens": self.norm(x[:, p:]),
            "x_prenorm": x,
        }

    def forward(self, x: Tensor) -> Tensor:
        """The normed class token ``(B, d)``, as the official ``forward`` in eval mode."""
        return self.forward_features(x)["x_norm_clstoken"]

    def image_embedding(self, x: Tensor) -> Tensor:
        """The image-level embedding: the normed class token ``(B, d)``."""
        return self.forward(x)


def _entry(pretrained: bool = False, **kwargs: Any) -> DINOv3ViT:
    """timm entry point of :class:`DINOv3ViT` (timm's own arguments that do not apply are dropped)."""
    if pretrained:
        raise ValueError(f"{ARCH} has no pretrained weights: load a checkpoint")
    for key in ("pretrained_cfg", "pretrained_cfg_overlay", "num_classes", "weight_init", "global_pool", "cache_dir"):
        kwargs.pop(key, None)
    return DINOv3ViT(**kwargs)


def register() -> None:
    """Register :class:`DINOv3ViT` with timm as :data:`ARCH` (once)."""
    import timm
    from timm.models import register_model

    if not timm.is_model(ARCH):
        _entry.__name__ = ARCH
        register_model(_entry)
