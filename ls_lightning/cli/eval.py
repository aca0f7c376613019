"""``ls-eval ckpt_path=...``: validate and test a checkpoint with the config groups of ``ls-train``."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, cast

import hydra
from omegaconf import DictConfig

from ls_lightning.cli.config import register_configs, validate_config
from ls_lightning.cli.errors import ConfigValueError
from ls_lightning.cli.launch import continued_metrics, hydra_job_launch, quiet_rank_overrides
from ls_lightning.cli.run import build_run, collect_metrics, finish_runs, print_summary, run_main

if TYPE_CHECKING:
    from ls_lightning.integration import LabelSmoothingMixin

__all__ = ["evaluate", "main"]


def evaluate(cfg: DictConfig) -> dict[str, float]:
    """Validate and test the checkpoint ``cfg.ckpt_path``; return the ``val/...`` and ``test/...`` metrics.

    The groups (data, model, ...) must match the training run's, so that the checkpoint fits the model. The loss
    uses ε at the end of the schedule (t = 1), as the last validation of the training run did.

    Args:
        cfg: a composed ``eval.yaml`` config.

    Returns:
        The epoch values of the ``val/...`` and ``test/...`` keys.

    Raises:
        ConfigValueError: if ``ckpt_path`` is missing or a value is out of range.
    """
    validate_config(cfg, require_ckpt=True)
    from lightning.pytorch import seed_everything  # after validation: a bad value is reported without the wait

    seed_everything(cfg.seed, workers=True, verbose=False)
    with hydra_job_launch():  # ddp: the re-launched ranks join this run's directory
        run = build_run(cfg)
        cast("LabelSmoothingMixin", run.model).label_smoothing = run.schedule(1.0)
        try:
            run.trainer.validate(run.model, datamodule=run.datamodule, ckpt_path=cfg.ckpt_path, verbose=False)
        except RuntimeError as error:
            if "state_dict" not in str(error):
                raise
            raise ConfigValueError([_mismatch_message(cfg, error)]) from None
        metrics = collect_metrics(run.trainer, "val")
        with continued_metrics(cfg.paths.output_dir):  # ddp_spawn: the test's CSV logger starts a new file
            run.trainer.test(run.model, datamodule=run.datamodule, ckpt_path=cfg.ckpt_path, verbose=False)
        metrics.update(collect_metrics(run.trainer, "test"))
        finish_runs(run.trainer)
    print_summary(metrics, cfg.paths.output_dir)
    return metrics


def _mismatch_message(cfg: DictConfig, error: RuntimeError) -> str:
    first = str(error).strip().splitlines()[0]
    return (
        f"ckpt_path={cfg.ckpt_path} does not fit the configured model ({first}); pass the group choices of the"
        " training run, listed in its .hydra/overrides.yaml (e.g. model=cnn)"
    )


register_configs()


@hydra.main(version_base="1.3", config_path="pkg://ls_lightning.conf", config_name="eval")
def _hydra_main(cfg: DictConfig) -> float | None:
    return run_main(evaluate, cfg, "ls-eval")


def main() -> None:
    """Entry point of ``ls-eval`` (and ``python -m ls_lightning.cli.eval``); ranks > 0 write no Hydra files."""
    sys.argv += quiet_rank_overrides()
    _hydra_main()


if __name__ == "__main__":
    main()
