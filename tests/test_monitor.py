import warnings

import pytest
import torch
from torch import nn

from dsekit.backbones import create_backbone
from dsekit.train.monitor import DenseDegradationWarning, DSEMonitor

SMALL = dict(global_clusters=8, images_per_group=4)


class Scripted(DSEMonitor):
    """A monitor whose DSE follows a given curve (tests the alarm logic alone)."""

    def __init__(self, curve, **kw):
        super().__init__(images=torch.zeros(1, 3, 8, 8), **kw)
        self.curve = list(curve)

    def compute(self, model):
        v = self.curve.pop(0)
        return dict(inter_class_distance=v, intra_class_image=0.0, intra_class_batch=0.0, effective_dimensionality=0.0)


def _run(mon, n):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for step in range(n):
            mon.update(nn.Identity(), step * 10, checkpoint=f"ckpt{step}.pth")
    return [w for w in caught if issubclass(w.category, DenseDegradationWarning)]


def test_alarm_fires_on_falling_curve_and_names_best():
    mon = Scripted([1.0, 1.2, 1.1, 1.0, 0.9, 0.8], margin=0.05, patience=3)
    fired = _run(mon, 6)
    assert len(fired) == 1
    msg = str(fired[0].message)
    assert "step 10" in msg and "ckpt1.pth" in msg
    assert mon.alarm and mon.best.step == 10 and mon.degraded_for == 4


def test_alarm_silent_on_rising_and_noisy_flat_curves():
    assert _run(Scripted([0.5, 0.6, 0.7, 0.8, 0.9, 1.0], patience=2), 6) == []
    assert _run(Scripted([1.0, 0.99, 1.0, 0.995, 0.99, 1.0], margin=0.02, patience=2), 6) == []


def test_alarm_resets_after_new_best():
    mon = Scripted([1.0, 0.8, 0.7, 1.5, 1.4], margin=0.05, patience=2)
    fired = _run(mon, 5)
    assert len(fired) == 1 and not mon.alarm


def test_every_and_state_roundtrip():
    mon = Scripted([1.0, 2.0, 3.0], every=2)
    _run(mon, 5)
    assert [e.step for e in mon.history] == [0, 20, 40]
    other = Scripted([], every=2)
    other.load_state_dict(mon.state_dict())
    assert [e.dse for e in other.history] == [e.dse for e in mon.history]


def test_real_model_evaluation_restores_mode_and_rng():
    model = create_backbone("vit_small_patch16_224", img_size=32, depth=1).train()
    images = torch.randn(16, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    mon = DSEMonitor(images, local_clusters=2, global_clusters=4, images_per_group=4)
    state = torch.get_rng_state()
    ev = mon.update(model, step=1)
    assert torch.equal(state, torch.get_rng_state())
    assert model.training
    assert ev is not None and all(torch.isfinite(torch.tensor(v)) for v in ev.metrics().values())
    again = DSEMonitor(images, local_clusters=2, global_clusters=4, images_per_group=4).update(model, step=1)
    assert again.dse == ev.dse


def test_bad_images():
    with pytest.raises(ValueError, match="images"):
        DSEMonitor(torch.zeros(0, 3, 8, 8))


def test_lightning_callback_drives_model_checkpoint(tmp_path):
    pl = pytest.importorskip("pytorch_lightning")
    from dsekit.train.monitor import DSEMonitorCallback

    torch.manual_seed(0)

    class Module(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.backbone = create_backbone("vit_small_patch16_224", img_size=32, depth=1)

        def training_step(self, batch, _):
            (x,) = batch
            return self.backbone.forward_features(x).pow(2).mean()

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.5)

    images = torch.randn(16, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    data = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(images), batch_size=8)
    mon = DSEMonitor(images, local_clusters=2, global_clusters=4, images_per_group=4)
    ckpt = pl.callbacks.ModelCheckpoint(dirpath=tmp_path, monitor="dse", mode="max", save_top_k=1)
    trainer = pl.Trainer(
        max_epochs=3,
        callbacks=[DSEMonitorCallback(mon), ckpt],
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        accelerator="cpu",
    )
    trainer.fit(Module(), data)
    assert "dse" in trainer.callback_metrics and "effective_dimensionality" in trainer.callback_metrics
    assert len(mon.history) == 3
    best = max(e.dse for e in mon.history)
    assert float(ckpt.best_model_score) == pytest.approx(best, rel=1e-6)
    assert trainer.callback_metrics["dse"].item() == pytest.approx(mon.history[-1].dse, rel=1e-6)
