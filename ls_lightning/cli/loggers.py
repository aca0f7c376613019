"""The command line's loggers: W&B's default mode (offline unless logged in), and ``ls-report``'s figure sent to the
loggers a sweep's jobs used (MLflow, W&B, TensorBoard).
"""

from __future__ import annotations

import netrc
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlparse

from omegaconf import DictConfig, OmegaConf

if TYPE_CHECKING:
    from lightning.pytorch.loggers import Logger
    from matplotlib.figure import Figure

__all__ = [
    "IMAGE_LOGGERS",
    "REPORT_RUN_NAME",
    "keep_offline",
    "register_resolvers",
    "send_report_figure",
    "sweep_loggers",
    "wandb_mode",
]

# The loggers that take a figure (ls_lightning.integration.figures.log_figure), by config target.
IMAGE_LOGGERS = {
    "lightning.pytorch.loggers.MLFlowLogger": "mlflow",
    "lightning.pytorch.loggers.WandbLogger": "wandb",
    "lightning.pytorch.loggers.TensorBoardLogger": "tensorboard",
}
# The name of the run ls-report records its figure in (MLflow, W&B) and of its TensorBoard version folder.
REPORT_RUN_NAME = "ls-report"
_WANDB_HOST = "https://api.wandb.ai"


def wandb_mode(environ: Mapping[str, str] | None = None) -> str | None:
    """W&B's ``mode`` for ``logger=wandb``: ``"offline"`` unless the user chose a mode or has logged in.

    With ``WANDB_MODE`` set, or an API key (``WANDB_API_KEY``, or the ``~/.netrc`` entry ``wandb login`` writes for
    ``WANDB_BASE_URL``'s host; ``NETRC`` names another file), this returns ``None``: W&B applies its own rules
    (environment, ``wandb online``/``wandb offline`` settings, login). Otherwise nothing may try the network.

    Example:
        >>> wandb_mode({"NETRC": os.devnull}), wandb_mode({"WANDB_MODE": "off"}), wandb_mode({"WANDB_API_KEY": "k"})
        ('offline', None, None)
    """
    environ = os.environ if environ is None else environ
    if environ.get("WANDB_MODE") or environ.get("WANDB_API_KEY"):
        return None
    host = urlparse(environ.get("WANDB_BASE_URL") or _WANDB_HOST).hostname or ""
    path = environ.get("NETRC") or os.path.join(os.path.expanduser("~"), ".netrc")
    try:
        logged_in = os.path.isfile(path) and netrc.netrc(path).authenticators(host) is not None
    except (OSError, netrc.NetrcParseError):  # an unreadable file: not logged in, as W&B would find
        logged_in = False
    return None if logged_in else "offline"


def keep_offline(mode: str | None) -> None:
    """In W&B's offline mode, also keep its error reports (sent to W&B over the network) off, unless the user chose.

    W&B reports its own failures unless ``WANDB_ERROR_REPORTING`` is false; offline, nothing may try the network.
    """
    if mode == "offline":
        os.environ.setdefault("WANDB_ERROR_REPORTING", "false")


def register_resolvers() -> None:
    """Register the resolver ``${ls_wandb_mode:}`` (:func:`wandb_mode`) of ``logger=wandb``; idempotent."""
    # use_cache=False: the mode follows the environment at each resolution (the tests change it)
    OmegaConf.register_new_resolver("ls_wandb_mode", wandb_mode, replace=True, use_cache=False)


def sweep_loggers(root: Path, jobs: Sequence[Path]) -> list[tuple[Logger, str]]:
    """The loggers that receive ``ls-report``'s figure: one per kind (MLflow, W&B, TensorBoard) every job used.

    Each is built from the first job's config, as a run named :data:`REPORT_RUN_NAME`: MLflow in the jobs' tracking
    store when they share one (a tracking URI set for the sweep, or a single run), else in ``sqlite:///DIR/mlflow.db``
    (artifacts in ``DIR/mlartifacts``); W&B in
    ``DIR/wandb`` (offline unless logged in, as the jobs); TensorBoard in ``DIR/tensorboard/ls-report``.

    Args:
        root: The sweep directory (``DIR``).
        jobs: Its job directories (each with ``.hydra/config.yaml``).

    Returns:
        Each logger, not yet started (nothing is written until the figure is sent), with where it records.
    """
    from hydra.utils import instantiate

    register_resolvers()  # the jobs' configs name ${ls_wandb_mode:}
    nodes = [_image_logger_nodes(job) for job in jobs]
    if not nodes:
        return []
    common = [kind for kind in nodes[0] if all(kind in job_nodes for job_nodes in nodes[1:])]
    loggers = []
    for kind in common:
        node = _report_node(kind, root, [job_nodes[kind] for job_nodes in nodes])
        loggers.append((instantiate(node, _convert_="all"), _where(kind, node)))
    return loggers


def _where(kind: str, node: DictConfig) -> str:
    if kind == "mlflow":
        return f"mlflow: run {node.run_name} (artifact report.png) in {node.tracking_uri}"
    if kind == "wandb":
        return f"wandb: run {node.name} ({node.mode or 'W&B default mode'}) in {Path(node.save_dir) / 'wandb'}"
    return f"tensorboard: tag report in {Path(node.save_dir) / node.name / node.version}"


def _image_logger_nodes(job: Path) -> dict[str, DictConfig]:
    """The job's resolved logger entries that take figures, by kind; none when its config cannot be read."""
    try:
        cfg = OmegaConf.load(job / ".hydra" / "config.yaml")
    except (OSError, ValueError):
        return {}
    if not isinstance(cfg, DictConfig) or not isinstance(cfg.get("logger"), DictConfig):
        return {}
    OmegaConf.update(cfg, "paths.output_dir", str(job), force_add=True)  # was ${hydra:runtime.output_dir}
    found = {}
    for child in cfg.logger.values():
        kind = IMAGE_LOGGERS.get(child.get("_target_")) if isinstance(child, DictConfig) else None
        if kind is not None:
            found[kind] = _resolved(child)
    return found


def _resolved(node: DictConfig) -> DictConfig:
    return DictConfig(OmegaConf.to_container(node, resolve=True, throw_on_missing=False))


def _report_node(kind: str, root: Path, nodes: Sequence[DictConfig]) -> DictConfig:
    node = nodes[0].copy()
    if kind == "mlflow":
        if len({n.get("tracking_uri") for n in nodes}) != 1:  # each job its own store (the default): one for DIR
            node.tracking_uri = f"sqlite:///{root.resolve()}/mlflow.db"
            node.artifact_location = str(root.resolve() / "mlartifacts")
        node.run_name = REPORT_RUN_NAME
    elif kind == "wandb":
        node.save_dir = str(root)
        node.name = REPORT_RUN_NAME
        node.mode = wandb_mode()
        keep_offline(node.mode)
        node.log_model = False
    else:
        node.save_dir, node.name, node.version = str(root), "tensorboard", REPORT_RUN_NAME
    return node


def send_report_figure(loggers: Sequence[tuple[Logger, str]], figure: Figure) -> list[str]:
    """Send ``figure`` to each logger of :func:`sweep_loggers` as ``report``, and close their runs.

    Returns:
        Where each logger recorded it, e.g. ``mlflow: run ls-report (artifact report.png) in sqlite:///.../mlflow.db``.
    """
    from lightning.pytorch.loggers import WandbLogger

    from ls_lightning.integration import log_figure

    where = {id(logger): text for logger, text in loggers}
    sent = log_figure([logger for logger, _ in loggers], "report", figure)
    for logger in sent:
        logger.finalize("success")
        if isinstance(logger, WandbLogger):
            logger.experiment.finish()  # Lightning's finalize leaves the W&B run open
    return [where[id(logger)] for logger in sent]
