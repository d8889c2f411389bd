import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from dsekit.cli import main
from dsekit.metrics.dse import TERMS
from dsekit.synthetic import clustered_features


@pytest.fixture
def feats():
    return clustered_features(8, 49, 16, classes=8, seed=0).numpy()


ARGS = ["--global-clusters", "8", "--images-per-group", "4"]


@pytest.mark.parametrize("suffix", [".npy", ".npz", ".pt", ".safetensors"])
def test_json_output_all_formats(tmp_path, feats, capsys, suffix):
    path = tmp_path / f"f{suffix}"
    if suffix == ".npy":
        np.save(path, feats)
    elif suffix == ".npz":
        np.savez(path, features=feats, other=np.zeros(3))
    elif suffix == ".pt":
        torch.save({"features": torch.from_numpy(feats)}, path)
    else:
        from safetensors.torch import save_file

        save_file({"features": torch.from_numpy(feats)}, str(path))
    assert main(["dse", str(path), "--json", *ARGS]) == 0
    out = json.loads(capsys.readouterr().out)
    assert list(out) == list(TERMS)
    np.save(tmp_path / "ref.npy", feats)
    assert main(["dse", str(tmp_path / "ref.npy"), "--json", *ARGS]) == 0
    assert json.loads(capsys.readouterr().out) == out


def test_table_output_and_labels(tmp_path, feats, capsys):
    np.save(tmp_path / "f.npy", feats)
    assert main(["dse", str(tmp_path / "f.npy"), *ARGS]) == 0
    assert "effective_dimensionality" in capsys.readouterr().out
    np.save(tmp_path / "l.npy", np.zeros((8, 49), dtype=np.int64))
    np.save(tmp_path / "g.npy", (np.arange(8 * 49).reshape(8, 49) % 8).astype(np.int64))
    assert main(["dse", str(tmp_path / "f.npy"), "--local-labels", str(tmp_path / "l.npy"),
                 "--global-labels", str(tmp_path / "g.npy"), "--json", *ARGS]) == 0
    assert set(json.loads(capsys.readouterr().out)) == set(TERMS)


def test_errors_name_the_file(tmp_path, capsys):
    assert main(["dse", str(tmp_path / "missing.npy")]) == 2
    assert "missing.npy" in capsys.readouterr().err
    bad = tmp_path / "bad.npy"
    np.save(bad, np.zeros((3, 4)))
    assert main(["dse", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "bad.npy" in err and "(B, N, d)" in err
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(b"not a checkpoint")
    assert main(["dse", str(corrupt)]) == 2
    assert "corrupt.pt" in capsys.readouterr().err


def test_module_entry_point(tmp_path, feats):
    np.save(tmp_path / "f.npy", feats)
    out = subprocess.run([sys.executable, "-m", "dsekit", "dse", str(tmp_path / "f.npy"), "--json", *ARGS],
                         capture_output=True, text=True, check=True)
    assert set(json.loads(out.stdout)) == set(TERMS)
