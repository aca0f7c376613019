"""``ls-train``: train a classifier with label smoothing from the Hydra config ``conf/train.yaml``, then test it."""

from __future__ import annotations

import sys

import hydra
from omegaconf import DictConfig

from ls_lightning.cli.config import register_configs, validate_config
from ls_lightning.cli.errors import MissingDependencyError
from ls_lightning.cli.launch import continued_metrics, hydra_job_launch, keep_earlier_metrics, quiet_rank_overrides
from ls_lightning.cli.run import build_run, collect_metrics, finish_runs, print_summary, run_main
from ls_lightning.cli.search import check_sweeper_plugins

__all__ = ["main", "train"]


def train(cfg: DictConfig) -> dict[str, float]:
    """Fit the configured model (resuming from ``cfg.ckpt_path`` when set), then test it; return the final metrics.

    Everything the run writes goes to ``cfg.paths.output_dir``; a ``metrics.csv`` already there (a run resumed in
    its own directory, e.g. with ``ckpt_path=last``) is kept as ``metrics.<k>.csv``. Under ``strategy=ddp`` from a
    Hydra app, the ranks Lightning re-launches join this run's directory (see ``ls_lightning.cli.launch``).

    Args:
        cfg: a composed ``train.yaml`` config.

    Returns:
        The final epoch values of the ``val/...`` keys (after the fit) and the ``test/...`` keys.

    Raises:
        ConfigValueError: if a value is out of range or an object refuses its arguments, before training starts.
    """
    validate_config(cfg)
    from lightning.pytorch import seed_everything  # after validation: a bad value is reported without the wait

    seed_everything(cfg.seed, workers=True, verbose=False)
    keep_earlier_metrics(cfg.paths.output_dir)  # a run resumed in place: Lightning's CSVLogger would delete it
    with hydra_job_launch():  # ddp: the re-launched ranks join this run's directory
        run = build_run(cfg)
        run.trainer.fit(run.model, datamodule=run.datamodule, ckpt_path=cfg.ckpt_path)
        # kept before testing: the test loop replaces the trainer's logged metrics
        metrics = collect_metrics(run.trainer, "val")
        with continued_metrics(cfg.paths.output_dir):  # ddp_spawn: the test's CSV logger starts a new file
            run.trainer.test(run.model, datamodule=run.datamodule, verbose=False)
        metrics.update(collect_metrics(run.trainer, "test"))
        finish_runs(run.trainer)
    print_summary(metrics, cfg.paths.output_dir)
    return metrics


register_configs()  # the YAML files extend the schemas: they must be in the ConfigStore before composition


@hydra.main(version_base="1.3", config_path="pkg://ls_lightning.conf", config_name="train")
def _hydra_main(cfg: DictConfig) -> float | None:
    return run_main(train, cfg, "ls-train")


def main() -> None:
    """Entry point of ``ls-train`` (and ``python -m ls_lightning.cli.train``).

    A process of global rank > 0 (re-launched by Lightning, or started by torchrun or SLURM) runs the same app in the
    same run directory but writes no Hydra files there.
    """
    try:
        check_sweeper_plugins(sys.argv[1:])  # before Hydra's own, less helpful, missing-config error
    except MissingDependencyError as error:  # exit status 2 and one line, as for every configuration error
        print(f"ls-train: error: {error}", file=sys.stderr)
        sys.exit(2)
    sys.argv += quiet_rank_overrides()
    _hydra_main()


if __name__ == "__main__":
    main()
