"""The GPU targets, written once: each benchmark judges its own figure against them and
``gpu_table.py`` judges the table ``gpu.sh`` collects (no torch import here)."""

GPU_DSE_SECONDS_B1024 = 0.1  #: DSE of B = 1024 images in at most this many seconds
GPU_DSE_RATIO_B1024 = 50.0  #: ... and at least this many times faster than the reference
GPU_EXTRACTION = 0.90  #: scan extraction throughput, at least this share of timm's plain forward
GPU_REGULARISER_SHARE = 0.10  #: the regulariser, at most this share of a ViT-S training step
