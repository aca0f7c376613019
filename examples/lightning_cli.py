"""Train the digits classifier with ``LightningCLI``; label smoothing is chosen in ``lightning_cli.yaml``.

Needs the ``cli`` and ``lightning-cli`` extras (``pip install -e ".[cli,lightning-cli]"``). Run it from the
repository's root (the YAML next to this file is always read first; command-line flags override it)::

    python examples/lightning_cli.py fit --trainer.max_epochs=1
    python examples/lightning_cli.py fit --print_config     # the composed configuration

Lightning writes its logs and checkpoints under ``outputs/lightning_cli/`` of the working directory
(``trainer.default_root_dir`` in the YAML; ``--trainer.default_root_dir=DIR`` moves them).

The YAML adds the :class:`~ls_lightning.LabelSmoothing` callback with a cosine ε schedule (``class_path`` /
``init_args``) and online label smoothing; the model's input and class counts are taken from the datamodule.
"""

from __future__ import annotations

from pathlib import Path

from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

from ls_lightning.cli.data import DigitsDataModule
from ls_lightning.cli.models import MLP

CONFIG = str(Path(__file__).with_name("lightning_cli.yaml"))


class DigitsCLI(LightningCLI):
    """Links the datamodule's ``num_features`` and ``num_classes`` to the model, so the YAML need not repeat them."""

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.link_arguments("data.num_features", "model.num_features", apply_on="instantiate")
        parser.link_arguments("data.num_classes", "model.num_classes", apply_on="instantiate")


def main(args: list[str] | None = None) -> DigitsCLI:
    defaults = {"default_config_files": [CONFIG]}
    return DigitsCLI(
        MLP,
        DigitsDataModule,
        parser_kwargs={"fit": defaults, "validate": defaults, "test": defaults},
        args=args,
    )


if __name__ == "__main__":
    main()
