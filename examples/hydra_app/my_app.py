"""A user's own Hydra app: its own LightningModule and config, ls_lightning's groups for data, ε schedule and trainer.

``conf/config.yaml`` adds ``pkg://ls_lightning.conf`` to the search path and picks ``label_smoothing/schedule: cosine``;
the composed schedule node instantiates to a :mod:`ls_lightning.smoothing` object that the callback follows.

    python examples/hydra_app/my_app.py label_smoothing/schedule=two_stage   # into outputs/my_app/<date>/<time>/
"""

from __future__ import annotations

import hydra
import lightning.pytorch as L
import torch
from hydra.utils import instantiate
from lightning.pytorch.loggers import CSVLogger
from omegaconf import DictConfig
from torch import Tensor, nn

from ls_lightning import LabelSmoothing, LabelSmoothingMixin


class MyModel(LabelSmoothingMixin, L.LightningModule):
    """One hidden layer and SGD: the user's model, with the mixin first among the bases."""

    def __init__(self, num_features: int, num_classes: int, width: int = 64, lr: float = 0.05) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.net = nn.Sequential(nn.Linear(num_features, width), nn.Tanh(), nn.Linear(width, num_classes))

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        x, y = batch
        return self.label_smoothed_loss(self(x), y)

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        x, y = batch
        self.label_smoothed_loss(self(x), y)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=self.hparams.lr, momentum=0.9)


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> None:
    L.seed_everything(cfg.seed, workers=True)
    datamodule = instantiate(cfg.data)
    model = MyModel(datamodule.num_features, datamodule.num_classes, **cfg.my_model)
    callback = LabelSmoothing(instantiate(cfg.label_smoothing.schedule), interval="epoch")
    logger = CSVLogger(cfg.paths.output_dir, name="", version="")
    trainer = instantiate(cfg.trainer, callbacks=[callback], logger=logger)
    trainer.fit(model, datamodule=datamodule)
    print(f"val/acc={float(trainer.callback_metrics['val/acc']):.3f} run directory: {cfg.paths.output_dir}")


if __name__ == "__main__":
    main()
