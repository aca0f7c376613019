"""Inputs of the loss tests: float64 logits with a gradient and class-index targets, every fourth position ignored."""

from __future__ import annotations

import torch
from torch import Tensor


def logits_and_target(shape, ignored=True, dtype=torch.float64, seed=0) -> tuple[Tensor, Tensor]:
    gen = torch.Generator().manual_seed(seed)
    x = (torch.randn(shape, generator=gen, dtype=torch.float64) * 2).to(dtype)
    target = torch.randint(0, shape[1], (shape[0], *shape[2:]), generator=gen)
    if ignored:
        target.view(-1)[1::4] = -100
    return x.requires_grad_(), target


def grad_of_sum(output: Tensor, x: Tensor) -> Tensor:
    (grad,) = torch.autograd.grad(output.sum(), x)
    return grad
