"""The per-position predictive entropy of ``LossStats`` (``H(q) = −Σ_c q_c log q_c``, asked for with the Brier score)
against PyTorch's softmax in float64, on every path of the losses: the short path, the chunked kernel with few and
many classes, probability targets, the traced path and the fused linear loss; −inf logits give 0·log 0 = 0."""

from __future__ import annotations

import pytest
import torch

from ls_lightning.losses import label_smoothed_cross_entropy_with_stats, linear_label_smoothed_cross_entropy_with_stats


def _entropy(logits: torch.Tensor) -> torch.Tensor:
    q = logits.double().softmax(1)
    return -(q * q.log()).nan_to_num().sum(1)  # q log q → 0 where q = 0


@pytest.mark.parametrize(
    ("n", "c", "weighted", "soft"),
    [(8, 10, False, False), (600, 10, True, False), (300, 200, True, False), (64, 12, False, True)],
    ids=["short", "kernel-few-classes", "kernel-softmax", "probability-targets"],
)
def test_entropy_equals_the_softmax_entropy(n: int, c: int, weighted: bool, soft: bool) -> None:
    gen = torch.Generator().manual_seed(c)
    logits = torch.randn(n, c, generator=gen) * 3
    logits[0, 1] = float("-inf")  # a masked class: q = 0 there
    target = torch.randint(0, c, (n,), generator=gen)
    target[0] = 0
    if soft:
        target = torch.rand(n, c, generator=gen).softmax(1)
    weight = torch.rand(c, generator=gen) + 0.5 if weighted else None
    _, stats = label_smoothed_cross_entropy_with_stats(logits.requires_grad_(), target, 0.1, weight=weight)
    assert stats.entropy is not None and stats.entropy.dtype == torch.float32
    torch.testing.assert_close(stats.entropy.double(), _entropy(logits.detach()), rtol=2e-6, atol=2e-6)
    _, without = label_smoothed_cross_entropy_with_stats(logits, target, 0.1, weight=weight, brier=False)
    assert without.entropy is not None and without.entropy.numel() in (0, n)  # only asked for with the Brier score


def test_traced_path_entropy() -> None:
    logits, target = torch.randn(40, 70) * 2, torch.randint(0, 70, (40,))
    compiled = torch.compile(lambda x, t: label_smoothed_cross_entropy_with_stats(x, t, 0.1)[1].entropy, fullgraph=True)
    torch.testing.assert_close(compiled(logits, target).double(), _entropy(logits), rtol=2e-6, atol=2e-6)


def test_fused_linear_entropy() -> None:
    gen = torch.Generator().manual_seed(1)
    hidden, weight = torch.randn(3, 50, 16, generator=gen), torch.randn(300, 16, generator=gen)
    target = torch.randint(0, 300, (3, 50), generator=gen)
    _, stats = linear_label_smoothed_cross_entropy_with_stats(hidden, weight, target, 0.1)
    expected = _entropy((hidden @ weight.T).reshape(-1, 300))
    torch.testing.assert_close(stats.entropy.double(), expected, rtol=2e-6, atol=2e-6)
