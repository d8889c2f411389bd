"""Gram anchoring: the loss against a direct computation (value and gradient), its options,
the teacher's schedule, and ``dsekit train --gram-weight / --gram-teacher / --init-from``."""

from __future__ import annotations

import json

import pytest
import torch

from dsekit.train import GramAnchor, gram_anchoring_loss
from dsekit.train.gram import parse_gram_teacher


def _direct(student, teacher, clamp=True, image_level=True):
    """One Gram matrix at a time, with explicit loops: mean over entries of the squared difference."""

    def gram(x):
        x = x / x.norm(dim=-1, keepdim=True)
        return x @ x.T

    pairs = (
        [(student[b], teacher[b]) for b in range(student.shape[0])]
        if image_level
        else [(student.reshape(-1, student.shape[-1]), teacher.reshape(-1, teacher.shape[-1]))]
    )
    total, count = 0.0, 0
    for s, t in pairs:
        gs, gt = gram(s), gram(t)
        if clamp:
            gs, gt = gs.clamp(min=0), gt.clamp(min=0)
        total = total + ((gs - gt) ** 2).sum()
        count += gs.numel()
    return total / count


@pytest.mark.parametrize("clamp", [True, False])
@pytest.mark.parametrize("image_level", [True, False])
def test_value_and_gradient_equal_a_direct_computation(clamp, image_level):
    g = torch.Generator().manual_seed(0)
    s = torch.randn(3, 5, 4, generator=g, dtype=torch.float64, requires_grad=True)
    t = torch.randn(3, 5, 6, generator=g, dtype=torch.float64)
    value = gram_anchoring_loss(s, t, clamp_negative=clamp, image_level=image_level)
    ref = _direct(s, t, clamp, image_level)
    torch.testing.assert_close(value, ref.to(value.dtype), rtol=1e-6, atol=1e-9)
    (grad,) = torch.autograd.grad(value, s)
    (grad_ref,) = torch.autograd.grad(ref, s)
    torch.testing.assert_close(grad.double(), grad_ref, rtol=1e-5, atol=1e-7)


def test_gradcheck_and_no_gradient_through_the_teacher():
    g = torch.Generator().manual_seed(1)
    s = torch.randn(2, 4, 3, generator=g, dtype=torch.float64, requires_grad=True)
    t = torch.randn(2, 4, 3, generator=g, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x: gram_anchoring_loss(x, t, clamp_negative=False), (s,))
    loss = gram_anchoring_loss(s, t)
    loss.backward()
    assert t.grad is None and s.grad is not None and loss.ndim == 0


def test_identical_tokens_give_zero_and_negatives_are_clamped():
    x = torch.randn(2, 6, 8)
    assert gram_anchoring_loss(x, x.clone()).item() == 0.0
    a = torch.tensor([[[1.0, 0.0], [-1.0, 0.0]]])  # similarity -1 between the two patches
    b = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])  # similarity 0
    assert gram_anchoring_loss(a, b, clamp_negative=True).item() == 0.0
    assert gram_anchoring_loss(a, b, clamp_negative=False).item() == pytest.approx(0.5)  # (-1)² on 2 of 4 entries


def test_shapes_are_checked():
    with pytest.raises(ValueError, match="same B and N"):
        gram_anchoring_loss(torch.zeros(2, 4, 3), torch.zeros(2, 5, 3))


def test_teacher_schedule():
    net = torch.nn.Linear(2, 2)
    anchor = GramAnchor(1.0, start=10, every=5)
    assert anchor.loss(torch.zeros(1, 2, 2), torch.zeros(1, 2), lambda b, x: x) is None  # no teacher yet
    copied = [s for s in range(0, 30) if anchor.maybe_refresh(s, net)]
    assert copied == [10, 15, 20, 25]
    assert not anchor.teacher.weight.requires_grad
    with torch.no_grad():
        net.weight.add_(1.0)
    assert not torch.equal(anchor.teacher.weight, net.weight)  # a copy, frozen between refreshes
    assert parse_gram_teacher("12") == (None, 12) and parse_gram_teacher("a.pth") == ("a.pth", None)
    with pytest.raises(ValueError, match="teacher"):
        GramAnchor(1.0)


def _train(out, **kw):
    from dsekit.train.config import TrainConfig
    from dsekit.train.ssl import train

    cfg = dict(
        method="mocov3",
        out=str(out),
        num_images=32,
        epochs=2,
        save_every=1,
        batch_size=16,
        arch="vit_tiny_scenes",
        model_kwargs={"depth": 1},
        seed=0,
    )
    cfg.update(kw)
    return train(TrainConfig(**cfg), progress=False)


def _log(run):
    return [json.loads(ln) for ln in (run / "log.txt").read_text().splitlines()]


def test_train_with_a_step_teacher_logs_the_term_and_resumes_bit_for_bit(tmp_path):
    full = tmp_path / "full"
    w = 1e4  # large, so that the term shows in a float32 loss next to the SSL loss
    _train(full, gram_weight=w, gram_teacher=1, gram_every=2)
    log = _log(full)
    assert all("loss_gram" in e for e in log)
    last = log[-1]  # every step of the last epoch has the teacher: loss = ssl + w * gram
    assert last["loss"] - last["loss_ssl"] == pytest.approx(w * last["loss_gram"], rel=1e-3)
    part = tmp_path / "part"
    _train(part, gram_weight=w, gram_teacher=1, gram_every=2, stop_after=1)
    _train(part, gram_weight=w, gram_teacher=1, gram_every=2)
    assert _log(part) == [
        {**e, "seconds": _log(part)[i]["seconds"], "images_per_s": _log(part)[i]["images_per_s"]}
        for i, e in enumerate(log)
    ]


def test_init_from_and_a_file_teacher(tmp_path):
    base = tmp_path / "base"
    _train(base)
    ckpt = base / "checkpoint_0001.pth.tar"
    cont = tmp_path / "cont"
    res = _train(cont, init_from=str(ckpt), gram_weight=1.0, gram_teacher=str(ckpt))
    assert not (cont / "checkpoint_init.pth.tar").exists()  # its start is another run's checkpoint
    assert [e for _, e in res.checkpoints] == [0, 1]
    first = _log(cont)[0]
    assert first["loss_gram"] > 0
    with pytest.raises(ValueError, match="init_from"):
        _train(tmp_path / "bad", init_from=str(tmp_path / "missing.pth"))
    with pytest.raises(ValueError, match="gram_teacher"):
        _train(tmp_path / "bad2", gram_weight=1.0)
