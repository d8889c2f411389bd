"""Linear-probe mIoU: the metric against hand-computed confusion matrices, the exact upsampled loss,
a sanity check that a backbone trained for the scenes beats a random one, and the probe run
(probe.csv, resume, spill to disk, bad labels, failed checkpoints, CLI).

Everything is tiny (48-64 px scenes, one-block ViTs with 8 px patches, a three-layer CNN) so that
the file stays well under a minute and a half on two CPU cores.
"""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from dsekit.backbones import FeatureExtractor, create_backbone, extract_features, load_backbone
from dsekit.cli.probe import add_probe_parser, run_probe
from dsekit.data.images import IMAGENET_MEAN, IMAGENET_STD
from dsekit.data.segmentation import get_dataset
from dsekit.feature_cache import FeatureCache, spill_prefix
from dsekit.io import read_confusion_table
from dsekit.linear_head import LinearHead, bilinear_matrix, linear_probe, upsampled_cross_entropy
from dsekit.metrics.iou import (
    check_labels,
    confusion_matrix,
    iou_from_confusion,
    miou_from_confusion,
    pixel_accuracy_from_confusion,
)
from dsekit.probe import CLASS_COLUMNS, KNN_COLUMNS, PROBE_COLUMNS, ProbeConfig, probe

IMG = 48
VIT_KW = {"patch_size": 8, "embed_dim": 32, "depth": 1, "num_heads": 2}  # 6 x 6 patches of 32 channels
EPOCHS = (30, 5, 120)  # written out of order
N_TRAIN, N_VAL = 24, 8


@pytest.fixture(autouse=True)
def single_thread():
    """One thread per test: the probe's many small tensor ops gain nothing from a second thread and
    lose a lot when the machine is shared (same arithmetic either way)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# ============================================================================ mIoU from confusion


def test_miou_matches_a_hand_computed_confusion_matrix():
    target = torch.tensor([0, 0, 0, 1, 1, 2, 2, 2, 2, 1])
    preds = torch.tensor([0, 0, 1, 1, 2, 2, 2, 0, 2, 1])
    conf = confusion_matrix(preds, target, 3)
    # rows = truth, columns = prediction
    assert conf.tolist() == [[2, 1, 0], [0, 2, 1], [1, 0, 3]]
    # IoU_c = TP / (row + col - TP): 2/(3+3-2), 2/(3+3-2), 3/(4+4-3)
    expected = [2 / 4, 2 / 4, 3 / 5]
    iou, present = iou_from_confusion(conf)
    assert iou.tolist() == pytest.approx(expected)
    assert present.tolist() == [True, True, True]
    assert miou_from_confusion(conf) == pytest.approx(sum(expected) / 3)
    assert pixel_accuracy_from_confusion(conf) == pytest.approx(7 / 10)


def test_ignored_pixels_do_not_count():
    target = torch.tensor([[0, 255, 1], [255, 1, 0]])
    preds = torch.tensor([[0, 1, 1], [0, 0, 0]])  # the two ignored pixels are predicted wrongly
    conf = confusion_matrix(preds, target, 2, ignore_index=255)
    assert conf.tolist() == [[2, 0], [1, 1]]
    # class 0: TP 2, union 2 + 1 = 3; class 1: TP 1, union 2
    assert miou_from_confusion(conf) == pytest.approx((2 / 3 + 1 / 2) / 2)
    assert pixel_accuracy_from_confusion(conf) == pytest.approx(3 / 4)


def test_classes_absent_from_truth_and_prediction_are_left_out_of_the_mean():
    # 5 classes; class 3 never occurs, class 4 is only predicted (a false positive)
    conf = torch.tensor(
        [
            [3, 1, 0, 0, 0],
            [0, 2, 0, 0, 1],
            [0, 0, 4, 0, 0],
            [0, 0, 0, 0, 0],
            [0, 0, 0, 0, 0],
        ]
    )
    iou, present = iou_from_confusion(conf)
    assert present.tolist() == [True, True, True, False, True]
    hand = [3 / 4, 2 / 4, 4 / 4, 0 / 1]  # class 4: TP 0, FP 1 -> IoU 0, and it counts
    assert miou_from_confusion(conf) == pytest.approx(sum(hand) / 4)
    assert miou_from_confusion(conf) != pytest.approx(sum(hand) / 5)  # not averaged over all 5
    # torchmetrics' macro Jaccard gives absent classes zero weight too: same number
    from torchmetrics.functional.classification import multiclass_accuracy, multiclass_jaccard_index

    rows, cols = torch.nonzero(conf, as_tuple=True)
    reps = conf[rows, cols]
    target, preds = rows.repeat_interleave(reps), cols.repeat_interleave(reps)
    assert confusion_matrix(preds, target, 5).tolist() == conf.tolist()
    tm = multiclass_jaccard_index(preds, target, 5, average="macro")
    assert float(tm) == pytest.approx(miou_from_confusion(conf))
    acc = multiclass_accuracy(preds, target, 5, average="micro")
    assert float(acc) == pytest.approx(pixel_accuracy_from_confusion(conf))


def test_empty_confusion_gives_zero_not_nan():
    conf = torch.zeros(4, 4, dtype=torch.long)
    assert miou_from_confusion(conf) == 0.0
    assert pixel_accuracy_from_confusion(conf) == 0.0
    with pytest.raises(ValueError, match="square"):
        miou_from_confusion(torch.zeros(2, 3))


def test_label_values_outside_the_class_range_are_named():
    mask = np.zeros((4, 4), np.uint8)
    mask[0, 0], mask[1, 1], mask[2, 2] = 7, 9, 255
    with pytest.raises(ValueError, match=r"masks/a\.png: label value\(s\) 7, 9 outside the class range 0\.\.4"):
        check_labels(mask, 5, 255, "masks/a.png")
    check_labels(mask, 10, 255, "ok")  # 7 and 9 are classes when there are 10
    with pytest.raises(ValueError, match="255"):
        check_labels(mask, 10, None, "no ignore index")
    with pytest.raises(ValueError, match=r"target: label value\(s\) 3"):
        confusion_matrix(torch.tensor([0, 1]), torch.tensor([0, 3]), 3)


def test_linear_probe_names_the_sample_with_a_bad_label():
    feats = np.zeros((4, 4, 8), np.float32)
    masks = np.zeros((4, 8, 8), np.uint8)
    masks[2, 3, 3] = 17
    with pytest.raises(ValueError, match=r"train_masks\[2\]: label value\(s\) 17"):
        linear_probe(feats, masks, feats, np.zeros_like(masks), 5, device="cpu")


# ============================================================================ the loss and the head


@pytest.mark.parametrize("size", [(16, 16), (20, 12)])
def test_bilinear_matrix_is_interpolate(size):
    z = torch.randn(2, 3, 4, 5, dtype=torch.float64)
    up = F.interpolate(z, size=size, mode="bilinear", align_corners=False)
    u_h = bilinear_matrix(size[0], 4, dtype=torch.float64)
    u_w = bilinear_matrix(size[1], 5, dtype=torch.float64)
    torch.testing.assert_close(u_h @ z @ u_w.T, up)


@pytest.mark.parametrize("chunk", [1 << 10, 1 << 20])
def test_upsampled_cross_entropy_equals_interpolate_then_cross_entropy(chunk):
    g = torch.Generator().manual_seed(0)
    logits = (3 * torch.randn(5, 6, 3, 4, generator=g)).requires_grad_()
    target = torch.randint(0, 6, (5, 24, 20), generator=g)
    target[:, :5, :7] = 255
    target[3] = 255  # one image without a labelled pixel
    loss = upsampled_cross_entropy(logits, target, 255, chunk_elements=chunk)
    (grad,) = torch.autograd.grad(2.5 * loss, logits)
    ref = F.cross_entropy(
        F.interpolate(logits, size=(24, 20), mode="bilinear", align_corners=False), target, ignore_index=255
    )
    (ref_grad,) = torch.autograd.grad(2.5 * ref, logits)
    assert float(loss.detach()) == pytest.approx(float(ref.detach()), rel=1e-5)
    torch.testing.assert_close(grad, ref_grad, rtol=1e-4, atol=1e-7)
    assert grad[3].abs().max() == 0


def test_all_ignored_batch_gives_zero_loss_and_gradient():
    logits = torch.randn(2, 3, 2, 2, requires_grad=True)
    loss = upsampled_cross_entropy(logits, torch.full((2, 8, 8), 255), 255)
    loss.backward()
    assert float(loss.detach()) == 0.0 and logits.grad.abs().max() == 0


def test_head_creation_leaves_the_global_rng_alone(rng_state_guard):
    a = LinearHead(16, 5, generator=torch.Generator().manual_seed(3))
    b = LinearHead(16, 5, generator=torch.Generator().manual_seed(3))
    c = LinearHead(16, 5, generator=torch.Generator().manual_seed(4))
    assert torch.equal(a.conv.weight, b.conv.weight) and not torch.equal(a.conv.weight, c.conv.weight)
    assert float(a.conv.weight.detach().std()) == pytest.approx(0.01, rel=0.3) and a.conv.bias.abs().max() == 0
    assert torch.equal(a.bn.running_var, torch.ones(16)) and int(a.bn.num_batches_tracked) == 0
    assert a(torch.randn(2, 16, 3, 3, generator=torch.Generator().manual_seed(0))).shape == (2, 5, 3, 3)


def test_linear_probe_is_seeded_and_learns_a_separable_problem(rng_state_guard):
    # features that carry the label of each patch: the probe must get it nearly right
    g = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 4, (40, 4, 4), generator=g)
    protos = torch.randn(4, 16, generator=g)
    feats = (protos[labels] + 0.3 * torch.randn(40, 4, 4, 16, generator=g)).reshape(40, 16, 16)
    masks = labels.repeat_interleave(4, 1).repeat_interleave(4, 2)  # each patch = a 4x4 block of pixels
    masks[:, 0, 0] = 255
    kw = dict(epochs=15, batch_size=8, lr=1e-2, device="cpu", seed=1)
    r1 = linear_probe(feats[:30], masks[:30], feats[30:], masks[30:], 4, **kw)
    r2 = linear_probe(feats[:30].numpy(), masks[:30].numpy(), feats[30:].numpy(), masks[30:].numpy(), 4, **kw)
    assert r1.miou == r2.miou and r1.train_loss == r2.train_loss
    assert r1.miou > 0.7 and r1.pixel_accuracy > 0.8
    assert r1.train_loss[-1] < r1.train_loss[0]
    assert int(r1.confusion.sum()) == 10 * 16 * 16 - 10  # every labelled pixel counted once
    r3 = linear_probe(feats[:30], masks[:30], feats[30:], masks[30:], 4, **{**kw, "seed": 2})
    assert r3.train_loss != r1.train_loss


# ============================================================================ sanity: trained beats random


class _TinyCNN(nn.Module):
    """Three convolutions, stride 8: (B, 3, S, S) -> (B, 32, S/8, S/8)."""

    def __init__(self, seed: int) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(3, 32, 4, 4), nn.GELU(), nn.Conv2d(32, 32, 3, padding=1), nn.GELU(), nn.Conv2d(32, 32, 2, 2)
        )
        g = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for p in self.net.parameters():
                p.copy_(torch.randn(p.shape, generator=g) / max(1, p[0].numel()) ** 0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def _tokens(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    return model(images).flatten(2).transpose(1, 2)


def test_probe_of_a_backbone_trained_for_the_scenes_beats_random_weights():
    S = 64
    train = get_dataset("scenes", None, "train", n=256, image_size=S)
    val = get_dataset("scenes", None, "val", n=64, image_size=S)
    x = torch.stack([train[i][0] for i in range(len(train))])
    y = torch.stack([train[i][1] for i in range(len(train))])
    xv = torch.stack([val[i][0] for i in range(len(val))])
    yv = torch.stack([val[i][1] for i in range(len(val))])

    random_net, trained = _TinyCNN(0), _TinyCNN(0)
    head = nn.Conv2d(32, 15, 1)  # supervised training of backbone + head on the training masks
    opt = torch.optim.AdamW([*trained.parameters(), *head.parameters()], lr=3e-3)
    g = torch.Generator().manual_seed(0)
    for _ in range(120):
        idx = torch.randint(0, len(train), (32,), generator=g)
        loss = upsampled_cross_entropy(head(trained(x[idx])), y[idx], 255)
        opt.zero_grad()
        loss.backward()
        opt.step()
    trained.eval()

    scores = {}
    for name, net in (("random", random_net), ("trained", trained)):
        ext = FeatureExtractor(net, fn=_tokens)
        ft, fv = extract_features(ext, x[:128]), extract_features(ext, xv)  # probe: 128 train, 64 val scenes
        scores[name] = linear_probe(ft, y[:128], fv, yv, 15, epochs=10, batch_size=16, lr=1e-2, device="cpu")
    rnd, trn = scores["random"], scores["trained"]
    assert trn.miou > rnd.miou + 0.06 and trn.miou > 1.4 * rnd.miou, (rnd.miou, trn.miou)
    assert trn.pixel_accuracy > rnd.pixel_accuracy + 0.1, (rnd.pixel_accuracy, trn.pixel_accuracy)


# ============================================================================ the probe of a run


def _vit(seed: int) -> nn.Module:
    model = create_backbone("vit_small_patch16_224", img_size=IMG, init_weights=False, **VIT_KW)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for t in model.state_dict().values():
            if t.is_floating_point():
                t.copy_((1.0 if t.ndim == 1 else 0.0) + 0.2 * torch.randn(t.shape, generator=g))
    return model.eval()


@pytest.fixture(scope="module")
def vit_run(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("run")
    for i, ep in enumerate(EPOCHS):
        torch.save({"state_dict": _vit(i).state_dict(), "epoch": ep}, root / f"model_ep{ep}.pth")
    return root


def _cfg(run: Path, out: Path, **kw) -> ProbeConfig:
    base = dict(
        dataset="scenes",
        out=str(out),
        image_size=IMG,
        num_train=N_TRAIN,
        num_val=N_VAL,
        epochs=3,
        head_batch_size=8,
        lr=1e-2,
        model_kwargs=VIT_KW,
        device="cpu",
    )
    return ProbeConfig(str(run), "generic", **{**base, **kw})


@pytest.fixture(scope="module")
def probed(vit_run, tmp_path_factory):
    out = tmp_path_factory.mktemp("probe")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return probe(_cfg(vit_run, out), progress=False)
    finally:
        torch.set_num_threads(threads)


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_probe_csv_has_one_row_per_checkpoint_in_epoch_order(probed, vit_run):
    assert probed.ok and probed.computed == len(EPOCHS)
    text = (probed.out_dir / "probe.csv").read_text()
    assert text.splitlines()[0] == ",".join(PROBE_COLUMNS + KNN_COLUMNS)  # the scenes have image labels
    rows = _rows(probed.out_dir / "probe.csv")
    assert [int(r["epoch"]) for r in rows] == sorted(EPOCHS)
    assert [r["checkpoint"] for r in rows] == [str(vit_run / f"model_ep{e}.pth") for e in sorted(EPOCHS)]
    assert {r["dataset"] for r in rows} == {"scenes"}
    for r in rows:
        assert 0.0 <= float(r["miou"]) <= 1.0 and 0.0 <= float(r["pixel_accuracy"]) <= 1.0
    record = json.loads((probed.out_dir / "probe_scenes.json").read_text())
    assert record["settings"]["epochs"] == 3 and record["data"]["train"]["num_samples"] == N_TRAIN
    assert len(record["data"]["class_names"]) == 15
    for c in record["checkpoints"]:
        assert len(c["iou"]) == 15 and len(c["train_loss"]) == 3
        assert {"load", "extract", "head_train", "head_eval"} <= set(c["timings"])


def test_probe_numbers_equal_a_direct_computation(probed, vit_run):
    cfg = _cfg(vit_run, probed.out_dir)
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1) * 255
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1) * 255
    data = {}
    for split, n in (("train", N_TRAIN), ("val", N_VAL)):
        ds = get_dataset("scenes", None, split, n=n, image_size=IMG)
        imgs = torch.from_numpy(ds.scenes.scenes.images).permute(0, 3, 1, 2).float()
        data[split] = ((imgs - mean) / std, torch.from_numpy(ds.scenes.scenes.masks))
    path = vit_run / f"model_ep{EPOCHS[1]}.pth"
    model = load_backbone(path, "generic", "vit_small_patch16_224", model_kwargs=VIT_KW, img_size=IMG)
    feats = {s: extract_features(FeatureExtractor(model), data[s][0]).half() for s in data}
    direct = linear_probe(
        feats["train"],
        data["train"][1],
        feats["val"],
        data["val"][1],
        15,
        epochs=cfg.epochs,
        batch_size=cfg.head_batch_size,
        lr=cfg.lr,
        seed=cfg.seed,
        device="cpu",
    )
    got = next(r for r in probed.results if r.epoch == EPOCHS[1])
    assert got.miou == pytest.approx(direct.miou, abs=1e-9)
    assert got.pixel_accuracy == pytest.approx(direct.pixel_accuracy, abs=1e-9)
    assert got.train_loss == pytest.approx(direct.train_loss, rel=1e-6)


def test_rerun_skips_finished_checkpoints_and_a_new_setting_recomputes(probed, vit_run):
    calls = []
    seen = lambda r: calls.append(Path(r.checkpoint).name)  # noqa: E731 - called for each checkpoint probed
    again = probe(_cfg(vit_run, probed.out_dir), progress=False, after_checkpoint=seen)
    assert calls == [] and again.computed == 0
    assert [r.miou for r in again.results] == [r.miou for r in probed.results]
    # a killed run loses only the checkpoint in flight: drop one cached result and rerun
    victim = next((probed.out_dir / "cache" / "probe").glob(f"model_ep{EPOCHS[0]}.pth.*.json"))
    victim.unlink()
    again = probe(_cfg(vit_run, probed.out_dir), progress=False, after_checkpoint=seen)
    assert calls == [f"model_ep{EPOCHS[0]}.pth"] and again.computed == 1
    assert [r.miou for r in again.results] == [r.miou for r in probed.results]
    # another head schedule is another result
    calls.clear()
    other = probe(_cfg(vit_run, probed.out_dir, epochs=1), progress=False, after_checkpoint=seen)
    assert len(calls) == len(EPOCHS) and other.computed == len(EPOCHS)


def test_a_cached_result_whose_confusions_are_unreadable_is_probed_again(probed, vit_run, tmp_path):
    """A result without its per-image confusions (an older cache format, a damaged file) cannot get
    an interval: it is probed again, never reported as "not probed"."""
    import shutil

    ref = probe(_cfg(vit_run, probed.out_dir), progress=False)  # the shared folder, as these settings leave it
    out = tmp_path / "out"
    shutil.copytree(probed.out_dir, out)
    victim = next((out / "cache" / "probe").glob(f"model_ep{EPOCHS[0]}.pth.*.npz"))
    victim.write_bytes(b"not an npz")
    again = probe(_cfg(vit_run, out), progress=False)
    assert again.computed == 1 and again.ok
    assert [r.miou for r in again.results] == [r.miou for r in ref.results]


def test_spilled_cache_gives_the_same_numbers_within_its_bound(probed, vit_run, tmp_path):
    bound = 60_000  # bytes: the training features (55 kB) fit; the rest spills to disk
    seen = {}
    real_close = FeatureCache.close

    def close(self):
        seen.update(self.stats(), spilled=sorted(n for n in self._arrays if self.is_spilled(n)))
        seen["files"] = sorted(p.name for p in self._dir.iterdir()) if self._dir else []
        real_close(self)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(FeatureCache, "close", close)
        res = probe(_cfg(vit_run, tmp_path, cache_memory_gb=bound / (1 << 30)), progress=False)
    assert res.ok and [r.miou for r in res.results] == [r.miou for r in probed.results]
    assert seen["peak_in_memory_bytes"] <= bound and seen["on_disk_bytes"] > 0
    assert "train.images" in seen["spilled"] and "train.features" not in seen["spilled"]
    assert any(f.startswith("train.images") for f in seen["files"])
    assert not any((tmp_path / "cache" / "probe" / "spill").iterdir())  # spill files removed at the end
    # bound 0: everything on disk, same numbers
    res0 = probe(_cfg(vit_run, tmp_path / "zero", cache_memory_gb=0.0), progress=False)
    assert [r.miou for r in res0.results] == [r.miou for r in probed.results]
    assert res0.cache_stats["peak_in_memory_bytes"] == 0


def test_feature_cache_bound_and_spill(tmp_path):
    cache = FeatureCache(1000, tmp_path)
    a = cache.allocate("a", (10, 50), np.float16)  # 1000 bytes: fits exactly
    b = cache.allocate("b", (3,), np.float32)  # no room left: disk
    assert not cache.is_spilled("a") and cache.is_spilled("b") and isinstance(b, np.memmap)
    b[:] = [1, 2, 3]
    assert cache.in_memory_bytes == 1000 and cache.on_disk_bytes == 12
    cache.release("a")
    cache.allocate("c", (100,), np.uint8)
    assert not cache.is_spilled("c") and cache.peak_in_memory_bytes == 1000
    a[:] = 1  # still usable by whoever holds it
    cache.close()
    assert list(tmp_path.iterdir()) == []


def test_other_datasets_rows_are_kept_in_probe_csv(vit_run, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "probe.csv").write_text(
        "checkpoint,epoch,dataset,miou,pixel_accuracy\n/x/a.pth,1,voc,0.5,0.9\n/x/b.pth,2,scenes,0.1,0.2\n"
    )
    res = probe(_cfg(vit_run, out, epochs=1), progress=False)
    rows = _rows(out / "probe.csv")
    assert rows[0] == {
        "checkpoint": "/x/a.pth",
        "epoch": "1",
        "dataset": "voc",
        "miou": "0.5",
        "pixel_accuracy": "0.9",
        "miou_low": "",
        "miou_high": "",
        "heads": "",
        "knn_top1": "",
        "knn_low": "",
        "knn_high": "",
    }
    assert [r["checkpoint"] for r in rows[1:]] == [r.checkpoint for r in res.results]  # old scenes rows replaced


def test_bad_mask_in_a_folder_dataset_names_the_file(vit_run, tmp_path):
    root = tmp_path / "data"
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    (root / "classes.txt").write_text("a\nb\nc\n")
    for i in range(3):
        Image.fromarray(np.full((IMG, IMG, 3), 40 * i, np.uint8)).save(root / "images" / f"s{i}.png")
        m = np.full((IMG, IMG), i % 3, np.uint8)
        if i == 1:
            m[5:9, 5:9] = 7
        Image.fromarray(m).save(root / "masks" / f"s{i}.png")
    cfg = _cfg(
        vit_run,
        tmp_path / "out",
        dataset="folder",
        root=str(root),
        train_split="all",
        val_split="all",
        num_train=None,
        num_val=None,
        workers=0,
    )
    with pytest.raises(ValueError, match=r"s1\.png.*7"):
        probe(cfg, progress=False)


def test_a_corrupt_checkpoint_is_recorded_and_the_rest_probed(vit_run, tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    for ep in EPOCHS[:2]:
        (run / f"model_ep{ep}.pth").write_bytes((vit_run / f"model_ep{ep}.pth").read_bytes())
    (run / "model_ep999.pth").write_bytes(b"not a checkpoint")
    parser = argparse.ArgumentParser(prog="dsekit")
    add_probe_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(
        [
            "probe",
            str(run),
            "--dataset",
            "scenes",
            "--method",
            "generic",
            "--out",
            str(tmp_path / "out"),
            "--image-size",
            str(IMG),
            "--num-train",
            str(N_TRAIN),
            "--num-val",
            str(N_VAL),
            "--epochs",
            "1",
            "--head-batch-size",
            "8",
            "--device",
            "cpu",
            "--quiet",
            *[a for k, v in VIT_KW.items() for a in ("--model-kwarg", f"{k}={v}")],
        ]
    )
    assert args.func is run_probe
    assert run_probe(args) == 1
    assert "model_ep999.pth" in capsys.readouterr().err
    rows = _rows(tmp_path / "out" / "probe.csv")
    assert [int(r["epoch"]) for r in rows] == sorted(EPOCHS[:2])
    failed = json.loads(next((tmp_path / "out" / "cache" / "probe").glob("model_ep999.pth.*failed.json")).read_text())
    assert failed["status"] == "failed" and failed["error"]


# ============================================================================ torchrun

_WORKER = """
import json, sys
import torch
from dsekit.probe import ProbeConfig, probe
torch.set_num_threads(1)
res = probe(ProbeConfig(**json.loads(sys.argv[1])), progress=True)
sys.exit(0 if res.ok else 1)
"""


@pytest.mark.slow
def test_two_gloo_processes_give_the_single_process_probe_csv(probed, vit_run, tmp_path):
    import os
    import re
    import socket
    import subprocess
    import sys
    from dataclasses import asdict

    cfg = _cfg(vit_run, tmp_path / "dist")
    script = tmp_path / "worker.py"
    script.write_text(_WORKER)
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[1] / "src") + os.pathsep + env.get("PYTHONPATH", "")
    env.pop("WORLD_SIZE", None)
    logs = tmp_path / "logs"
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nnodes",
        "1",
        "--nproc_per_node",
        "2",
        "--master_addr",
        "127.0.0.1",
        "--master_port",
        str(port),
        "--log_dir",
        str(logs),
        "--redirects",
        "3",
        str(script),
        json.dumps(asdict(cfg)),
    ]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    rank_logs = {int(p.parent.name): p.read_text() for p in logs.rglob("stderr.log")}
    assert proc.returncode == 0, (proc.stderr[-3000:], {r: t[-2000:] for r, t in rank_logs.items()})
    # rank 0 assembled the probe.csv of one process (the numbers are identical)
    rows = _rows(tmp_path / "dist" / "probe.csv")
    expected = [[r.checkpoint, str(r.epoch), "scenes", repr(r.miou), repr(r.pixel_accuracy)] for r in probed.results]
    assert [[r[c] for c in PROBE_COLUMNS[:5]] for r in rows] == expected
    probe(_cfg(vit_run, probed.out_dir), progress=False)  # (cached) other tests rewrite that folder's probe.csv
    single = _rows(probed.out_dir / "probe.csv")  # the intervals too: same confusions, same resamples
    assert [[r[c] for c in PROBE_COLUMNS[5:]] for r in rows] == [[r[c] for c in PROBE_COLUMNS[5:]] for r in single]
    names = [Path(r.checkpoint).name for r in probed.results]
    for rank, text in rank_logs.items():
        done = re.findall(r"probing \[\d+/\d+\] (\S+)", text)
        assert done == names[rank::2], (rank, text[-2000:])
    assert "linear probe on scenes" in rank_logs[0] and "linear probe on scenes" not in rank_logs[1]


# ============================================================================ per-image confusions, intervals, classes


def test_per_image_confusions_add_up_to_the_torchmetrics_matrix(rng_state_guard):
    g = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 3, (12, 4, 4), generator=g)
    feats = (torch.randn(3, 8, generator=g)[labels] + 0.5 * torch.randn(12, 4, 4, 8, generator=g)).reshape(12, 16, 8)
    masks = labels.repeat_interleave(2, 1).repeat_interleave(2, 2)
    masks[:, 0, :] = 255
    r = linear_probe(feats[:8], masks[:8], feats[8:], masks[8:], 3, epochs=2, batch_size=2, device="cpu")
    per_image = r.image_confusion.toarray().reshape(4, 3, 3)
    assert np.array_equal(per_image.sum(0), r.confusion.numpy())
    assert np.array_equal(per_image.sum((1, 2)), np.full(4, 8 * 8 - 8))  # each image: its labelled pixels
    from dsekit.metrics.intervals import iou_from_confusions

    iou = iou_from_confusions(r.confusion.numpy())
    assert [None if np.isnan(v) else pytest.approx(v) for v in iou] == r.iou


def test_probe_writes_intervals_and_per_class_iou(probed, vit_run):
    probe(_cfg(vit_run, probed.out_dir), progress=False)  # (cached) other tests rewrite that folder's outputs
    rows = _rows(probed.out_dir / "probe.csv")
    for r in rows:
        assert float(r["miou_low"]) <= float(r["miou"]) <= float(r["miou_high"]) and r["heads"] == "1"
        assert float(r["miou_low"]) < float(r["miou_high"])
    classes = _rows(probed.out_dir / "probe_scenes_classes.csv")
    assert list(classes[0]) == list(CLASS_COLUMNS)
    assert len(classes) == 15 * len(EPOCHS)
    by_ckpt = {r.checkpoint: r for r in probed.results}
    for c in classes:
        iou = by_ckpt[c["checkpoint"]].iou[int(c["class_id"])]
        assert (c["iou"] == "") == (iou is None)
        if iou is not None:
            assert float(c["iou"]) == pytest.approx(iou)
            assert float(c["iou_low"]) <= float(c["iou"]) + 1e-12 <= float(c["iou_high"]) + 2e-12
    names, conf = read_confusion_table(probed.out_dir / "probe_scenes_confusion.npz")
    assert names == [r["checkpoint"] for r in rows]
    assert len(conf[0]) == 1 and conf[0][0].shape == (N_VAL, 15 * 15)


def test_head_seeds_average_the_heads(vit_run, tmp_path):
    res = probe(_cfg(vit_run, tmp_path / "out", epochs=1, head_seeds=2, glob="model_ep5.pth"), progress=False)
    (r,) = res.results
    assert len(r.head_miou) == 2 and r.head_miou[0] != r.head_miou[1]
    assert r.miou == pytest.approx(sum(r.head_miou) / 2)
    row = _rows(tmp_path / "out" / "probe.csv")[0]
    assert row["heads"] == "2" and float(row["miou_low"]) <= r.miou <= float(row["miou_high"])
    with pytest.raises(ValueError, match="head_seeds"):
        probe(_cfg(vit_run, tmp_path / "x", head_seeds=0), progress=False)


def test_hand_added_column_and_other_rows_survive_a_probe(vit_run, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "probe.csv").write_text("checkpoint,epoch,dataset,miou,pixel_accuracy,note\n/x/a.pth,1,voc,0.5,0.9,mine\n")
    probe(_cfg(vit_run, out, epochs=1, glob="model_ep5.pth"), progress=False)
    rows = _rows(out / "probe.csv")
    assert rows[0]["note"] == "mine" and rows[0]["dataset"] == "voc" and rows[0]["miou"] == "0.5"
    assert [r["dataset"] for r in rows] == ["voc", "scenes"]


def test_spill_folders_of_killed_probes_are_removed_by_the_next_one(tmp_path):
    import os
    import subprocess
    import sys

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = tmp_path / f"{spill_prefix()}{int(dead.stdout)}-abc"
    stale.mkdir()
    (stale / "train.features.float16.mmap").write_bytes(b"x" * 100)
    live = tmp_path / f"{spill_prefix()}{os.getpid()}-def"
    live.mkdir()
    other_host = tmp_path / "spill-otherhost-1-ghi"
    other_host.mkdir()
    cache = FeatureCache(0, tmp_path)
    cache.allocate("a", (4,), np.float32)  # spills: makes its folder, removing the stale one
    assert not stale.exists() and live.exists() and other_host.exists()
    cache.close()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([live.name, other_host.name])


def test_plain_image_mask_folder_probes_with_inferred_classes_and_split(vit_run, tmp_path, capsys):
    from PIL import Image

    from dsekit.cli import main

    root = tmp_path / "data"
    rng = np.random.default_rng(0)
    for k in range(30):
        (root / "images").mkdir(parents=True, exist_ok=True)
        (root / "masks").mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (IMG, IMG, 3), dtype=np.uint8)).save(root / "images" / f"s{k:02d}.jpg")
        m = np.zeros((IMG, IMG), np.uint8)
        m[: IMG // 2] = 1 + k % 2
        Image.fromarray(m).save(root / "masks" / f"s{k:02d}.png")
    out = tmp_path / "out"
    rc = main(
        [
            "probe",
            str(vit_run),
            "--method",
            "generic",
            "--dataset",
            "folder",
            "--root",
            str(root),
            "--image-size",
            str(IMG),
            *sum((["--model-kwarg", f"{k}={v}"] for k, v in VIT_KW.items()), []),
            "--epochs",
            "1",
            "--glob",
            "model_ep5.pth",
            "--quiet",
            "--out",
            str(out),
        ]
    )
    assert rc == 0, capsys.readouterr().err
    record = json.loads((out / "probe_folder_data.json").read_text())  # label: folder:<root name>
    assert record["data"]["class_names"] == ["class_0", "class_1", "class_2"]
    assert record["data"]["train"]["classes_from"] == "masks"
    assert record["data"]["val"]["split_from"].startswith("sha256(name)")
    assert record["data"]["train"]["num_samples"] + record["data"]["val"]["num_samples"] == 30
    rc = main(
        [
            "probe",
            str(vit_run),
            "--method",
            "generic",
            "--dataset",
            "folder",
            "--root",
            str(root),
            "--num-classes",
            "4",
            "--image-size",
            str(IMG),
            *sum((["--model-kwarg", f"{k}={v}"] for k, v in VIT_KW.items()), []),
            "--epochs",
            "1",
            "--glob",
            "model_ep5.pth",
            "--quiet",
            "--out",
            str(tmp_path / "out4"),
        ]
    )
    assert rc == 0
    assert len(json.loads((tmp_path / "out4" / "probe_folder_data.json").read_text())["data"]["class_names"]) == 4


def test_replaced_images_are_probed_anew(vit_run, tmp_path):
    from PIL import Image

    root = tmp_path / "data"
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    rng = np.random.default_rng(1)
    for k in range(30):
        Image.fromarray(rng.integers(0, 255, (IMG, IMG, 3), dtype=np.uint8)).save(root / "images" / f"s{k:02d}.bmp")
        m = np.zeros((IMG, IMG), np.uint8)
        m[: IMG // 2] = 1
        Image.fromarray(m).save(root / "masks" / f"s{k:02d}.png")
    cfg = _cfg(
        vit_run,
        tmp_path / "out",
        dataset="folder",
        root=str(root),
        num_train=None,
        num_val=None,
        epochs=1,
        glob="model_ep5.pth",
    )
    assert probe(cfg, progress=False).computed == 1
    assert probe(cfg, progress=False).computed == 0
    # every image replaced by another of the same size: not the same data, not the same mIoU
    for k in range(30):
        Image.fromarray(rng.integers(0, 255, (IMG, IMG, 3), dtype=np.uint8)).save(root / "images" / f"s{k:02d}.bmp")
    assert probe(cfg, progress=False).computed == 1


def test_a_bad_mask_read_in_a_worker_is_named_without_the_workers_traceback(vit_run, tmp_path, capsys):
    from PIL import Image

    from dsekit.cli import main

    root = tmp_path / "data"
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    rng = np.random.default_rng(2)
    for k in range(30):
        Image.fromarray(rng.integers(0, 255, (IMG, IMG, 3), dtype=np.uint8)).save(root / "images" / f"s{k:02d}.png")
        Image.fromarray(np.zeros((IMG, IMG), np.uint8)).save(root / "masks" / f"s{k:02d}.png")
    (root / "classes.txt").write_text("bg\nthing\n")
    bad = np.zeros((IMG, IMG), np.uint8)
    bad[0, 0] = 7  # not a class of classes.txt
    Image.fromarray(bad).save(root / "masks" / "s03.png")
    rc = main(
        [
            "probe",
            str(vit_run),
            "--method",
            "generic",
            "--dataset",
            "folder",
            "--root",
            str(root),
            "--val-split",
            "all",
            "--image-size",
            str(IMG),
            "--workers",
            "2",
            *sum((["--model-kwarg", f"{k}={v}"] for k, v in VIT_KW.items()), []),
            "--epochs",
            "1",
            "--glob",
            "model_ep5.pth",
            "--quiet",
            "--out",
            str(tmp_path / "out"),
        ]
    )
    err = capsys.readouterr().err
    assert rc == 2 and "s03.png" in err and "7" in err
    assert "Traceback" not in err and "worker" not in err
