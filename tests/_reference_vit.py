"""Independent forwards of the official DINOv2 and DINOv3 ViTs, written from their papers' and
repositories' documented semantics in plain tensor operations, to check dsekit's features
against something that is neither timm nor dsekit's own network.

Both read the official state-dict names directly (no key mapping) and compute attention with an
explicit softmax (not scaled_dot_product_attention), so an agreement to float rounding means
the loader, the key mapping, the token order, the position encoding and the norms are right.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor


def _attention(x: Tensor, w: Tensor, b: Tensor | None, heads: int) -> tuple[Tensor, ...]:
    B, N, C = x.shape
    qkv = (x @ w.T + (b if b is not None else 0)).reshape(B, N, 3, heads, C // heads).permute(2, 0, 3, 1, 4)
    return qkv[0], qkv[1], qkv[2]


def _softmax_attention(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    scores = (q @ k.transpose(-1, -2)) / math.sqrt(q.shape[-1])
    return scores.softmax(dim=-1) @ v


def _ln(x: Tensor, sd: dict[str, Tensor], name: str, eps: float) -> Tensor:
    return F.layer_norm(x, (x.shape[-1],), sd[f"{name}.weight"], sd[f"{name}.bias"], eps)


def _linear(x: Tensor, sd: dict[str, Tensor], name: str) -> Tensor:
    return x @ sd[f"{name}.weight"].T + sd.get(f"{name}.bias", 0)


def _blocks(sd: dict[str, Tensor]) -> list[str]:
    ids = sorted({int(k.split(".")[1]) for k in sd if k.startswith("blocks.")})
    return [f"blocks.{i}" for i in ids]


# ---------------------------------------------------------------------------------------------- DINOv2


def dinov2_pos_embed(pos_embed: Tensor, rows: int, cols: int, offset: float, antialias: bool) -> Tensor:
    """The class slot and the patch positions bicubically resized to ``rows x cols`` with the
    scale factor ``(n + offset) / M`` (offset 0: to the size itself); unchanged for the same square grid."""
    n = pos_embed.shape[1] - 1
    m = int(round(n**0.5))
    if n == rows * cols and rows == cols:
        return pos_embed
    grid = pos_embed[:, 1:].float().reshape(1, m, m, -1).permute(0, 3, 1, 2)
    if offset:
        grid = F.interpolate(
            grid, scale_factor=((rows + offset) / m, (cols + offset) / m), mode="bicubic", antialias=antialias
        )
    else:
        grid = F.interpolate(grid, size=(rows, cols), mode="bicubic", antialias=antialias)
    return torch.cat([pos_embed[:, :1], grid.permute(0, 2, 3, 1).reshape(1, rows * cols, -1)], dim=1)


def dinov2_patch_tokens(
    sd: dict[str, Tensor],
    x: Tensor,
    heads: int,
    *,
    offset: float = 0.1,
    antialias: bool = False,
    block: int | None = None,
) -> Tensor:
    """``forward_features(x)["x_norm_patchtokens"]`` of an official DINOv2 backbone state dict
    (block chunks flattened by the caller); ``block``: read that block instead (after the final norm)."""
    B = x.shape[0]
    p = sd["patch_embed.proj.weight"].shape[-1]
    t = F.conv2d(x, sd["patch_embed.proj.weight"], sd["patch_embed.proj.bias"], stride=p)
    rows, cols = t.shape[-2:]
    t = t.flatten(2).transpose(1, 2)
    t = torch.cat([sd["cls_token"].expand(B, -1, -1), t], dim=1)
    t = t + dinov2_pos_embed(sd["pos_embed"], rows, cols, offset, antialias)
    regs = sd.get("register_tokens")
    if regs is not None:
        t = torch.cat([t[:, :1], regs.expand(B, -1, -1), t[:, 1:]], dim=1)
    prefix = 1 + (0 if regs is None else regs.shape[1])
    names = _blocks(sd)
    for i, name in enumerate(names):
        h = _ln(t, sd, f"{name}.norm1", 1e-6)
        q, k, v = _attention(h, sd[f"{name}.attn.qkv.weight"], sd.get(f"{name}.attn.qkv.bias"), heads)
        a = _softmax_attention(q, k, v).transpose(1, 2).reshape(t.shape)
        t = t + _linear(a, sd, f"{name}.attn.proj") * sd.get(f"{name}.ls1.gamma", 1.0)
        h = _ln(t, sd, f"{name}.norm2", 1e-6)
        if f"{name}.mlp.w12.weight" in sd:
            g, u = _linear(h, sd, f"{name}.mlp.w12").chunk(2, dim=-1)
            h = _linear(F.silu(g) * u, sd, f"{name}.mlp.w3")
        else:
            h = _linear(F.gelu(_linear(h, sd, f"{name}.mlp.fc1")), sd, f"{name}.mlp.fc2")
        t = t + h * sd.get(f"{name}.ls2.gamma", 1.0)
        if block is not None and i == block % len(names):
            break
    return _ln(t, sd, "norm", 1e-6)[:, prefix:]


# ---------------------------------------------------------------------------------------------- DINOv3


def dinov3_rope(rows: int, cols: int, periods: Tensor, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """Axial RoPE of a ``rows x cols`` grid, in ``dtype`` and in the official order of operations
    (which matters in bfloat16): cell centres ``arange(0.5, n) / n`` per axis mapped by ``2c - 1``,
    angles ``2π·c / period``, height frequencies then width frequencies, tiled twice."""
    per = periods.to(dtype)
    ch = torch.arange(0.5, rows, dtype=dtype) / rows
    cw = torch.arange(0.5, cols, dtype=dtype) / cols
    hh, ww = torch.meshgrid(ch, cw, indexing="ij")
    c_h, c_w = 2.0 * hh.reshape(-1) - 1.0, 2.0 * ww.reshape(-1) - 1.0
    ang_h = 2 * math.pi * c_h[:, None] / per[None, :]
    ang_w = 2 * math.pi * c_w[:, None] / per[None, :]
    ang = torch.cat([ang_h, ang_w], dim=1)
    ang = torch.cat([ang, ang], dim=1)
    return ang.sin(), ang.cos()


def _rot(x: Tensor, sin: Tensor, cos: Tensor) -> Tensor:
    half = x.shape[-1] // 2
    return x * cos + torch.cat([-x[..., half:], x[..., :half]], dim=-1) * sin


def dinov3_patch_tokens(
    sd: dict[str, Tensor],
    x: Tensor,
    heads: int,
    *,
    rope_dtype: torch.dtype = torch.float32,
    eps: float = 1e-5,
    block: int | None = None,
) -> Tensor:
    """``forward_features(x)["x_norm_patchtokens"]`` of an official DINOv3 backbone state dict."""
    B = x.shape[0]
    p = sd["patch_embed.proj.weight"].shape[-1]
    t = F.conv2d(x, sd["patch_embed.proj.weight"], sd["patch_embed.proj.bias"], stride=p)
    rows, cols = t.shape[-2:]
    t = t.flatten(2).transpose(1, 2)
    storage = sd.get("storage_tokens")
    parts = [sd["cls_token"].expand(B, -1, -1)] + ([storage.expand(B, -1, -1)] if storage is not None else [])
    t = torch.cat([*parts, t], dim=1)
    prefix = t.shape[1] - rows * cols
    sin, cos = dinov3_rope(rows, cols, sd["rope_embed.periods"], rope_dtype)
    names = _blocks(sd)
    for i, name in enumerate(names):
        h = _ln(t, sd, f"{name}.norm1", eps)
        bias = sd.get(f"{name}.attn.qkv.bias")
        if bias is not None and f"{name}.attn.qkv.bias_mask" in sd:
            bias = bias * sd[f"{name}.attn.qkv.bias_mask"]
        q, k, v = _attention(h, sd[f"{name}.attn.qkv.weight"], bias, heads)
        qr, kr = q.to(rope_dtype), k.to(rope_dtype)
        q = torch.cat([qr[:, :, :prefix], _rot(qr[:, :, prefix:], sin, cos)], dim=2).to(v.dtype)
        k = torch.cat([kr[:, :, :prefix], _rot(kr[:, :, prefix:], sin, cos)], dim=2).to(v.dtype)
        a = _softmax_attention(q, k, v).transpose(1, 2).reshape(t.shape)
        t = t + _linear(a, sd, f"{name}.attn.proj") * sd.get(f"{name}.ls1.gamma", 1.0)
        h = _ln(t, sd, f"{name}.norm2", eps)
        if f"{name}.mlp.w1.weight" in sd:
            h = _linear(
                F.silu(_linear(h, sd, f"{name}.mlp.w1")) * _linear(h, sd, f"{name}.mlp.w2"), sd, f"{name}.mlp.w3"
            )
        else:
            h = _linear(F.gelu(_linear(h, sd, f"{name}.mlp.fc1")), sd, f"{name}.mlp.fc2")
        t = t + h * sd.get(f"{name}.ls2.gamma", 1.0)
        if block is not None and i == block % len(names):
            break
    return _ln(t, sd, "norm", eps)[:, prefix:]
