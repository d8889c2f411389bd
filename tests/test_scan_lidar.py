import argparse
import csv
import math

import pytest
import torch

from dsekit.backbones import create_backbone
from dsekit.scan import ScanConfig, lidar_views, scan


def test_lidar_views_are_seeded_and_leave_the_global_rng_alone():
    images = torch.randn(5, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    state = torch.get_rng_state()
    a = lidar_views(images, 4, 3, seed=1)
    assert torch.equal(state, torch.get_rng_state())
    assert a.shape == (4, 3, 3, 32, 32)
    assert torch.equal(a, lidar_views(images, 4, 3, seed=1))
    assert not torch.equal(a, lidar_views(images, 4, 3, seed=2))
    assert not torch.equal(a[0, 0], a[0, 1])
    with pytest.raises(ValueError, match="at least 2"):
        lidar_views(images, 1, 3, seed=0)


def test_scan_lidar_column(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    for ep in (1, 2, 3):
        m = create_backbone("vit_small_patch16_224", img_size=32, depth=1)
        sd = {"module.backbone." + k: v for k, v in m.state_dict().items()}
        torch.save(
            {"teacher": sd, "student": sd, "epoch": ep, "args": argparse.Namespace(a=1)},
            run / f"checkpoint{ep:04d}.pth",
        )
    cfg = ScanConfig(
        str(run),
        "dino",
        model_kwargs={"depth": 1},
        num_images=16,
        image_size=32,
        local_clusters=2,
        global_clusters=4,
        images_per_group=4,
        metrics=("rankme", "lidar"),
        lidar_images=8,
        lidar_views=3,
    )
    res = scan(cfg, progress=False)
    assert res.ok
    rows = list(csv.DictReader(open(res.out_dir / "dse.csv")))
    assert list(rows[0])[8:10] == ["rankme", "lidar"] and list(rows[0])[-2:] == ["lidar_low", "lidar_high"]
    values = [float(r["lidar"]) for r in rows]
    assert all(math.isfinite(v) and 1.0 <= v <= 384 for v in values)
    # LiDAR's interval comes from half-samples of its own images
    assert all(float(r["lidar_low"]) <= float(r["lidar"]) <= float(r["lidar_high"]) for r in rows)
