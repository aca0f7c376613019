"""The authors' own training loop on the generated MNIST-1D, to tell the paper's protocol from ours (docs/mnist1d.md).

Trains the paper's CNN and MLP (``MNIST1DCNN``, ``MNIST1DMLP``: layer for layer the authors' ConvBase and MLPBase, as
tests/cli/test_mnist1d.py checks) as the authors' train.py does
(greydanus/mnist1d at 08ff47fc74375c6aca30416a2080ea5695f9b751, ``train_model``): Adam at 1e-2 without weight decay,
6001 steps of 100 sequences taken in a fixed order, cycling through the training set; then prints the final test
accuracy over seeds 42 (theirs), 0, 1 and 2. Once on all 4000 generated training sequences (their protocol), once on
the 3600 of ``data=mnist1d``'s train split (split_seed 0), and once on those 3600 reshuffled at each pass, as
``ls-train`` takes them. Plain PyTorch, no Lightning; about 3 CPU-minutes with one thread. Prints the table of
docs/mnist1d.md:

    OMP_NUM_THREADS=1 python docs/mnist1d_authors_loop.py
"""

import random
import statistics

import numpy as np
import torch
from mnist1d.data import get_dataset_args, make_dataset
from torch import nn

from ls_lightning.cli.models import MNIST1DCNN, MNIST1DMLP

SEEDS = (42, 0, 1, 2)


def set_seed(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def train(model: nn.Module, x: torch.Tensor, y: torch.Tensor, reshuffle: bool, steps: int = 6000) -> nn.Module:
    """The authors' loop: batch ``step`` is rows [100·step, 100·step + 100) modulo the set (their ``bix``), of the
    set in a fixed order, or in a new random order at each pass when ``reshuffle``."""
    optimizer = torch.optim.Adam(model.parameters(), 1e-2, weight_decay=0)
    order = torch.arange(len(y))
    for step in range(steps + 1):
        start = (step * 100) % len(y)
        if reshuffle and start < 100:
            order = torch.randperm(len(y))
        index = order[start : start + 100]
        nn.functional.cross_entropy(model(x[index]), y[index]).backward()
        optimizer.step()
        optimizer.zero_grad()
    return model


def main() -> None:
    data = make_dataset(get_dataset_args())
    x, y = torch.tensor(data["x"], dtype=torch.float32), torch.tensor(data["y"])
    x_test, y_test = torch.tensor(data["x_test"], dtype=torch.float32), torch.tensor(data["y_test"])
    split = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))[400:]  # data=mnist1d's train split
    runs = [
        ("CNN", MNIST1DCNN, "all 4000, fixed order (the authors')", x, y, False),
        ("CNN", MNIST1DCNN, "our 3600, fixed order", x[split], y[split], False),
        ("CNN", MNIST1DCNN, "our 3600, reshuffled at each pass", x[split], y[split], True),
        ("MLP", MNIST1DMLP, "all 4000, fixed order (the authors')", x, y, False),
    ]
    print("| model | training sequences | test acc (%) per seed 42, 0, 1, 2 | mean ± std |")
    print("|---|---|---|---|")
    for name, cls, label, x_train, y_train, reshuffle in runs:
        accuracies = []
        for seed in SEEDS:
            set_seed(seed)
            model = cls(num_features=40, num_classes=10)
            train(model, x_train, y_train, reshuffle)
            with torch.no_grad():
                accuracies.append(100 * (model(x_test).argmax(-1) == y_test).float().mean().item())
        shown = ", ".join(f"{a:.1f}" for a in accuracies)
        spread = f"{statistics.mean(accuracies):.2f} ± {statistics.stdev(accuracies):.2f}"
        print(f"| {name} | {label} | {shown} | {spread} |", flush=True)


if __name__ == "__main__":
    main()
