"""The ``LabelSmoothing`` callback in tiny Lightning runs, checked against ε computed by hand from the formulas."""

import csv
import json
import math
import pickle

import lightning as L
import pytest
import torch
from helpers import Net, classification_data, quiet_trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger
from torch import nn
from torch.utils.data import DataLoader, IterableDataset, TensorDataset

from ls_lightning.integration import LabelSmoothing
from ls_lightning.smoothing import Constant, Cosine, Linear, Step

N_SAMPLES, BATCH = 16, 4
BATCHES_PER_EPOCH = N_SAMPLES // BATCH

pytestmark = pytest.mark.filterwarnings(
    "ignore:.*does not have many workers.*", "ignore:.*number of training batches.*log_every_n_steps.*"
)


def _data() -> TensorDataset:
    return classification_data(N_SAMPLES, 4, 3)


class CEModel(L.LightningModule):
    """A plain LightningModule that holds an ``nn.CrossEntropyLoss``: the callback alone schedules its ε."""

    def __init__(self, stop_after_epoch: int | None = None) -> None:
        super().__init__()
        self.layer = nn.Linear(4, 3)
        self.criterion = nn.CrossEntropyLoss()
        self.stop_after_epoch = stop_after_epoch
        self.seen: list[tuple[int, int, float]] = []  # (global_step, epoch, ε) in each training_step
        self.epsilon_at_fit_start: float | None = None

    def current_epsilon(self) -> float:
        return self.criterion.label_smoothing

    def on_fit_start(self) -> None:
        self.epsilon_at_fit_start = self.current_epsilon()

    def training_step(self, batch, batch_idx):
        x, y = batch
        self.seen.append((self.trainer.global_step, self.trainer.current_epoch, self.current_epsilon()))
        return self.criterion(self.layer(x), y)

    def on_train_epoch_end(self) -> None:
        if self.stop_after_epoch is not None and self.current_epoch == self.stop_after_epoch:
            self.trainer.should_stop = True  # simulates a run interrupted after this epoch

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)

    def train_dataloader(self):
        return DataLoader(_data(), batch_size=BATCH)


class RecordingCEModel(CEModel):
    """Writes each rank's ε sequence to a file: under ``ddp_spawn`` the ranks run in child processes."""

    def __init__(self, record_dir: str) -> None:
        super().__init__()
        self.record_dir = record_dir

    def on_train_end(self) -> None:
        with open(f"{self.record_dir}/rank{self.global_rank}.json", "w") as file:
            json.dump(self.seen, file)


def _cosine(start: float, end: float, t: float) -> float:
    return end + (start - end) * 0.5 * (1.0 + math.cos(math.pi * t))


@pytest.mark.parametrize("accumulate", [1, 2])
def test_step_interval_follows_schedule_of_global_step(tmp_path, accumulate):
    model = CEModel()
    trainer = quiet_trainer(
        tmp_path,
        callbacks=[LabelSmoothing(Cosine(0.2, 0.0))],
        max_epochs=3,
        accumulate_grad_batches=accumulate,
    )
    trainer.fit(model)
    total = 3 * math.ceil(BATCHES_PER_EPOCH / accumulate)  # optimizer steps in the run
    assert len(model.seen) == 3 * BATCHES_PER_EPOCH
    for batch, (step, _, epsilon) in enumerate(model.seen):
        assert step == batch // accumulate
        assert epsilon == pytest.approx(_cosine(0.2, 0.0, step / total), abs=1e-12)
    assert model.seen[0][2] == 0.2


def test_epoch_interval_follows_schedule_of_epoch(tmp_path):
    model = CEModel()
    trainer = quiet_trainer(tmp_path, callbacks=[LabelSmoothing(Linear(0.3, 0.0), interval="epoch")], max_epochs=3)
    trainer.fit(model)
    expected = [0.3, 0.2, 0.1]  # 0.3 · (1 - epoch / 3)
    for _, epoch, epsilon in model.seen:
        assert epsilon == pytest.approx(expected[epoch], abs=1e-12)
    assert {epoch for _, epoch, _ in model.seen} == {0, 1, 2}


def test_total_steps_override_and_clamp_after_the_end(tmp_path):
    model = CEModel()
    trainer = quiet_trainer(tmp_path, callbacks=[LabelSmoothing(Linear(0.2, 0.0), total_steps=4)], max_epochs=2)
    trainer.fit(model)
    expected = [0.2 * (1 - min(step / 4, 1.0)) for step in range(8)]  # t stays at 1 after 4 steps
    assert [epsilon for _, _, epsilon in model.seen] == pytest.approx(expected, abs=1e-12)


def test_max_steps_shortens_the_schedule(tmp_path):
    model = CEModel()
    trainer = quiet_trainer(tmp_path, callbacks=[LabelSmoothing(Step([0.5], [0.2, 0.05]))], max_epochs=3, max_steps=6)
    trainer.fit(model)
    # estimated_stepping_batches = min(3 · 4, 6) = 6: steps 0..2 give 0.2, steps 3..5 (t >= 0.5) give 0.05
    assert [epsilon for _, _, epsilon in model.seen] == [0.2, 0.2, 0.2, 0.05, 0.05, 0.05]


def test_float_schedule_is_constant(tmp_path):
    model = CEModel()
    callback = LabelSmoothing(0.15)
    assert callback.schedule == Constant(0.15)
    quiet_trainer(tmp_path, callbacks=[callback], max_epochs=1).fit(model)
    assert [epsilon for _, _, epsilon in model.seen] == [0.15] * BATCHES_PER_EPOCH


def test_epsilon_is_logged_every_step(tmp_path):
    model = CEModel()
    logger = CSVLogger(tmp_path, name="run", version=0)
    trainer = quiet_trainer(
        tmp_path, callbacks=[LabelSmoothing(Cosine(0.2, 0.0))], logger=logger, max_epochs=2, log_every_n_steps=1
    )
    trainer.fit(model)
    with open(tmp_path / "run" / "version_0" / "metrics.csv") as file:
        rows = [row for row in csv.DictReader(file) if row.get("train/epsilon")]
    logged = [float(row["train/epsilon"]) for row in rows]
    expected = [_cosine(0.2, 0.0, step / 8) for step in range(8)]
    assert logged == pytest.approx(expected, abs=1e-7)  # metrics pass through float32 tensors
    assert trainer.callback_metrics["train/epsilon"].item() == pytest.approx(expected[-1], abs=1e-7)


@pytest.mark.filterwarnings("ignore:Be aware that when using `ckpt_path`")  # the resumed run has no ModelCheckpoint
@pytest.mark.parametrize("interval", ["step", "epoch"])
def test_resume_follows_the_uninterrupted_curve(tmp_path, interval):
    schedule = Cosine(0.2, 0.01)
    straight = CEModel()
    quiet_trainer(tmp_path / "a", callbacks=[LabelSmoothing(schedule, interval=interval)], max_epochs=3).fit(straight)

    first = CEModel(stop_after_epoch=0)
    checkpoint = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)
    callbacks = [LabelSmoothing(schedule, interval=interval), checkpoint]
    quiet_trainer(tmp_path / "b", callbacks=callbacks, max_epochs=3, enable_checkpointing=True).fit(first)
    assert len(first.seen) == BATCHES_PER_EPOCH

    resumed = CEModel()
    trainer = quiet_trainer(tmp_path / "c", callbacks=[LabelSmoothing(schedule, interval=interval)], max_epochs=3)
    trainer.fit(resumed, ckpt_path=checkpoint.last_model_path)
    assert first.seen + resumed.seen == straight.seen
    # before the counters are restored, the module already holds the ε the interrupted run stopped with
    assert resumed.epsilon_at_fit_start == first.seen[-1][2]


def test_checkpoint_holds_state_of_each_instance(tmp_path):
    first, second = LabelSmoothing(Cosine(0.2, 0.0)), LabelSmoothing(0.1, interval="epoch")
    assert len({first.state_key, second.state_key, LabelSmoothing(0.1).state_key}) == 3
    trainer = quiet_trainer(tmp_path, callbacks=[first, second], max_epochs=1)
    trainer.fit(CEModel())
    path = tmp_path / "model.ckpt"
    trainer.save_checkpoint(path)
    states = torch.load(path, weights_only=False)["callbacks"]
    assert states[first.state_key]["schedule"] == "Cosine(start=0.2, end=0.0)"
    assert states[first.state_key]["epsilon"] == pytest.approx(_cosine(0.2, 0.0, 3 / 4), abs=1e-12)
    assert states[second.state_key] == {"epsilon": 0.1, "schedule": "Constant(epsilon=0.1)", "interval": "epoch",
                                        "total_steps": None}  # fmt: skip


def test_state_dict_round_trip():
    callback = LabelSmoothing(Linear(0.2, 0.0), total_steps=10)
    callback.epsilon = 0.12
    state = callback.state_dict()
    assert state == {"epsilon": 0.12, "schedule": "Linear(start=0.2, end=0.0)", "interval": "step", "total_steps": 10}
    restored = LabelSmoothing(Linear(0.2, 0.0), total_steps=10)
    restored.load_state_dict(state)
    assert restored.state_dict() == state
    older = LabelSmoothing(Linear(0.2, 0.0))
    older.load_state_dict({"epsilon": 0.05})  # a state written before the other keys existed still loads
    assert older.epsilon == 0.05


def test_load_state_with_other_settings_warns():
    callback = LabelSmoothing(Linear(0.2, 0.0))
    with pytest.warns(UserWarning, match=r"differ from the checkpoint's .*'total_steps': \(10, None\)"):
        callback.load_state_dict(LabelSmoothing(Linear(0.2, 0.0), total_steps=10).state_dict())


def test_state_holds_the_loss_it_chose_and_a_different_loss_warns_on_load():
    assert "objective" not in LabelSmoothing(0.1).state_dict()  # the mixin's own loss: the state is as before
    mbls = LabelSmoothing(0.1, objective="mbls", margin=5.0, focal_gamma=2.0).state_dict()
    assert {k: mbls[k] for k in ("objective", "margin")} == {"objective": "mbls", "margin": 5.0}
    assert "focal_gamma" not in mbls  # a parameter the objective does not read
    focal = LabelSmoothing(0.0, objective="focal", focal_gamma=2.0).state_dict()
    assert (focal["objective"], focal["focal_gamma"], "margin" in focal) == ("focal", 2.0, False)
    LabelSmoothing(0.1, objective="mbls", margin=5.0).load_state_dict(mbls)  # the same loss: no warning
    with pytest.warns(UserWarning, match=r"differ from the checkpoint's .*'margin': \(5.0, 10.0\)"):
        LabelSmoothing(0.1, objective="mbls", margin=10.0).load_state_dict(mbls)
    with pytest.warns(UserWarning, match=r"'objective': \('mbls', 'confidence_penalty'\)"):
        LabelSmoothing(0.1, objective="confidence_penalty").load_state_dict(mbls)


def test_resume_from_checkpoint_without_our_state_warns(tmp_path):
    trainer = quiet_trainer(tmp_path, callbacks=[], max_epochs=1)
    trainer.fit(CEModel())
    path = tmp_path / "plain.ckpt"
    trainer.save_checkpoint(path)
    resumed = CEModel()
    trainer = quiet_trainer(tmp_path, callbacks=[LabelSmoothing(Linear(0.2, 0.0))], max_epochs=2)
    with pytest.warns(UserWarning, match=r"no state for `LabelSmoothing\{.*recomputed from the restored trainer"):
        trainer.fit(resumed, ckpt_path=path)
    # ε is still derived from the restored step count: steps 4..7 of an 8-step linear decay
    assert [epsilon for _, _, epsilon in resumed.seen] == pytest.approx([0.2 * (1 - k / 8) for k in range(4, 8)])


@pytest.mark.filterwarnings("ignore:Be aware that when using `ckpt_path`")  # Lightning's own notice of the same
def test_resume_with_changed_schedule_names_the_checkpoint_state(tmp_path):
    trainer = quiet_trainer(tmp_path, callbacks=[LabelSmoothing(Linear(0.2, 0.0))], max_epochs=1)
    trainer.fit(CEModel())
    path = tmp_path / "linear.ckpt"
    trainer.save_checkpoint(path)
    trainer = quiet_trainer(tmp_path, callbacks=[LabelSmoothing(Cosine(0.2, 0.0))], max_epochs=2)
    with pytest.warns(UserWarning, match=r"It holds \[.*Linear\(start=0.2, end=0.0\).*\]: the schedule or interval"):
        trainer.fit(CEModel(), ckpt_path=path)


def test_validate_neither_checks_the_run_nor_warns(tmp_path, recwarn):
    class Validated(CEModel):
        def validation_step(self, batch, batch_idx):
            self.log("val/loss", self.criterion(self.layer(batch[0]), batch[1]))

        def val_dataloader(self):
            return DataLoader(_data(), batch_size=BATCH)

    trainer = quiet_trainer(tmp_path, callbacks=[], max_epochs=1)
    trainer.fit(Validated())
    path = tmp_path / "plain.ckpt"
    trainer.save_checkpoint(path)
    trainer = quiet_trainer(
        tmp_path, callbacks=[LabelSmoothing(Cosine(0.2, 0.0))], max_epochs=-1
    )  # endless, but nothing trains
    trainer.validate(Validated(), ckpt_path=path)
    assert not [w for w in recwarn if "LabelSmoothing" in str(w.message)]


@pytest.mark.parametrize(
    ("trainer_kwargs", "callback_kwargs", "match"),
    [
        ({"max_epochs": -1}, {}, r"without end \(max_steps=-1, max_epochs=-1\)\. Set `Trainer\(max_steps=\.\.\.\)`"),
        ({"max_epochs": -1, "max_steps": 5}, {"interval": "epoch"}, r"needs the number of epochs.*max_epochs=-1"),
    ],
)
def test_endless_run_with_changing_schedule_is_refused(tmp_path, trainer_kwargs, callback_kwargs, match):
    trainer = quiet_trainer(tmp_path, callbacks=[LabelSmoothing(Cosine(0.2, 0.0), **callback_kwargs)], **trainer_kwargs)
    with pytest.raises(ValueError, match=match):
        trainer.fit(CEModel())


def test_endless_run_is_allowed_with_total_steps_or_constant(tmp_path):
    class Stopping(CEModel):
        def training_step(self, batch, batch_idx):
            if len(self.seen) == 5:
                self.trainer.should_stop = True
            return super().training_step(batch, batch_idx)

    for callback, expected in [
        (LabelSmoothing(0.1), [0.1] * 6),
        (LabelSmoothing(Linear(0.2, 0.0), total_steps=4), None),
    ]:
        model = Stopping()
        quiet_trainer(tmp_path, callbacks=[callback], max_epochs=-1).fit(model)
        expected = expected or [0.2 * (1 - min(k / 4, 1)) for k in range(6)]
        assert [epsilon for _, _, epsilon in model.seen] == pytest.approx(expected)


def test_unknown_length_dataloader_is_refused(tmp_path):
    class Stream(IterableDataset):
        def __iter__(self):
            yield from _data()

    class StreamModel(CEModel):
        def train_dataloader(self):
            return DataLoader(Stream(), batch_size=BATCH)

    trainer = quiet_trainer(tmp_path, callbacks=[LabelSmoothing(Cosine(0.2, 0.0))], max_epochs=1)
    with pytest.raises(ValueError, match=r"could not estimate the number of training steps.*total_steps=\.\.\."):
        trainer.fit(StreamModel())


def test_module_without_targets_is_refused(tmp_path):
    class Plain(CEModel):
        def __init__(self):
            super().__init__()
            del self.criterion

        def training_step(self, batch, batch_idx):
            return nn.functional.cross_entropy(self.layer(batch[0]), batch[1])

    trainer = quiet_trainer(tmp_path, callbacks=[LabelSmoothing(0.1)], max_epochs=1)
    with pytest.raises(ValueError, match=r"found nothing to set ε on in Plain.*LabelSmoothingMixin.*CrossEntropyLoss"):
        trainer.fit(Plain())


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"schedule": 1.5}, ValueError, r"argument `schedule` to be a float in \[0, 1\], but got 1.5"),
        ({"schedule": "0.1"}, TypeError, r"argument `schedule` to be a float or .*Schedule.*, but got '0.1'"),
        ({"schedule": lambda t: 0.1}, TypeError, r"argument `schedule`.*subclass it"),
        ({"schedule": True}, TypeError, r"argument `schedule`"),
        ({"interval": "batch"}, ValueError, r"argument `interval` to be one of \('step', 'epoch'\), but got 'batch'"),
        ({"total_steps": 0}, ValueError, r"argument `total_steps` to be a positive int or None, but got 0"),
        ({"total_steps": 2.5}, TypeError, r"argument `total_steps`.*2.5"),
        ({"total_steps": 10, "interval": "epoch"}, ValueError, r"`total_steps` to be None with interval='epoch'"),
    ],
)
def test_invalid_arguments(kwargs, error, match):
    with pytest.raises(error, match=match):
        LabelSmoothing(**kwargs)


def test_pickle_and_repr(tmp_path):
    callback = LabelSmoothing(Cosine(0.2, 0.0), interval="step", total_steps=8)
    assert repr(callback) == "LabelSmoothing(schedule=Cosine(start=0.2, end=0.0), interval='step', total_steps=8)"
    quiet_trainer(tmp_path, callbacks=[callback], max_epochs=1).fit(CEModel())
    clone = pickle.loads(pickle.dumps(callback))  # ddp_spawn pickles callbacks
    assert repr(clone) == repr(callback)
    assert clone.state_key == callback.state_key
    assert clone.state_dict() == callback.state_dict()
    assert clone._targets == []


def test_built_by_jsonargparse_like_lightning_cli():
    jsonargparse = pytest.importorskip("jsonargparse")
    parser = jsonargparse.ArgumentParser(exit_on_error=False)
    parser.add_argument("--callback", type=L.Callback)
    config = {
        "class_path": "ls_lightning.LabelSmoothing",
        "init_args": {
            "schedule": {
                "class_path": "ls_lightning.smoothing.Step",
                "init_args": {"milestones": [0.5], "values": [0.2, 0.0]},
            },
            "interval": "epoch",
        },
    }
    callback = parser.instantiate(parser.parse_args([f"--callback={json.dumps(config)}"])).callback
    assert repr(callback) == repr(LabelSmoothing(Step([0.5], [0.2, 0.0]), interval="epoch"))
    with pytest.raises(jsonargparse.ArgumentError):  # Literal options are checked by the parser already
        parser.parse_args(['--callback={"class_path": "ls_lightning.LabelSmoothing", "init_args": {"interval": "x"}}'])


def test_mixin_module_is_scheduled(tmp_path):
    class Seen(Net):
        def __init__(self) -> None:
            super().__init__(4, 3)
            self.seen: list[float] = []

        def training_step(self, batch, batch_idx):
            self.seen.append(self.label_smoothing)
            return super().training_step(batch, batch_idx)

    model = Seen()
    trainer = quiet_trainer(tmp_path, callbacks=[LabelSmoothing(Cosine(0.3, 0.0))], max_epochs=2)
    trainer.fit(model, DataLoader(_data(), batch_size=BATCH))
    assert model.seen == pytest.approx([_cosine(0.3, 0.0, k / 8) for k in range(8)], abs=1e-12)


def test_label_smoothed_cross_entropy_module_is_scheduled(tmp_path):
    from ls_lightning import losses

    class WrapperModel(CEModel):
        def __init__(self):
            super().__init__()
            self.criterion = losses.LabelSmoothedCrossEntropy()

        def training_step(self, batch, batch_idx):
            out = super().training_step(batch, batch_idx)
            return getattr(out, "loss", out)  # the module may return the (loss, h_pq, h_uq) tuple

    model = WrapperModel()
    quiet_trainer(tmp_path, callbacks=[LabelSmoothing(Linear(0.2, 0.0))], max_epochs=1).fit(model)
    assert [epsilon for _, _, epsilon in model.seen] == pytest.approx([0.2 * (1 - k / 4) for k in range(4)])


@pytest.mark.slow
def test_ddp_ranks_see_the_same_epsilon(tmp_path):
    """Two CPU processes (gloo, ``ddp_spawn`` so the callback is pickled) follow the single-process formula."""
    if not torch.distributed.is_available():
        pytest.skip("torch.distributed is not available")
    model = RecordingCEModel(str(tmp_path))
    trainer = quiet_trainer(
        tmp_path,
        callbacks=[LabelSmoothing(Cosine(0.2, 0.0))],
        strategy="ddp_spawn",
        devices=2,
        max_epochs=2,
    )
    trainer.fit(model)
    total = 2 * BATCHES_PER_EPOCH // 2  # the sampler splits each epoch's batches between the two ranks
    seen = [json.loads((tmp_path / f"rank{rank}.json").read_text()) for rank in (0, 1)]
    assert seen[0] == seen[1]
    assert [(step, epoch) for step, epoch, _ in seen[0]] == [(step, step // (total // 2)) for step in range(total)]
    assert [epsilon for *_, epsilon in seen[0]] == pytest.approx([_cosine(0.2, 0.0, k / total) for k in range(total)])


@pytest.mark.parametrize("prior", ["online", [0.2, 0.3, 0.5]])
def test_prior_is_built_by_jsonargparse(prior):
    jsonargparse = pytest.importorskip("jsonargparse")
    parser = jsonargparse.ArgumentParser(exit_on_error=False)
    parser.add_argument("--callback", type=L.Callback)
    config = {"class_path": "ls_lightning.LabelSmoothing", "init_args": {"schedule": 0.1, "prior": prior}}
    callback = parser.instantiate(parser.parse_args([f"--callback={json.dumps(config)}"])).callback
    assert repr(callback) == repr(LabelSmoothing(0.1, prior=prior))
    with pytest.raises(jsonargparse.ArgumentError):  # neither a known name nor a list of floats
        parser.parse_args(['--callback={"class_path": "ls_lightning.LabelSmoothing", "init_args": {"prior": "x"}}'])


def test_state_key_follows_the_schedule_and_interval() -> None:
    # Lightning reads state_key on every hook call, so it is cached: the cache must not outlive what it names.
    callback = LabelSmoothing(0.1)
    first = callback.state_key
    assert callback.state_key is first
    callback.schedule = Cosine(0.2, 0.0)
    assert callback.state_key != first and "Cosine" in callback.state_key
    callback.interval = "epoch"
    assert "epoch" in callback.state_key


def test_each_callback_instance_gets_its_own_state_back(tmp_path) -> None:
    trainer = quiet_trainer(
        tmp_path,
        callbacks=[LabelSmoothing(Cosine(0.2, 0.0)), LabelSmoothing(0.05, interval="epoch")],
        max_epochs=1,
    )
    trainer.fit(CEModel())
    path = tmp_path / "two.ckpt"
    trainer.save_checkpoint(path)
    saved = [(c.state_key, c.epsilon) for c in trainer.callbacks if isinstance(c, LabelSmoothing)]
    assert saved[0][1] != saved[1][1]
    # fresh instances, in the other order: Lightning matches states by `state_key`, not by position
    fresh = [LabelSmoothing(0.05, interval="epoch"), LabelSmoothing(Cosine(0.2, 0.0))]
    for callback in fresh:
        callback.epsilon = None
    quiet_trainer(tmp_path, callbacks=list(fresh), max_epochs=1).fit(
        CEModel(), ckpt_path=path
    )  # max_epochs reached: restores, trains nothing
    assert sorted((c.state_key, c.epsilon) for c in fresh) == sorted(saved)
