"""The relatives of label smoothing through the mixin, switched by the callback (``LabelSmoothing(objective=...)``):
every objective logs the comparable keys (loss, h_pq, accuracy, calibration, the mean predictive entropy, the
class-wise ECE) and its own term, each equal to a reference computed from the model's outputs with PyTorch and
torchmetrics; the scheduled weight is logged under its own name; what an objective cannot do is refused."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from helpers import Net, quiet_trainer
from torch import Tensor
from torch.utils.data import DataLoader, TensorDataset
from torchmetrics.classification import BinaryCalibrationError, MulticlassCalibrationError

from ls_lightning import LabelSmoothing

C, FEATURES, WEIGHT, GAMMA, MARGIN = 4, 6, 0.2, 2.0, 1.5


class Sharpened(Net):
    """The same initial weights in every test; the layer's logits × 3, confident enough that some logit gaps pass the
    margin."""

    def __init__(self, **mixin: object) -> None:
        torch.manual_seed(0)
        super().__init__(FEATURES, C, **mixin)

    def forward(self, x: Tensor) -> Tensor:
        return super().forward(x) * 3


def _data(n: int, seed: int) -> TensorDataset:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, FEATURES, generator=gen)
    return TensorDataset(x, (x[:, :C].argmax(1) + (torch.rand(n, generator=gen) < 0.3)) % C)


def _reference(objective: str, logits: Tensor, y: Tensor) -> dict[str, float]:
    """The logged keys of the validation epoch, from the model's outputs: PyTorch formulas and torchmetrics."""
    logits = logits.double()
    logq = logits.log_softmax(1)
    q, logq_y = logq.exp(), logq.gather(1, y.unsqueeze(1)).squeeze(1)
    h_pq = F.cross_entropy(logits, y)
    entropy = -(q * logq).sum(1).mean()
    if objective == "confidence_penalty":
        loss = h_pq - WEIGHT * entropy
    elif objective == "focal":
        loss = (-((1 - logq_y.exp()) ** GAMMA) * logq_y).mean()
    elif objective == "flsd53":
        gamma = torch.where(logq_y.exp() < 0.2, 5.0, 3.0)
        loss = (-((1 - logq_y.exp()) ** gamma) * logq_y).mean()
    else:  # mbls
        penalty = F.relu(logits.amax(1, keepdim=True) - logits - MARGIN).mean()
        loss = h_pq + WEIGHT * penalty
    classwise = torch.stack(
        [BinaryCalibrationError(n_bins=15)(q[:, k].float(), (y == k).long()) for k in range(C)]
    ).mean()
    expected = {
        "val/loss": loss,
        "val/h_pq": h_pq,
        "val/acc": (logits.argmax(1) == y).double().mean(),
        "val/ece": MulticlassCalibrationError(C, n_bins=15)(logits.float(), y),
        "val/ece_classwise": classwise,
        "val/entropy": entropy,
    }
    if objective == "mbls":
        expected["val/margin_penalty"] = penalty
    return {key: float(value) for key, value in expected.items()}


@pytest.mark.parametrize("objective", ["confidence_penalty", "focal", "flsd53", "mbls"])
def test_each_objective_logs_the_comparable_keys_and_its_own(objective: str, tmp_path) -> None:
    callback = LabelSmoothing(WEIGHT, objective=objective, focal_gamma=GAMMA, margin=MARGIN)
    trainer = quiet_trainer(tmp_path, max_epochs=1, callbacks=[callback], num_sanity_val_steps=0)
    model = Sharpened()
    val = _data(50, seed=1)
    trainer.fit(model, DataLoader(_data(64, seed=0), batch_size=16), DataLoader(val, batch_size=16))
    logged = {key: value.item() for key, value in trainer.callback_metrics.items()}
    with torch.no_grad():
        expected = _reference(objective, model(val.tensors[0]), val.tensors[1])
    for key, value in expected.items():
        assert logged[key] == pytest.approx(value, rel=1e-5, abs=1e-6), key
    assert "val/h_uq" not in logged and "train/h_uq" not in logged  # label smoothing's own term
    own = {"confidence_penalty": "entropy", "mbls": "margin_penalty"}.get(objective)
    assert (own is None) or f"train/{own}" in logged  # each objective's own term, in training too
    scheduled = {"confidence_penalty": "beta", "mbls": "margin_weight"}.get(objective)
    assert {key for key in logged if key in ("train/epsilon", "train/beta", "train/margin_weight")} == (
        {f"train/{scheduled}"} if scheduled else set()
    )
    if scheduled:
        assert logged[f"train/{scheduled}"] == pytest.approx(WEIGHT)
    model.trainer = None  # the module's own objective, which the callback never wrote
    assert model.ls_objective == "label_smoothing"


def test_label_smoothing_logs_the_entropy_and_classwise_ece_too(tmp_path) -> None:
    trainer = quiet_trainer(tmp_path, max_epochs=1, callbacks=[LabelSmoothing(0.1)], num_sanity_val_steps=0)
    model, val = Sharpened(), _data(50, seed=1)
    trainer.fit(model, DataLoader(_data(32, seed=0), batch_size=16), DataLoader(val, batch_size=16))
    with torch.no_grad():
        expected = _reference("focal", model(val.tensors[0]), val.tensors[1])
    for key in ("val/entropy", "val/ece_classwise", "val/h_pq"):
        assert trainer.callback_metrics[key].item() == pytest.approx(expected[key], rel=1e-5, abs=1e-6), key
    assert "train/entropy" not in trainer.callback_metrics  # a validation measure for every objective but the penalty


def test_refusals_name_the_cause() -> None:
    with pytest.raises(ValueError, match=r"`objective` to be one of .*'entropy'"):
        Sharpened(objective="entropy")
    with pytest.raises(ValueError, match=r"`margin` to be a finite float >= 0, but got -1"):
        LabelSmoothing(0.1, objective="mbls", margin=-1.0)
    model = Sharpened(objective="confidence_penalty", prior=torch.full((C,), 1 / C))
    with pytest.raises(ValueError, match=r"no `prior`, `z_loss` or `softcap` with objective='confidence_penalty'"):
        model.label_smoothed_loss(torch.randn(3, C), torch.tensor([0, 1, 2]))
    with pytest.raises(ValueError, match=r"objective 'label_smoothing' with `label_smoothed_linear_loss`"):
        Sharpened(objective="mbls").label_smoothed_linear_loss(
            torch.randn(3, 5), torch.randn(C, 5), torch.tensor([0, 1, 2])
        )
    with pytest.raises(ValueError, match=r"objective 'label_smoothing' or 'focal' for a binary .* 'flsd53'"):
        Sharpened(objective="flsd53", task="binary").label_smoothed_loss(torch.randn(3), torch.tensor([0.0, 1.0, 1.0]))


def test_binary_focal_through_the_mixin(tmp_path) -> None:
    """The binary task's focal loss (no α weighting): its loss and h_pq equal the formula on the model's outputs."""

    class Binary(Sharpened):
        def forward(self, x: Tensor) -> Tensor:
            return self.layer(x)[:, 0] * 3

    trainer = quiet_trainer(tmp_path, max_epochs=1, num_sanity_val_steps=0)
    model = Binary(objective="focal", focal_gamma=GAMMA, task="binary")
    data = TensorDataset(torch.randn(40, FEATURES), (torch.rand(40) < 0.5).float())
    trainer.fit(model, DataLoader(data, batch_size=20), DataLoader(data, batch_size=20))
    with torch.no_grad():
        z, t = model(data.tensors[0]).double(), data.tensors[1].double()
    p_t = torch.sigmoid(z) * t + (1 - torch.sigmoid(z)) * (1 - t)
    bce = F.binary_cross_entropy_with_logits(z, t, reduction="none")
    expected = {"val/loss": (bce * (1 - p_t) ** GAMMA).mean(), "val/h_pq": bce.mean()}
    for key, value in expected.items():
        assert trainer.callback_metrics[key].item() == pytest.approx(value.item(), rel=1e-5), key
