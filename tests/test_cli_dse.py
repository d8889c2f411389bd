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
    assert (
        main(
            [
                "dse",
                str(tmp_path / "f.npy"),
                "--local-labels",
                str(tmp_path / "l.npy"),
                "--global-labels",
                str(tmp_path / "g.npy"),
                "--json",
                *ARGS,
            ]
        )
        == 0
    )
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
    out = subprocess.run(
        [sys.executable, "-m", "dsekit", "dse", str(tmp_path / "f.npy"), "--json", *ARGS],
        capture_output=True,
        text=True,
        check=True,
    )
    assert set(json.loads(out.stdout)) == set(TERMS)


@pytest.mark.parametrize("normalize", [True, False])
def test_features_near_the_float32_limit_are_measured_not_collapsed(normalize, tmp_path):
    from dsekit import dse
    from dsekit.synthetic import clustered_features

    x = clustered_features(16, 16, 8, classes=4, seed=0)
    ref = dse(x, seed=0, global_clusters=4, normalize=normalize)
    for scale in (1e20, 1e-25):
        r = dse(x * scale, seed=0, global_clusters=4, normalize=normalize)
        assert not r.degenerate
        for k, v in ref.as_dict().items():
            assert r.as_dict()[k] == pytest.approx(v, rel=1e-4, abs=1e-6), (scale, k)
    # through the CLI too: exit 0, finite terms
    np.save(tmp_path / "big.npy", (x * 1e20).numpy())
    args = [str(tmp_path / "big.npy"), "--global-clusters", "4", "--json"] + ([] if normalize else ["--no-normalize"])
    out = subprocess.run([sys.executable, "-m", "dsekit.cli", "dse", *args], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    values = json.loads(out.stdout)
    assert all(np.isfinite(v) for v in values.values())
    assert values["dse_raw"] == pytest.approx(ref.dse_raw, rel=1e-4)


def test_float128_and_big_endian_arrays_are_accepted(tmp_path):
    from dsekit.synthetic import clustered_features

    x = clustered_features(8, 16, 8, classes=4, seed=1).numpy()
    outs = []
    for name, arr in (("native", x), ("big", x.astype(">f4")), ("wide", x.astype(np.longdouble))):
        np.save(tmp_path / f"{name}.npy", arr)
        out = subprocess.run(
            [
                sys.executable,
                "-m",
                "dsekit.cli",
                "dse",
                str(tmp_path / f"{name}.npy"),
                "--global-clusters",
                "4",
                "--json",
            ],
            capture_output=True,
            text=True,
        )
        assert out.returncode == 0 and "Traceback" not in out.stderr, (name, out.stderr)
        outs.append(json.loads(out.stdout))
    assert outs[0] == outs[1]
    assert outs[2]["dse_raw"] == pytest.approx(outs[0]["dse_raw"], rel=1e-5)


def test_unsigned_and_big_endian_label_arrays_are_accepted(tmp_path, capsys):
    rng = np.random.default_rng(0)
    x = clustered_features(8, 16, 8, classes=4, seed=2).numpy()
    local = rng.integers(0, 3, (8, 16))
    glob = rng.integers(0, 4, (8, 16))
    np.save(tmp_path / "f.npy", x)

    def run(local_path, global_path):
        rc = main(
            [
                "dse",
                str(tmp_path / "f.npy"),
                "--local-labels",
                str(local_path),
                "--global-labels",
                str(global_path),
                "--global-clusters",
                "4",
                "--json",
            ]
        )
        out = capsys.readouterr()
        assert "Traceback" not in out.err
        return rc, out

    results = []
    for dt in ("int64", "uint8", "uint16", "uint32", "uint64", ">i4"):
        np.save(tmp_path / f"l_{dt}.npy", local.astype(dt))
        np.save(tmp_path / f"g_{dt}.npy", glob.astype(dt))
        rc, out = run(tmp_path / f"l_{dt}.npy", tmp_path / f"g_{dt}.npy")
        assert rc == 0, (dt, out.err)
        results.append(json.loads(out.out))
    assert all(r == results[0] for r in results)
    np.save(tmp_path / "bad.npy", np.full((8, 16), 2**40, dtype="uint64"))  # out of range: a clear error
    rc, out = run(tmp_path / "bad.npy", tmp_path / "g_int64.npy")
    assert rc == 2 and "expected values in [0, 3)" in out.err


def test_numpy_load_errors_name_the_file(tmp_path, capsys):
    bad = tmp_path / "broken.npy"
    bad.write_bytes(b"\x93NUMPY garbage that is not a header")
    assert main(["dse", str(bad)]) == 2
    err = capsys.readouterr().err
    assert str(bad) in err and "could not be read as .npy" in err
