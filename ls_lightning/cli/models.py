"""Built-in models of the command line: an MLP and a small CNN (classifiers), the MNIST-1D paper's MLP, CNN and
GRU, and a small decoder-only Transformer language model, trained with the label-smoothed loss."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import lightning.pytorch as L
import torch
from torch import Tensor, nn

from ls_lightning.cli.config import (
    CNNConfig,
    MLPConfig,
    MNIST1DCNNConfig,
    MNIST1DGRUConfig,
    MNIST1DMLPConfig,
    ModelConfig,
    TransformerConfig,
    defaults_of,
)
from ls_lightning.integration import DEFAULT_LOG_METRICS, LabelSmoothingMixin, LossNormalization, MetricGroup, Task

__all__ = ["CNN", "MLP", "MNIST1DCNN", "MNIST1DGRU", "MNIST1DMLP", "Classifier", "Transformer"]

# The defaults of each model are those of its structured config (ls_lightning.cli.config): one source, which the
# command line's YAML files do not repeat.
_BASE, _MLP, _CNN, _TRANSFORMER = map(defaults_of, (ModelConfig, MLPConfig, CNNConfig, TransformerConfig))
_MNIST1D_MLP, _MNIST1D_CNN, _MNIST1D_GRU = map(defaults_of, (MNIST1DMLPConfig, MNIST1DCNNConfig, MNIST1DGRUConfig))


class Classifier(LabelSmoothingMixin, L.LightningModule):
    """Base of the built-in models: ``self.net`` maps (N, num_features) inputs to (N, num_classes) logits.

    Training, validation and test steps are the mixin's ``label_smoothed_loss``, which logs ``{stage}/loss``,
    ``h_pq``, ``h_uq``, ``acc`` and ``ece``. The optimizer is AdamW.

    Args:
        lr: AdamW learning rate, > 0.
        weight_decay: AdamW decoupled weight decay, >= 0.
        label_smoothing: the initial ε (the :class:`~ls_lightning.LabelSmoothing` callback schedules it).
        prior: the smoothing prior u, ``None`` for uniform.
        task: the mixin's task; ``"binary"`` with ``num_classes=1`` (one logit) for a binary data set such as
            ``data=breast_cancer``.
        loss_normalization: the mixin's: ``"batch"`` (each batch's mean) or ``"step"`` (the mean over the optimizer
            step's counted positions on all processes; for padded sequences with accumulation or DDP).

    Raises:
        ValueError: if ``lr`` or ``weight_decay`` is out of range.
    """

    net: nn.Module

    def __init__(
        self,
        *,
        lr: float = _BASE["lr"],
        weight_decay: float = _BASE["weight_decay"],
        label_smoothing: float = 0.1,
        prior: Tensor | None = None,
        task: Task = "multiclass",
        loss_normalization: LossNormalization = _BASE["loss_normalization"],
    ) -> None:
        super().__init__(label_smoothing=label_smoothing, prior=prior, task=task, loss_normalization=loss_normalization)
        if not lr > 0:
            raise ValueError(f"Expected argument `lr` to be a positive float, but got {lr!r}")
        if not weight_decay >= 0:
            raise ValueError(f"Expected argument `weight_decay` to be a non-negative float, but got {weight_decay!r}")
        self.lr, self.weight_decay = lr, weight_decay

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        x, y = batch
        return self.label_smoothed_loss(self(x), y)

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        x, y = batch
        return self.label_smoothed_loss(self(x), y)

    def test_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        x, y = batch
        return self.label_smoothed_loss(self(x), y)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.AdamW(self.parameters(), lr=self.lr, weight_decay=self.weight_decay)

    def configure_model(self) -> None:
        """Shard the parameters with FSDP2 (``fully_shard``) when the strategy gives the module a device mesh.

        Under Lightning's ``ModelParallelStrategy`` (``trainer=fsdp``, ``trainer=fsdp_cpu``) each block of
        :meth:`_fsdp_blocks` becomes a unit of its own, then the module itself holds the rest (embeddings, norms, the
        output layer). The steps are registered as forward methods of the module: its parameters are gathered for
        the whole of a step, so that the loss can take a (tied) output weight as a plain tensor. A no-op without a
        mesh (other strategies) or once sharded (Lightning calls this hook for each of fit, validate and test).

        Raises:
            ValueError: if the mesh has a tensor-parallel dimension larger than 1 (the models have no tensor plan).
        """
        from torch.distributed.fsdp import FSDPModule, fully_shard, register_fsdp_forward_method

        if self.device_mesh is None or isinstance(self, FSDPModule):
            return
        mesh = self.device_mesh
        if "tensor_parallel" in (mesh.mesh_dim_names or ()) and mesh["tensor_parallel"].size() > 1:
            raise ValueError(
                f"Expected `tensor_parallel_size` = 1 with the built-in models (they are sharded over data-parallel"
                f" ranks only), but got {mesh['tensor_parallel'].size()}: set trainer.strategy.tensor_parallel_size=1"
            )
        if "data_parallel" in (mesh.mesh_dim_names or ()):
            mesh = mesh["data_parallel"]
        for block in self._fsdp_blocks():
            fully_shard(block, mesh=mesh)
        fully_shard(self, mesh=mesh)
        for name in ("training_step", "validation_step", "test_step"):
            register_fsdp_forward_method(self, name)

    def _fsdp_blocks(self) -> Iterable[nn.Module]:
        """The submodules that FSDP2 gathers one at a time: the layers of ``self.net`` that hold parameters."""
        return [m for m in self.net.children() if next(m.parameters(recurse=False), None) is not None]


def _check_sizes(name: str, sizes: Sequence[int]) -> list[int]:
    sizes = list(sizes)
    if any(isinstance(s, bool) or not isinstance(s, int) or s < 1 for s in sizes):
        raise ValueError(f"Expected argument `{name}` to be a list of positive ints, but got {sizes!r}")
    return sizes


def _check_dropout(dropout: float) -> None:
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"Expected argument `dropout` to be a float in [0, 1), but got {dropout!r}")


class MLP(Classifier):
    """Multi-layer perceptron: Linear-ReLU(-Dropout) blocks of widths ``hidden_sizes``, then a linear classifier.

    Args:
        num_features: input dimension.
        num_classes: number of classes C.
        hidden_sizes: widths of the hidden layers; empty gives a linear (logistic regression) model.
        dropout: dropout after each hidden layer, in [0, 1).
        lr: AdamW learning rate, > 0.
        weight_decay: AdamW decoupled weight decay, >= 0.
        **kwargs: ``label_smoothing``, ``prior``, ``task``, ``loss_normalization`` of :class:`Classifier`.

    Shape:
        - Input: (N, num_features).
        - Output: (N, num_classes) logits.

    Example:
        >>> model = MLP(num_features=64, num_classes=10, hidden_sizes=[32])
        >>> model(torch.zeros(2, 64)).shape
        torch.Size([2, 10])
    """

    def __init__(
        self,
        num_features: int,
        num_classes: int,
        hidden_sizes: Sequence[int] = _MLP["hidden_sizes"],
        dropout: float = _MLP["dropout"],
        lr: float = _MLP["lr"],
        weight_decay: float = _MLP["weight_decay"],
        **kwargs: Any,
    ) -> None:
        super().__init__(lr=lr, weight_decay=weight_decay, **kwargs)
        hidden = _check_sizes("hidden_sizes", hidden_sizes)
        _check_dropout(dropout)
        # the prior is a buffer (saved in the state dict); as a hyper-parameter it would bloat hparams.yaml
        self.save_hyperparameters(ignore=["prior"])
        layers: list[nn.Module] = []
        for width_in, width_out in zip([num_features, *hidden], hidden, strict=False):
            layers += [nn.Linear(width_in, width_out), nn.ReLU()] + ([nn.Dropout(dropout)] if dropout else [])
        layers.append(nn.Linear(([num_features, *hidden])[-1], num_classes))
        self.net = nn.Sequential(*layers)


class CNN(Classifier):
    """Small CNN for square one-channel images given as flat features (digits: 64 = 8×8).

    Each of ``channels`` is a 3×3 conv (padding 1) and ReLU; every block but the last is followed by a 2×2 max pool.
    Then a hidden linear layer of ``hidden_size``, dropout and the classifier.

    Args:
        num_features: input dimension; must equal ``image_size ** 2``.
        num_classes: number of classes C.
        image_size: side of the square image.
        channels: output channels of the conv blocks.
        hidden_size: width of the hidden linear layer.
        dropout: dropout before the classifier, in [0, 1).
        lr: AdamW learning rate, > 0.
        weight_decay: AdamW decoupled weight decay, >= 0.
        **kwargs: ``label_smoothing``, ``prior``, ``task``, ``loss_normalization`` of :class:`Classifier`.

    Raises:
        ValueError: if ``num_features != image_size ** 2`` or the image is too small for the pools.

    Shape:
        - Input: (N, image_size²).
        - Output: (N, num_classes) logits.

    Example:
        >>> model = CNN(num_features=64, num_classes=10)
        >>> model(torch.zeros(2, 64)).shape
        torch.Size([2, 10])
    """

    def __init__(
        self,
        num_features: int,
        num_classes: int,
        image_size: int = _CNN["image_size"],
        channels: Sequence[int] = _CNN["channels"],
        hidden_size: int = _CNN["hidden_size"],
        dropout: float = _CNN["dropout"],
        lr: float = _CNN["lr"],
        weight_decay: float = _CNN["weight_decay"],
        **kwargs: Any,
    ) -> None:
        super().__init__(lr=lr, weight_decay=weight_decay, **kwargs)
        chans = _check_sizes("channels", channels)
        _check_dropout(dropout)
        if num_features != image_size**2:
            raise ValueError(
                f"Expected the data's `num_features` to equal `image_size` ** 2 = {image_size**2}, but got"
                f" {num_features} (the CNN takes square one-channel images; use model=mlp for other data)"
            )
        side = image_size // 2 ** (len(chans) - 1)
        if side < 1:
            raise ValueError(f"Expected `image_size` = {image_size} to survive {len(chans) - 1} 2×2 pools, but got 0")
        self.save_hyperparameters(ignore=["prior"])
        self.image_size = image_size
        blocks: list[nn.Module] = []
        for i, (c_in, c_out) in enumerate(zip([1, *chans], chans, strict=False)):
            blocks += [nn.Conv2d(c_in, c_out, 3, padding=1), nn.ReLU()]
            blocks += [nn.MaxPool2d(2)] if i < len(chans) - 1 else []
        head = [nn.Flatten(), nn.Linear(chans[-1] * side * side, hidden_size), nn.ReLU(), nn.Dropout(dropout)]
        self.net = nn.Sequential(*blocks, *head, nn.Linear(hidden_size, num_classes))

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x.view(-1, 1, self.image_size, self.image_size))


class Transformer(Classifier):
    """Small decoder-only Transformer language model: next-token prediction on (N, T) token ids.

    Token and learned position embeddings, ``num_layers`` pre-norm blocks (causal self-attention and a GELU
    feed-forward layer, ``torch.nn.TransformerEncoderLayer`` with a causal mask), a final LayerNorm and a linear
    output layer, whose weight is the token embedding's when ``tie_weights``. The steps never build the (N, T, V)
    logits: the loss is the mixin's ``label_smoothed_linear_loss`` of the final hidden states and the output weight,
    so the memory of a step does not grow with N·T·V. Targets equal to the mixin's ``ignore_index`` (padding) count
    nowhere. Logs perplexity (exp of the epoch's H(p,q)) besides the mixin's keys, token by token.

    Args:
        num_features: the context length T of the data (its ``block_size``): the number of learned positions.
        num_classes: the vocabulary size V.
        d_model: the width of the hidden states D.
        num_layers: the number of blocks.
        num_heads: attention heads; must divide ``d_model``.
        dim_feedforward: the width of each block's feed-forward layer.
        dropout: dropout of the blocks and of the embeddings, in [0, 1).
        tie_weights: use the token embedding as the output layer's weight.
        log_metrics: the mixin's groups of logged keys (see :class:`~ls_lightning.LabelSmoothingMixin`).
        lr: AdamW learning rate, > 0.
        weight_decay: AdamW decoupled weight decay, >= 0.
        **kwargs: ``label_smoothing``, ``prior``, ``task``, ``loss_normalization`` of :class:`Classifier`.

    Raises:
        ValueError: if ``num_heads`` does not divide ``d_model`` or a size is out of range.

    Shape:
        - Input: (N, T) token ids, T <= ``num_features``.
        - Output of ``hidden``: (N, T, d_model); of ``forward``: (N, T, num_classes) logits (built in full: for
          inference on short inputs).

    Example:
        >>> model = Transformer(num_features=16, num_classes=300, d_model=32, num_heads=2, dim_feedforward=64)
        >>> tokens = torch.randint(0, 300, (2, 16))
        >>> model.hidden(tokens).shape, model(tokens).shape
        (torch.Size([2, 16, 32]), torch.Size([2, 16, 300]))
    """

    def __init__(
        self,
        num_features: int,
        num_classes: int,
        d_model: int = _TRANSFORMER["d_model"],
        num_layers: int = _TRANSFORMER["num_layers"],
        num_heads: int = _TRANSFORMER["num_heads"],
        dim_feedforward: int = _TRANSFORMER["dim_feedforward"],
        dropout: float = _TRANSFORMER["dropout"],
        tie_weights: bool = _TRANSFORMER["tie_weights"],
        log_metrics: Sequence[MetricGroup] = (*DEFAULT_LOG_METRICS, "perplexity"),
        lr: float = _TRANSFORMER["lr"],
        weight_decay: float = _TRANSFORMER["weight_decay"],
        **kwargs: Any,
    ) -> None:
        super().__init__(lr=lr, weight_decay=weight_decay, **kwargs)
        sizes = dict(num_features=num_features, num_classes=num_classes, d_model=d_model, num_layers=num_layers)
        for name, value in {**sizes, "num_heads": num_heads, "dim_feedforward": dim_feedforward}.items():
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"Expected argument `{name}` to be a positive int, but got {value!r}")
        _check_dropout(dropout)
        if d_model % num_heads:
            raise ValueError(f"Expected argument `num_heads` to divide `d_model` = {d_model}, but got {num_heads}")
        self.ls_log_metrics = log_metrics
        self.save_hyperparameters(ignore=["prior"])
        self.token_embedding = nn.Embedding(num_classes, d_model)
        self.position_embedding = nn.Embedding(num_features, d_model)
        self.dropout = nn.Dropout(dropout)
        block = nn.TransformerEncoderLayer(
            d_model, num_heads, dim_feedforward, dropout, activation="gelu", batch_first=True, norm_first=True
        )
        self.blocks = nn.TransformerEncoder(block, num_layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(d_model)
        self.lm_head = None if tie_weights else nn.Linear(d_model, num_classes, bias=False)
        for weight in [self.token_embedding.weight, self.position_embedding.weight]:
            # GPT-2's scale: with N(0, 1) rows, tied logits of a unit-variance hidden state would start at std √D
            nn.init.normal_(weight, std=0.02)
        if self.lm_head is not None:
            nn.init.normal_(self.lm_head.weight, std=0.02)

    @property
    def lm_head_weight(self) -> Tensor:
        """The (V, D) weight of the output layer: the token embedding's when the weights are tied."""
        return self.token_embedding.weight if self.lm_head is None else self.lm_head.weight

    def hidden(self, tokens: Tensor) -> Tensor:
        """The final hidden states (N, T, D) of (N, T) token ids: position t sees the tokens up to t."""
        if tokens.is_floating_point() or tokens.is_complex():
            raise TypeError(
                f"Expected argument `tokens` to hold integer token ids, but got {tokens.dtype} (the Transformer reads"
                " token blocks: use it with data=text)"
            )
        length = tokens.shape[-1]
        if length > self.position_embedding.num_embeddings:
            raise ValueError(
                f"Expected inputs of at most {self.position_embedding.num_embeddings} tokens (`num_features`), but"
                f" got {length}"
            )
        positions = torch.arange(length, device=tokens.device)
        h = self.dropout(self.token_embedding(tokens) + self.position_embedding(positions))
        mask = nn.Transformer.generate_square_subsequent_mask(length, device=tokens.device, dtype=h.dtype)
        return self.norm(self.blocks(h, mask=mask, is_causal=True))

    def forward(self, tokens: Tensor) -> Tensor:
        return nn.functional.linear(self.hidden(tokens), self.lm_head_weight)

    def _fsdp_blocks(self) -> Iterable[nn.Module]:
        # the embeddings (tied to the output layer) and the final norm stay with the root unit
        return list(self.blocks.layers)

    def _step(self, batch: tuple[Tensor, Tensor]) -> Tensor:
        tokens, target = batch
        return self.label_smoothed_linear_loss(self.hidden(tokens), self.lm_head_weight, target)

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        return self._step(batch)

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        return self._step(batch)

    def test_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        return self._step(batch)


# The MNIST-1D paper's models (Greydanus, 2020, "Scaling down deep learning"), layer for layer as in the authors'
# code: greydanus/mnist1d, models.py at commit 08ff47fc74375c6aca30416a2080ea5695f9b751 (the first commit; the same
# classes are notebooks/models.py at 579085a3934c37e20fa4b6dae064d3e9d6f2d122). Their trainer (train.py) is Adam,
# learning rate 1e-2, weight decay 0, batches of 100, 6000 steps: AdamW with weight_decay=0 is the same update.


def _check_positive(name: str, value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"Expected argument `{name}` to be a positive int, but got {value!r}")


class _ReLUResidual(nn.Module):
    """``h + relu(linear(h))``: the residual hidden layer of the MNIST-1D MLP."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.linear = nn.Linear(width, width)

    def forward(self, h: Tensor) -> Tensor:
        return h + self.linear(h).relu()


class MNIST1DMLP(Classifier):
    r"""The MNIST-1D paper's MLP (the authors' ``MLPBase``): two hidden layers of ``hidden_size``, the second residual.

    .. math:: h_1 = \mathrm{relu}(W_1 x + b_1), \quad h_2 = h_1 + \mathrm{relu}(W_2 h_1 + b_2), \quad
        z = W_3 h_2 + b_3

    15 210 parameters with the defaults on MNIST-1D (40 inputs, 10 classes).

    Args:
        num_features: input dimension (MNIST-1D: 40).
        num_classes: number of classes C.
        hidden_size: width of both hidden layers (the authors': 100).
        lr: AdamW learning rate (the authors': Adam, 0.01).
        weight_decay: AdamW decoupled weight decay (the authors': 0, where AdamW's update is Adam's).
        **kwargs: ``label_smoothing``, ``prior``, ``task``, ``loss_normalization`` of :class:`Classifier`.

    Raises:
        ValueError: if a size is not a positive int.

    Shape:
        - Input: (N, num_features).
        - Output: (N, num_classes) logits.

    Example:
        >>> model = MNIST1DMLP(num_features=40, num_classes=10)
        >>> model(torch.zeros(2, 40)).shape, sum(p.numel() for p in model.parameters())
        (torch.Size([2, 10]), 15210)
    """

    def __init__(
        self,
        num_features: int,
        num_classes: int,
        hidden_size: int = _MNIST1D_MLP["hidden_size"],
        lr: float = _MNIST1D_MLP["lr"],
        weight_decay: float = _MNIST1D_MLP["weight_decay"],
        **kwargs: Any,
    ) -> None:
        super().__init__(lr=lr, weight_decay=weight_decay, **kwargs)
        for name, value in [("num_features", num_features), ("num_classes", num_classes), ("hidden_size", hidden_size)]:
            _check_positive(name, value)
        self.save_hyperparameters(ignore=["prior"])
        self.net = nn.Sequential(
            nn.Linear(num_features, hidden_size),
            nn.ReLU(),
            _ReLUResidual(hidden_size),
            nn.Linear(hidden_size, num_classes),
        )


def _conv_length(length: int, kernel: int, stride: int = 2, padding: int = 1) -> int:
    return (length + 2 * padding - kernel) // stride + 1


class MNIST1DCNN(Classifier):
    """The MNIST-1D paper's CNN (the authors' ``ConvBase``): three stride-2 1-D convolutions with ReLU, then a linear
    classifier on the flattened features.

    The convolutions have ``channels`` each, kernels 5, 3, 3, stride 2 and padding 1: a sequence of 40 points
    becomes 19, 10, then 5 positions, and the classifier reads 5 × 25 = 125 features (the authors' ``linear_in``,
    computed here from ``num_features``). 5210 parameters with the defaults on MNIST-1D.

    Args:
        num_features: the sequence length L (MNIST-1D: 40), >= 5.
        num_classes: number of classes C.
        channels: output channels of each convolution (the authors': 25).
        lr: AdamW learning rate (the authors': Adam, 0.01).
        weight_decay: AdamW decoupled weight decay (the authors': 0, where AdamW's update is Adam's).
        **kwargs: ``label_smoothing``, ``prior``, ``task``, ``loss_normalization`` of :class:`Classifier`.

    Raises:
        ValueError: if a size is not a positive int or the sequence is too short for the convolutions.

    Shape:
        - Input: (N, L), one channel.
        - Output: (N, num_classes) logits.

    Example:
        >>> model = MNIST1DCNN(num_features=40, num_classes=10)
        >>> model(torch.zeros(2, 40)).shape, sum(p.numel() for p in model.parameters())
        (torch.Size([2, 10]), 5210)
    """

    def __init__(
        self,
        num_features: int,
        num_classes: int,
        channels: int = _MNIST1D_CNN["channels"],
        lr: float = _MNIST1D_CNN["lr"],
        weight_decay: float = _MNIST1D_CNN["weight_decay"],
        **kwargs: Any,
    ) -> None:
        super().__init__(lr=lr, weight_decay=weight_decay, **kwargs)
        for name, value in [("num_features", num_features), ("num_classes", num_classes), ("channels", channels)]:
            _check_positive(name, value)
        length = _conv_length(_conv_length(_conv_length(num_features, 5), 3), 3)
        if length < 1:
            raise ValueError(f"Expected `num_features` >= 5 for the three convolutions, but got {num_features}")
        self.save_hyperparameters(ignore=["prior"])
        self.net = nn.Sequential(
            nn.Unflatten(1, (1, num_features)),
            nn.Conv1d(1, channels, 5, stride=2, padding=1),
            nn.ReLU(),
            nn.Conv1d(channels, channels, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.Conv1d(channels, channels, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.Flatten(),
            nn.Linear(channels * length, num_classes),
        )


class MNIST1DGRU(Classifier):
    """The MNIST-1D paper's GRU (the authors' ``GRUBase``): a (bidirectional) GRU over the sequence, one value per
    step, then a linear classifier on all its outputs, flattened.

    The initial hidden state is zero. 5134 parameters with the defaults on MNIST-1D.

    Args:
        num_features: the sequence length T (MNIST-1D: 40; the authors' ``time_steps``).
        num_classes: number of classes C.
        hidden_size: the GRU's hidden size per direction (the authors': 6).
        bidirectional: run the GRU both ways (the authors': yes).
        lr: AdamW learning rate (the authors': Adam, 0.01).
        weight_decay: AdamW decoupled weight decay (the authors': 0, where AdamW's update is Adam's).
        **kwargs: ``label_smoothing``, ``prior``, ``task``, ``loss_normalization`` of :class:`Classifier`.

    Raises:
        ValueError: if a size is not a positive int.

    Shape:
        - Input: (N, T).
        - Output: (N, num_classes) logits.

    Example:
        >>> model = MNIST1DGRU(num_features=40, num_classes=10)
        >>> model(torch.zeros(2, 40)).shape, sum(p.numel() for p in model.parameters())
        (torch.Size([2, 10]), 5134)
    """

    def __init__(
        self,
        num_features: int,
        num_classes: int,
        hidden_size: int = _MNIST1D_GRU["hidden_size"],
        bidirectional: bool = _MNIST1D_GRU["bidirectional"],
        lr: float = _MNIST1D_GRU["lr"],
        weight_decay: float = _MNIST1D_GRU["weight_decay"],
        **kwargs: Any,
    ) -> None:
        super().__init__(lr=lr, weight_decay=weight_decay, **kwargs)
        for name, value in [("num_features", num_features), ("num_classes", num_classes), ("hidden_size", hidden_size)]:
            _check_positive(name, value)
        self.save_hyperparameters(ignore=["prior"])
        self.gru = nn.GRU(input_size=1, hidden_size=hidden_size, batch_first=True, bidirectional=bidirectional)
        self.linear = nn.Linear((2 if bidirectional else 1) * hidden_size * num_features, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        output, _ = self.gru(x.unsqueeze(-1))  # (N, T, 1) -> (N, T, directions · hidden)
        return self.linear(output.flatten(1))

    def _fsdp_blocks(self) -> Iterable[nn.Module]:
        return [self.gru, self.linear]
