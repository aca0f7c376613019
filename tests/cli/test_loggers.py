"""``logger=mlflow``, ``logger=wandb`` and ``logger=many`` with the real libraries, offline, read back from their
stores; ``ls-report``'s figure sent to the sweep's loggers. (A quiet first run of ``ls-train``:
tests/e2e/test_commands.py; ``log_figure`` itself: tests/integration/test_figures.py.)
"""

from __future__ import annotations

import csv
import json
import os
import struct
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from hydra import compose, initialize_config_module
from hydra.errors import MissingConfigException
from omegaconf import DictConfig, OmegaConf

from ls_lightning.cli.config import register_configs
from ls_lightning.cli.loggers import REPORT_RUN_NAME, wandb_mode
from ls_lightning.cli.report import report
from ls_lightning.cli.train import train

mlflow = pytest.importorskip("mlflow")
wandb = pytest.importorskip("wandb")
from mlflow.tracking import MlflowClient  # noqa: E402
from wandb.proto import wandb_internal_pb2  # noqa: E402  # the records of a run's .wandb file

QUIET = [
    "trainer.accelerator=cpu",
    "callbacks.progress_bar=null",
    "trainer.enable_progress_bar=false",
    "trainer.enable_model_summary=false",
]
TINY = [*QUIET, "data=synthetic", "data.num_train=64", "data.num_val=32", "data.num_test=32", "data.batch_size=32"]
IMAGE_KEY = "val/reliability_diagram"
PNG = b"\x89PNG\r\n\x1a\n"


def make_cfg(overrides: list[str], output_dir: Path) -> DictConfig:
    register_configs()
    with initialize_config_module("ls_lightning.conf", version_base="1.3"):
        return compose("train", overrides=[*overrides, f"paths.output_dir={output_dir}"])


@pytest.fixture
def wandb_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """No W&B login, mode or project from the machine; W&B's own folders (cache, config, data) in tmp_path."""
    for name in (
        "WANDB_MODE",
        "WANDB_API_KEY",
        "WANDB_BASE_URL",
        "WANDB_PROJECT",
        "WANDB_DIR",
        "WANDB_ERROR_REPORTING",
    ):
        monkeypatch.setenv(name, "")  # recorded, so that teardown restores it: the run may set it
        monkeypatch.delenv(name)
    netrc = tmp_path / "netrc"
    netrc.write_text("")
    monkeypatch.setenv("NETRC", str(netrc))
    for name in ("WANDB_CACHE_DIR", "WANDB_CONFIG_DIR", "WANDB_DATA_DIR", "WANDB_ARTIFACT_DIR"):
        monkeypatch.setenv(name, str(tmp_path / "wandb-home" / name.lower()))
    yield
    if wandb.run is not None:  # a failed test must not hand its open run to the next one
        wandb.finish()


# --- reading back -------------------------------------------------------------------------------------------------


def csv_rows(path: Path) -> list[dict[str, float]]:
    """The rows of Lightning's metrics.csv, empty cells left out: the reference the other loggers must hold."""
    with open(path, newline="") as file:
        return [{k: float(v) for k, v in row.items() if v != ""} for row in csv.DictReader(file)]


def flat_hparams(path: Path) -> dict[str, Any]:
    """hparams.yaml (written by the CSV logger) flattened with "/", as Lightning's MLflow logger sends them."""

    def flatten(node: Any, prefix: str = "") -> Iterator[tuple[str, Any]]:
        for key, value in node.items():
            if isinstance(value, dict):
                yield from flatten(value, f"{prefix}{key}/")
            else:
                yield f"{prefix}{key}", value

    return dict(flatten(yaml.safe_load(path.read_text())))


def wandb_records(run_dir: Path) -> Iterator[Any]:
    """The records of an offline run's ``run-<id>.wandb``: W&B's LevelDB-style log of ``wandb_internal_pb2.Record``.

    The file is a 7-byte header (``:W&B``, magic, version), then 32 KiB blocks of chunks, each with a 7-byte header
    (CRC-32C, length, type: 1 whole record, 2/3/4 first/middle/last part); a block's tail shorter than a header is
    padding.
    """
    data = next(run_dir.glob("run-*.wandb")).read_bytes()
    assert data[:4] == b":W&B"
    position, block, parts = 7, 32768, b""
    while position + 7 <= len(data):
        if block - position % block < 7:
            position += block - position % block
            continue
        _, length, kind = struct.unpack("<IHB", data[position : position + 7])
        chunk, position = data[position + 7 : position + 7 + length], position + 7 + length
        if kind == 0 and length == 0:  # zero padding up to the block's end
            position += block - position % block if position % block else 0
            continue
        parts = chunk if kind in (1, 2) else parts + chunk
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(parts)
            yield record


def finished_records(run_dir: Path, timeout: float = 60.0) -> list[Any]:
    """The run's records once its ``exit`` record is in the file (W&B's service may still be writing the last ones)."""
    deadline = time.monotonic() + timeout
    while True:
        records = list(wandb_records(run_dir))
        if any(r.WhichOneof("record_type") == "exit" for r in records) or time.monotonic() > deadline:
            return records
        time.sleep(0.2)


def wandb_history(run_dir: Path) -> list[dict[str, Any]]:
    """Each ``log`` call of the run: top-level key -> value (an image is the dict of its fields)."""
    rows = []
    for record in finished_records(run_dir):
        if record.WhichOneof("record_type") == "history":
            row: dict[str, Any] = {}
            for item in record.history.item:
                keys = list(item.nested_key) or [item.key]
                value = json.loads(item.value_json)
                if len(keys) == 1:
                    row[keys[0]] = value
                else:
                    row.setdefault(keys[0], {})[keys[-1]] = value
            rows.append(row)
    return rows


def wandb_config(run_dir: Path) -> dict[str, Any]:
    config: dict[str, Any] = {}
    for record in finished_records(run_dir):
        if record.WhichOneof("record_type") == "config":
            config.update({item.key: json.loads(item.value_json) for item in record.config.update})
    return config


def assert_rows_held(rows: list[dict[str, float]], held: list[dict[str, Any]], step_key: str) -> None:
    """Every value of every metrics.csv row is in a logged row of the same step."""
    for row in rows:
        step, values = row["step"], {k: v for k, v in row.items() if k != "step"}
        matches = [h for h in held if h.get(step_key) == step and values.keys() <= h.keys()]
        assert any(all(h[k] == pytest.approx(v, rel=1e-6) for k, v in values.items()) for h in matches), (row, held)


def diagram_steps(run_dir: Path, epochs: int) -> list[int]:
    """The global steps at the end of each validation epoch (the diagram's), from the final one's reliability.json."""
    final = json.loads((run_dir / "reliability.json").read_text())["global_step"]
    return [final * (epoch + 1) // epochs for epoch in range(epochs)]


# --- W&B's default mode -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("environ", "netrc", "expected"),
    [
        ({}, "", "offline"),
        ({"WANDB_MODE": "online"}, "", None),
        ({"WANDB_MODE": "disabled"}, "", None),
        ({"WANDB_API_KEY": "k" * 40}, "", None),
        ({}, "machine api.wandb.ai\n  login user\n  password secret\n", None),
        ({}, "machine example.org\n  login user\n  password secret\n", "offline"),
        ({"WANDB_BASE_URL": "https://wandb.example.org"}, "machine wandb.example.org login u password p\n", None),
        ({"WANDB_BASE_URL": "https://wandb.example.org"}, "machine api.wandb.ai login u password p\n", "offline"),
        ({}, "this is not a netrc file", "offline"),
    ],
)
def test_wandb_mode_is_offline_unless_logged_in_or_chosen(
    environ: dict[str, str], netrc: str, expected: str | None, tmp_path: Path
) -> None:
    path = tmp_path / "netrc"
    path.write_text(netrc)
    assert wandb_mode({**environ, "NETRC": str(path)}) == expected


def test_wandb_config_mode_follows_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("NETRC", os.devnull)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    cfg = make_cfg(["logger=wandb"], tmp_path)
    assert cfg.logger.wandb.mode == "offline"
    monkeypatch.setenv("WANDB_MODE", "disabled")
    assert cfg.logger.wandb.mode is None  # W&B reads WANDB_MODE itself


# --- log_figure ---------------------------------------------------------------------------------------------------


# --- ls-train logger=mlflow | wandb ---------------------------------------------------------------------------------


def test_mlflow_holds_every_metric_hyperparameter_and_diagram(tmp_path: Path) -> None:
    out = tmp_path / "run"
    metrics = train(make_cfg(["logger=mlflow", "trainer.max_epochs=2", *TINY], out))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]  # nothing beside the run directory
    client = MlflowClient(f"sqlite:///{out}/mlflow.db")
    (experiment,) = [e for e in client.search_experiments() if e.name == "train"]
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.info.status == "FINISHED"
    assert Path(run.info.artifact_uri.removeprefix("file://")).is_relative_to(out)
    rows = csv_rows(out / "metrics.csv")
    held = []
    for key in {k for row in rows for k in row} - {"step"}:
        held += [{"step": m.step, key: m.value} for m in client.get_metric_history(run.info.run_id, key)]
    assert_rows_held([{"step": r["step"], k: v} for r in rows for k, v in r.items() if k != "step"], held, "step")
    assert client.get_metric_history(run.info.run_id, "test/acc")[-1].value == pytest.approx(metrics["test/acc"])
    hparams = flat_hparams(out / "hparams.yaml")
    assert run.data.params == {k: str(v) for k, v in hparams.items()}
    artifacts = [a.path for a in client.list_artifacts(run.info.run_id, IMAGE_KEY)]
    assert artifacts == sorted(f"{IMAGE_KEY}/step_{s}.png" for s in diagram_steps(out, epochs=2))
    (tmp_path / "download").mkdir()
    local = Path(client.download_artifacts(run.info.run_id, artifacts[-1], str(tmp_path / "download")))
    assert local.read_bytes()[:8] == PNG


@pytest.mark.usefixtures("wandb_home")
def test_wandb_offline_by_default_holds_every_metric_hyperparameter_and_diagram(tmp_path: Path) -> None:
    out = tmp_path / "run"
    metrics = train(make_cfg(["logger=wandb", "trainer.max_epochs=2", *TINY], out))
    (run_dir,) = (out / "wandb").glob("offline-run-*")  # offline: no online run-* folder
    assert os.environ["WANDB_ERROR_REPORTING"] == "false"  # nor error reports over the network
    rows = csv_rows(out / "metrics.csv")
    history = wandb_history(run_dir)
    assert_rows_held(rows, history, "trainer/global_step")
    assert [h for h in history if "test/acc" in h][-1]["test/acc"] == pytest.approx(metrics["test/acc"])
    hparams = yaml.safe_load((out / "hparams.yaml").read_text())
    assert {k: v for k, v in wandb_config(run_dir).items() if k in hparams} == hparams
    images = [h for h in history if IMAGE_KEY in h]
    assert [h["trainer/global_step"] for h in images] == diagram_steps(out, epochs=2)
    files = [run_dir / "files" / path for h in images for path in h[IMAGE_KEY]["filenames"]]
    assert len(files) == len(images) and all(f.read_bytes()[:8] == PNG for f in files)


# --- ls-report's figure -------------------------------------------------------------------------------------------


def _fake_sweep(root: Path, logger: str, shared_uri: str | None = None) -> None:
    """Two finished jobs of a sweep, as Hydra and the run leave them: the composed config, overrides, metrics.csv."""
    for number, seed in enumerate((0, 1)):
        job = root / str(number)
        overrides = [f"seed={seed}", f"logger={logger}"]
        if shared_uri is not None:
            overrides.append(f"logger.mlflow.tracking_uri={shared_uri}")
        cfg = make_cfg(overrides, job)
        OmegaConf.update(cfg, "paths.output_dir", "${hydra:runtime.output_dir}")  # as Hydra writes it
        (job / ".hydra").mkdir(parents=True)
        (job / ".hydra" / "config.yaml").write_text(OmegaConf.to_yaml(cfg))
        (job / ".hydra" / "overrides.yaml").write_text("".join(f"- {o}\n" for o in overrides))
        (job / "metrics.csv").write_text("epoch,step,val/acc,test/acc\n0,9,0.5,\n1,10,,0.6\n")


@pytest.mark.usefixtures("wandb_home")
def test_report_sends_its_figure_to_each_logger_of_the_sweep(tmp_path: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    root = tmp_path / "sweep"
    _fake_sweep(root, "many")
    result = report(root)
    assert [line.split(":")[0] for line in result.sent] == ["tensorboard", "mlflow", "wandb"]
    # MLflow: each job had its own store, so the report is a run of a store in the sweep directory
    client = MlflowClient(f"sqlite:///{root}/mlflow.db")
    (run,) = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert run.info.run_name == REPORT_RUN_NAME and run.info.status == "FINISHED"
    assert [a.path for a in client.list_artifacts(run.info.run_id)] == ["report.png"]
    # W&B: an offline run whose history holds the image
    (run_dir,) = (root / "wandb").glob("offline-run-*")
    (row,) = [h for h in wandb_history(run_dir) if "report" in h]
    assert (run_dir / "files" / row["report"]["filenames"][0]).read_bytes()[:8] == PNG
    # TensorBoard: an image under the tag report
    events = EventAccumulator(str(root / "tensorboard" / REPORT_RUN_NAME), size_guidance={"images": 0}).Reload()
    assert events.Tags()["images"] == ["report"]


def test_report_uses_the_mlflow_store_the_jobs_shared(tmp_path: Path) -> None:
    shared = f"sqlite:///{tmp_path}/shared.db"
    _fake_sweep(tmp_path / "sweep", "mlflow", shared_uri=shared)
    assert report(tmp_path / "sweep").sent[0].endswith(f"in {shared}")
    client = MlflowClient(shared)
    (run,) = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert [a.path for a in client.list_artifacts(run.info.run_id)] == ["report.png"]


def test_report_sends_nothing_for_csv_or_with_no_logger(tmp_path: Path) -> None:
    _fake_sweep(tmp_path / "csv", "csv")
    assert report(tmp_path / "csv").sent == ()
    _fake_sweep(tmp_path / "mlflow", "mlflow")
    assert report(tmp_path / "mlflow", loggers=False).sent == ()
    assert not (tmp_path / "mlflow" / "mlflow.db").exists()


# --- a quiet first run ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("group", ["data", "model", "label_smoothing/schedule", "label_smoothing/prior", "trainer"])
def test_a_mistyped_option_lists_no_schema(group: str, tmp_path: Path) -> None:
    with pytest.raises(MissingConfigException) as caught:
        make_cfg([f"{group}=typo"], tmp_path)
    message = str(caught.value)
    assert f"Available options in '{group}'" in message
    assert "_schema" not in message
