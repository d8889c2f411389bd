"""The DSE benchmark's inputs: named dense feature sets ``(B, N, d)``, synthetic and real.

Synthetic inputs (``N = 196`` patches, ``d = 384`` channels, float32, deterministic per seed):

* ``separated``: 24 classes, 2-4 per image, small noise: the easy case, k-means converges at once.
* ``overlap-0.5`` / ``overlap-1.0`` / ``overlap-2.0``: 48 classes, 2-6 per image, per-patch
  noise of norm 0.5 / 1.0 / 2.0 against centres √2 apart: classes overlap more and more.
* ``uneven-anisotropic``: 48 classes of very uneven size (weights 1-30), each spread along 8
  random directions of its own with scales 4:1 (most of the noise in 2-3 directions).
* ``gaussian-noise``: isotropic standard normal patches, no structure at all.

Real input:

* ``real-tokens``: the last-block patch tokens of a checkpoint trained by ``dsekit train`` on
  the built-in scenes (DINO, a 4-block ViT of width 384 with 8-pixel patches at 112 px:
  ``N = 196``, ``d = 384``), over ``B`` built-in scenes. Without ``--real RUN`` the benchmark
  trains that run once into its cache folder (64 images, 1 epoch: about a minute on a CPU).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import torch

N_PATCHES = 196
DIM = 384

SYNTHETIC = ("separated", "overlap-0.5", "overlap-1.0", "overlap-2.0", "uneven-anisotropic", "gaussian-noise")
REAL = "real-tokens"
SUITE = (*SYNTHETIC, REAL)

#: The training run behind ``real-tokens``: ``dsekit train`` settings.
REAL_RUN = dict(
    method="dino",
    arch="vit_tiny_scenes",
    model_kwargs={"embed_dim": DIM, "num_heads": 6},
    image_size=112,
    num_images=64,
    epochs=1,
    save_every=1,
    batch_size=32,
    seed=0,
)


def clustered_features(
    B: int,
    N: int = N_PATCHES,
    d: int = DIM,
    *,
    num_classes: int = 48,
    classes_per_image: tuple[int, int] = (2, 6),
    shift: float = 0.25,
    noise: float = 0.35,
    offset: float = 1.0,
    unevenness: float = 8.0,
    cover_group: int | None = None,
    anisotropy: tuple[int, float] | None = None,
    seed: int = 0,
) -> torch.Tensor:
    """Deterministic clustered dense features ``(B, N, d)``, float32 on CPU.

    Orthonormal class centres in ``d`` dimensions are shared by all images; each image holds
    between ``classes_per_image[0]`` and ``[1]`` classes in uneven proportions (class weights
    uniform in ``[1, unevenness]``); each class gets a per-image shift of norm about ``shift``;
    every patch gets a small gain jitter, Gaussian noise of norm about ``noise`` and a shared
    offset (the common mean direction of real backbone features).

    With ``cover_group = G`` every run of ``G`` consecutive images (a DSE group) holds every
    class: image ``b`` always contains the classes ``c`` with ``c % G == b % G``.

    With ``anisotropy = (r, ratio)`` each class's noise lies in ``r`` random directions of its
    own, with standard deviations falling geometrically by ``ratio`` from the first to the
    last, scaled to a norm of about ``noise``.
    """
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(d, num_classes + 1, generator=g, dtype=torch.float64))
    centres = q[:, :num_classes].T.float()  # (K, d), orthonormal
    common = offset * q[:, num_classes].float()  # (d,), orthogonal to every centre
    lo, hi = classes_per_image
    classes = torch.arange(num_classes)
    if cover_group:
        owned = classes.unsqueeze(0) % cover_group == (torch.arange(B) % cover_group).unsqueeze(1)  # (B, K)
        n_owned = int(owned[0].sum())
        if not bool((owned.sum(1) == n_owned).all()) or n_owned > hi:
            raise ValueError(
                f"cover_group: {num_classes} classes do not split evenly into {cover_group} images of <= {hi} classes"
            )
        key = torch.rand(B, num_classes, generator=g) - 2.0 * owned  # owned classes sort first
        lo = max(lo, n_owned)
    else:
        key = torch.rand(B, num_classes, generator=g)
    order = key.argsort(1)[:, :hi]  # (B, hi) class ids of each image's slots
    present = torch.randint(lo, hi + 1, (B,), generator=g)  # classes per image
    weights = 1.0 + (unevenness - 1.0) * torch.rand(B, hi, generator=g)  # uneven class sizes
    weights = weights * (torch.arange(hi).unsqueeze(0) < present.unsqueeze(1))
    slot = torch.multinomial(weights, N, replacement=True, generator=g)  # (B, N)
    cls = order.gather(1, slot)  # (B, N) class of every patch
    per_image = centres.unsqueeze(0) + shift / math.sqrt(d) * torch.randn(B, num_classes, d, generator=g)
    base = per_image.gather(1, cls.unsqueeze(-1).expand(-1, -1, d))  # (B, N, d)
    gain = 1.0 + 0.1 * torch.randn(B, N, 1, generator=g)
    if anisotropy is None:
        eps = noise / math.sqrt(d) * torch.randn(B, N, d, generator=g)
    else:
        r, ratio = anisotropy
        axes, _ = torch.linalg.qr(torch.randn(num_classes, d, r, generator=g))  # (K, d, r) per-class directions
        scales = ratio ** (-torch.arange(r, dtype=torch.float32) / max(r - 1, 1))  # 1 ... 1/ratio
        scales = noise * scales / scales.norm()
        coef = torch.randn(B, N, r, generator=g) * scales  # (B, N, r)
        eps = torch.einsum("bnr,bndr->bnd", coef, axes[cls])
    z = gain * base + eps + common
    return z.contiguous()


def synthetic_features(name: str, B: int, seed: int = 0) -> torch.Tensor:
    """The synthetic input ``name`` (one of :data:`SYNTHETIC`) with ``B`` images: ``(B, 196, 384)``."""
    if name == "separated":
        return clustered_features(
            B, num_classes=24, classes_per_image=(2, 4), shift=0.1, noise=0.1, unevenness=2.0, seed=seed
        )
    if name.startswith("overlap-"):
        return clustered_features(B, noise=float(name.split("-", 1)[1]), seed=seed)
    if name == "uneven-anisotropic":
        return clustered_features(B, unevenness=30.0, noise=0.8, anisotropy=(8, 4.0), seed=seed)
    if name == "gaussian-noise":
        return torch.randn(B, N_PATCHES, DIM, generator=torch.Generator().manual_seed(seed))
    raise ValueError(f"input: expected one of {', '.join(SUITE)}, got {name!r}")


def train_real_run(cache: Path, progress: bool = False) -> Path:
    """Train (or reuse) the :data:`REAL_RUN` run in ``cache / 'real-run'``; returns its folder."""
    from dsekit.train.ssl import TrainConfig, train

    run = cache / "real-run"
    train(TrainConfig(out=str(run), **REAL_RUN), progress=progress)  # resumes: a finished run is reused
    return run


def real_token_loader(run: Path, max_images: int) -> Callable[[int], torch.Tensor]:
    """``B -> (B, N, d)`` last-block patch tokens of ``run``'s last checkpoint on built-in scenes.

    The features of ``max_images`` scenes are extracted once; each call returns the first ``B``.
    """
    from dsekit.backbones import load_backbone
    from dsekit.backbones.extract import extract_features
    from dsekit.data.images import load_image_sample
    from dsekit.train.ssl import read_run_info

    info = read_run_info(run)
    checkpoints = sorted(run.glob("checkpoint[0-9]*.pth"))
    if not checkpoints:
        raise FileNotFoundError(f"--real: no checkpointNNNN.pth in {run}")
    model = load_backbone(
        checkpoints[-1],
        info["method"],
        info["arch"],
        model_kwargs=info["model_kwargs"],
        img_size=int(info["image_size"]),
    )
    sample = load_image_sample(
        None,
        max_images,
        seed=0,
        image_size=int(info["image_size"]),
        scenes=info.get("settings", {}).get("scenes") or None,
    )
    with torch.no_grad():
        tokens = extract_features(model, sample.images, batch_size=64)
    if tokens.shape[0] < max_images:
        raise ValueError(f"--real: {tokens.shape[0]} images available, {max_images} needed")
    return lambda B: tokens[:B].contiguous()
