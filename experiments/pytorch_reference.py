"""The reference study's PyTorch training loop, timed on this machine (optional: needs torch).

    pip install torch        # CPU wheel; not a dependency of lstmq
    python -m experiments.pytorch_reference --hidden 24 128

The model of the reference pipeline: ``nn.LSTM(features, hidden, layers, batch_first=True)``,
a ``nn.Linear`` readout of the last time step, Adam (learning rate 1e-3) on the cross
entropy, shuffled batches of fixed-length clips. Data are synthetic (only the shapes
matter for timing) and already in memory as tensors, with no DataLoader, so the figure is,
if anything, faster than the reference pipeline. ``experiments.benchmark`` calls
``time_training`` for its same-machine PyTorch column when torch is importable.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

from experiments import common


def torch_available() -> bool:
    try:
        import torch  # noqa: F401
    except ImportError:
        return False
    return True


def epoch_runner(hidden: int, layers: int = 2, features: int = 13, classes: int = 10,
                 clips: int = 2400, frames: int = 36, batch_size: int = 64,
                 seed: int = 0) -> tuple[Callable[[], float], dict[str, Any]]:
    """The reference model and loop ready to train: ``(epoch, info)``, where ``epoch()``
    trains one epoch and returns its seconds (call it once untimed to warm up).

    Raises:
      ImportError: torch is not installed (it is optional: ``pip install torch``).
    """
    try:
        import torch
        from torch import nn
    except ImportError as error:
        raise ImportError("the PyTorch reference needs torch: pip install torch") from error

    torch.manual_seed(seed)

    class Reference(nn.Module):
        def __init__(self):
            super().__init__()
            self.lstm = nn.LSTM(features, hidden, num_layers=layers, batch_first=True)
            self.readout = nn.Linear(hidden, classes)

        def forward(self, x):
            outputs, _ = self.lstm(x)
            return self.readout(outputs[:, -1])

    model = Reference()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    loss_fn = nn.CrossEntropyLoss()
    x = torch.randn(clips, frames, features)
    labels = torch.randint(0, classes, (clips,))

    def epoch() -> float:
        start = time.perf_counter()
        model.train()
        for index in torch.randperm(clips).split(batch_size):
            optimizer.zero_grad()
            loss = loss_fn(model(x[index]), labels[index])
            loss.backward()
            optimizer.step()
        return time.perf_counter() - start

    info = {"hidden": hidden, "layers": layers, "clips": clips, "frames": frames,
            "batch_size": batch_size, "threads": torch.get_num_threads(),
            "torch": torch.__version__}
    return epoch, info


def time_training(hidden: int, layers: int = 2, features: int = 13, classes: int = 10,
                  clips: int = 2400, frames: int = 36, batch_size: int = 64, epochs: int = 3,
                  seed: int = 0) -> dict[str, Any]:
    """Seconds per epoch (spread over ``epochs`` timed epochs after one warm-up epoch).

    Raises:
      ImportError: torch is not installed (it is optional: ``pip install torch``).
    """
    epoch, info = epoch_runner(hidden, layers, features, classes, clips, frames, batch_size,
                               seed)
    warmup = epoch()
    seconds = common.spread([epoch() for _ in range(epochs)])
    return {**info, "warmup_seconds": warmup, "seconds_per_epoch": seconds,
            "clips_per_second": clips / seconds["median"]}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m experiments.pytorch_reference",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--hidden", type=int, nargs="+", default=[24, 128])
    parser.add_argument("--epochs", type=int, default=3, help="timed epochs after a warm-up")
    args = parser.parse_args(argv)
    for hidden in args.hidden:
        row = time_training(hidden, epochs=args.epochs)
        s = row["seconds_per_epoch"]
        print(f"PyTorch {row['torch']} ({row['threads']} threads), hidden {hidden}: "
              f"{s['median']:.3f} s/epoch (min {s['min']:.3f}, max {s['max']:.3f}), "
              f"{row['clips_per_second']:,.0f} clips/s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
