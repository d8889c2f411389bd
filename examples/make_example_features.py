"""Write examples/dense_features.npy: synthetic (32, 196, 96) dense features with 12 classes."""

from pathlib import Path

import numpy as np

from dsekit.synthetic import clustered_features

if __name__ == "__main__":
    z = clustered_features(32, 196, 96, classes=12, classes_per_image=3, seed=0)
    out = Path(__file__).with_name("dense_features.npy")
    np.save(out, z.numpy().astype(np.float32))
    print(f"wrote {out} {tuple(z.shape)}")
