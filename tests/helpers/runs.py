"""Settings of the small, fast runs that many tests share."""

from __future__ import annotations

#: Settings of the small, fast runs: the offline model's real weights at 64 px, the probe, 1 head + 2 full
#: epochs, a moving average of the weights (so that resume is checked with its state too).
FAST = {"model": "efficientnet_lite0", "epochs": 2, "freeze_epochs": 1, "batch_size": 8, "image_size": 64, "workers": 0,
        "ema": True}

#: The offline model's real weights at a small size, as ``cnnlab train`` options: every run takes seconds.
SMALL_TRAIN_ARGS = ["--model", "efficientnet_lite0", "--image-size", "32", "--workers", "0", "--batch-size", "8"]
