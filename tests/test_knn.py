"""The image-level k-NN (DINO's weighted vote), its bootstrap interval and the image labels."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dsekit.metrics.knn import accuracy_bootstrap, knn_predict


def test_known_answer_on_separated_classes():
    g = torch.Generator().manual_seed(0)
    centres = torch.eye(4) * 10
    train = torch.cat([centres[c] + 0.1 * torch.randn(20, 4, generator=g) for c in range(4)])
    labels = torch.arange(4).repeat_interleave(20)
    test = torch.cat([centres[c] + 0.1 * torch.randn(5, 4, generator=g) for c in range(4)])
    pred = knn_predict(train, labels, test, k=20)
    assert torch.equal(pred, torch.arange(4).repeat_interleave(5))


def test_the_weighted_vote_against_a_brute_force_count():
    g = torch.Generator().manual_seed(1)
    train, test = torch.randn(50, 8, generator=g), torch.randn(30, 8, generator=g)
    labels = torch.randint(0, 3, (50,), generator=g)
    pred = knn_predict(train, labels, test, k=7, temperature=0.5, chunk=4)
    a = torch.nn.functional.normalize(train, dim=1)
    for i, x in enumerate(torch.nn.functional.normalize(test, dim=1)):
        sim = a @ x
        top = sim.argsort(descending=True)[:7]
        votes = [float(sum(torch.exp(sim[j] / 0.5) for j in top if labels[j] == c)) for c in range(3)]
        assert int(pred[i]) == int(np.argmax(votes))


def test_k_larger_than_the_memory_and_bad_input():
    pred = knn_predict(torch.eye(3), torch.tensor([0, 1, 1]), torch.eye(3), k=50)
    assert pred.tolist() == [0, 1, 1] or pred.tolist()[0] == 0
    with pytest.raises(ValueError, match="one label per training"):
        knn_predict(torch.eye(3), torch.tensor([0, 1]), torch.eye(3))
    with pytest.raises(ValueError, match="k >= 1"):
        knn_predict(torch.eye(3), torch.tensor([0, 1, 2]), torch.eye(3), k=0)


def test_accuracy_bootstrap_point_interval_and_pairing():
    rng = np.random.default_rng(0)
    a = rng.random(200) < 0.7
    correct = np.stack([a, a, rng.random(200) < 0.3])
    boot = accuracy_bootstrap(correct, n_resamples=500, seed=0)
    np.testing.assert_allclose(boot.accuracy, correct.mean(axis=1))
    assert np.all(boot.low <= boot.accuracy) and np.all(boot.accuracy <= boot.high)
    np.testing.assert_array_equal(boot.replicates[:, 0], boot.replicates[:, 1])  # the same resamples
    assert boot.high[2] < boot.low[0]  # 0.3 and 0.7 on 200 images are told apart
    with pytest.raises(ValueError, match="n >= 2"):
        accuracy_bootstrap(np.ones((2, 1)))


def test_scene_image_labels_are_the_largest_digit():
    from dsekit.data.scenes import SceneConfig, generate_scenes

    s = generate_scenes(12, "val", image_size=64, seed=3, config=SceneConfig(image_size=64, digits_per_scene=(1, 3)))
    labels = s.image_labels()
    for i in range(12):
        sizes = [
            (b[2] - b[0]) * (b[3] - b[1]) if lab >= 0 else -1
            for b, lab in zip(s.digit_boxes[i], s.digit_labels[i], strict=True)
        ]
        assert labels[i] == s.digit_labels[i][int(np.argmax(sizes))]


def test_folder_image_labels_from_a_file_and_from_folder_names(tmp_path):
    from PIL import Image

    from dsekit.data.segmentation import get_dataset
    from dsekit.probe_data import image_labels, split_image_labels

    root = tmp_path / "data"
    for cls in ("cat", "dog"):
        for i in range(3):
            (root / "images" / cls).mkdir(parents=True, exist_ok=True)
            (root / "masks" / cls).mkdir(parents=True, exist_ok=True)
            Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(root / "images" / cls / f"{i}.png")
            Image.fromarray(np.zeros((8, 8), np.uint8)).save(root / "masks" / cls / f"{i}.png")
    (root / "classes.txt").write_text("bg\n")
    ds = get_dataset("folder", root, "all", image_size=8)
    got = image_labels(ds)
    assert got.names == ["cat", "dog"] and got.labels == [0, 0, 0, 1, 1, 1] and "folder names" in got.source
    (tmp_path / "labels.csv").write_text(
        "name,label\n" + "".join(f"{c}/{i},{'x' if i else 'y'}\n" for c in ("cat", "dog") for i in range(3))
    )
    got = image_labels(ds, str(tmp_path / "labels.csv"))
    assert got.names == ["x", "y"] and got.labels == [1, 0, 0, 1, 0, 0]
    (tmp_path / "short.csv").write_text("cat/0,x\n")
    with pytest.raises(ValueError, match="short.csv: no image label for 5 sample"):
        image_labels(ds, str(tmp_path / "short.csv"))
    assert split_image_labels(ds, ds, None)[1].names == ["cat", "dog"]
