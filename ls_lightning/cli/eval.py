"""``ls-eval ckpt_path=...``: validate and test a checkpoint with the config groups of ``ls-train``."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any, cast

import hydra
from omegaconf import DictConfig

from ls_lightning.cli.checkpoint import callback_states
from ls_lightning.cli.config import register_configs, validate_config
from ls_lightning.cli.errors import ConfigValueError
from ls_lightning.cli.launch import continued_metrics, hydra_job_launch, quiet_rank_overrides
from ls_lightning.cli.run import build_run, collect_metrics, finish_runs, log_prefix, print_summary, run_main

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
        CheckpointError: if ``ckpt_path`` is no readable checkpoint of plain data.
    """
    validate_config(cfg, require_ckpt=True)
    different = _loss_differences(cfg)
    if different:
        raise ConfigValueError([different])
    from lightning.pytorch import seed_everything  # after validation: a bad value is reported without the wait

    seed_everything(cfg.seed, workers=True, verbose=False)
    with hydra_job_launch():  # ddp: the re-launched ranks join this run's directory
        run = build_run(cfg)
        cast("LabelSmoothingMixin", run.model).label_smoothing = run.schedule(1.0)
        try:
            run.trainer.validate(
                run.model, datamodule=run.datamodule, ckpt_path=cfg.ckpt_path, verbose=False, weights_only=True
            )
        except RuntimeError as error:
            if "state_dict" not in str(error):
                raise
            raise ConfigValueError([_mismatch_message(cfg, error)]) from None
        metrics = collect_metrics(run.trainer, "val")
        with continued_metrics(cfg.paths.output_dir):  # ddp_spawn: the test's CSV logger starts a new file
            run.trainer.test(
                run.model, datamodule=run.datamodule, ckpt_path=cfg.ckpt_path, verbose=False, weights_only=True
            )
        metrics.update(collect_metrics(run.trainer, "test"))
        prefix = log_prefix(run.model)
        finish_runs(run.trainer)
    print_summary(metrics, cfg.paths.output_dir, prefix)
    return metrics


def _loss_differences(cfg: DictConfig) -> str | None:
    """The loss settings (``label_smoothing.objective`` and its parameter) in which the configuration differs from
    the training run that saved ``cfg.ckpt_path``, as one line; ``None`` when they agree or the checkpoint does not
    say (no ``LabelSmoothing`` state, or one from before the relatives)."""
    saved: dict[str, Any] = next(
        (state for key, state in callback_states(cfg.ckpt_path).items() if key.startswith("LabelSmoothing{")), {}
    )
    different = [
        f"label_smoothing.{name}={saved[name]} (configured: {cfg.label_smoothing[name]})"
        for name in ("objective", "focal_gamma", "margin")
        if name in saved and saved[name] != cfg.label_smoothing[name]
    ]
    if not different:
        return None
    variant = f"label_smoothing/variant={saved['objective']}" if "objective" in saved else ""
    hint = f" (e.g. {variant})" if variant.endswith(("confidence_penalty", "focal", "flsd53", "mbls")) else ""
    return (
        f"ckpt_path={cfg.ckpt_path} was trained with {', '.join(different)}: pass the training run's loss"
        f" settings{hint}, listed in its .hydra/overrides.yaml, so that the loss and its logged terms are those of the"
        " training run"
    )


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
