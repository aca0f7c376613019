"""ε schedules against hand-computed values, their validation, and their value-object behaviour."""

import copy
import itertools
import math
import pickle

import pytest

from ls_lightning.smoothing import Constant, Cosine, Exponential, Linear, Schedule, Step, TwoStage

# (schedule, t, ε by hand)
HAND_VALUES = [
    (Constant(0.1), 0.0, 0.1),
    (Constant(0.1), 0.5, 0.1),
    (Constant(0.1), 1.0, 0.1),
    (Constant(0.0), 0.3, 0.0),
    (Linear(0.2, 0.0), 0.0, 0.2),
    (Linear(0.2, 0.0), 0.25, 0.15),
    (Linear(0.2, 0.0), 0.5, 0.1),
    (Linear(0.2, 0.0), 1.0, 0.0),
    (Linear(0.0, 0.3), 1 / 3, 0.1),
    (Cosine(0.2, 0.0), 0.0, 0.2),
    (Cosine(0.2, 0.0), 0.5, 0.1),  # cos(π/2) = 0: halfway
    (Cosine(0.2, 0.0), 1 / 3, 0.15),  # w = (1 + 1/2) / 2 = 3/4
    (Cosine(0.2, 0.0), 2 / 3, 0.05),  # w = (1 - 1/2) / 2 = 1/4
    (Cosine(0.2, 0.0), 1.0, 0.0),
    (Cosine(0.0, 0.4), 0.5, 0.2),
    (Exponential(0.4, 0.1), 0.0, 0.4),
    (Exponential(0.4, 0.1), 0.5, 0.2),  # sqrt(0.4 · 0.1)
    (Exponential(0.4, 0.1), 1.0, 0.1),
    (Exponential(0.8, 0.1), 1 / 3, 0.4),  # 0.8 · (1/8)^(1/3)
    (Exponential(0.8, 0.1), 2 / 3, 0.2),
    (Step([0.3, 0.6], [0.2, 0.1, 0.0]), 0.0, 0.2),
    (Step([0.3, 0.6], [0.2, 0.1, 0.0]), 0.29, 0.2),
    (Step([0.3, 0.6], [0.2, 0.1, 0.0]), 0.3, 0.1),  # at a milestone the next value holds
    (Step([0.3, 0.6], [0.2, 0.1, 0.0]), 0.45, 0.1),
    (Step([0.3, 0.6], [0.2, 0.1, 0.0]), 0.6, 0.0),
    (Step([0.3, 0.6], [0.2, 0.1, 0.0]), 1.0, 0.0),
    (Step([0.0], [0.5, 0.2]), 0.0, 0.2),  # a milestone at 0 means the first value never holds
    (Step([1.0], [0.2, 0.0]), 0.999, 0.2),
    (Step([1.0], [0.2, 0.0]), 1.0, 0.0),
    (Step([], [0.3]), 0.7, 0.3),
    (TwoStage(0.1, 0.8), 0.0, 0.1),
    (TwoStage(0.1, 0.8), 0.79, 0.1),
    (TwoStage(0.1, 0.8), 0.8, 0.0),  # at switch_at ε is already 0
    (TwoStage(0.1, 0.8), 1.0, 0.0),
    (TwoStage(0.1, 0.0), 0.0, 0.0),
    (TwoStage(0.1, 1.0), 1.0, 0.0),
]


@pytest.mark.parametrize(("schedule", "t", "expected"), HAND_VALUES)
def test_hand_values(schedule, t, expected):
    value = schedule(t)
    assert isinstance(value, float)
    assert value == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize(
    "schedule", [Linear(0.1, 0.3), Cosine(0.1, 0.3), Exponential(0.1, 0.3), Linear(0.3, 0.1), Cosine(0.7, 0.2)]
)
def test_endpoints_are_exact(schedule):
    assert schedule(0.0) == schedule.start
    assert schedule(1.0) == schedule.end


def test_exponential_is_geometric():
    schedule = Exponential(0.5, 0.02)
    ts = [i / 10 for i in range(11)]
    ratios = [schedule(b) / schedule(a) for a, b in itertools.pairwise(ts)]
    assert ratios == pytest.approx([(0.02 / 0.5) ** 0.1] * 10, rel=1e-12)


@pytest.mark.parametrize(
    "schedule", [Linear(0.3, 0.0), Cosine(0.3, 0.0), Exponential(0.3, 0.01), Step([0.5], [0.3, 0.0])]
)
def test_decreasing_schedules_are_monotone(schedule):
    values = [schedule(i / 100) for i in range(101)]
    assert all(b <= a for a, b in itertools.pairwise(values))


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda: Constant(1.5), r"argument `epsilon` to be a float in \[0, 1\], but got 1.5"),
        (lambda: Constant(-0.1), r"`epsilon`.*-0.1"),
        (lambda: Constant(math.nan), r"`epsilon`.*nan"),
        (lambda: Linear(0.1, 2.0), r"`end`.*2.0"),
        (lambda: Linear(-1, 0.0), r"`start`.*-1"),
        (lambda: Cosine(1.01, 0.0), r"`start`.*1.01"),
        (lambda: Exponential(0.1, 0.0), r"`end` to be a float in \(0, 1\] \(geometric\), but got 0.0"),
        (lambda: Exponential(0.0, 0.1), r"`start`.*\(0, 1\].*0.0"),
        (lambda: Exponential(0.1, 1.2), r"`end`.*1.2"),
        (lambda: Step([0.5], [0.1, 1.1]), r"`values\[1\]`.*1.1"),
        (lambda: Step([1.5], [0.1, 0.0]), r"`milestones\[0\]`.*1.5"),
        (lambda: Step([0.6, 0.3], [0.1, 0.1, 0.0]), r"`milestones` to increase strictly, but got \[0.6, 0.3\]"),
        (lambda: Step([0.3, 0.3], [0.1, 0.1, 0.0]), r"`milestones` to increase strictly"),
        (lambda: Step([0.5], [0.1]), r"`values` to hold len\(milestones\) \+ 1 = 2 values, but got 1"),
        (lambda: Step([0.5], [0.1, 0.0, 0.0]), r"but got 3"),
        (lambda: TwoStage(0.1, 1.2), r"`switch_at`.*1.2"),
        (lambda: TwoStage(2.0, 0.5), r"`epsilon`.*2.0"),
    ],
)
def test_invalid_arguments_raise_value_error(make, match):
    with pytest.raises(ValueError, match=match):
        make()


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda: Constant("0.1"), r"`epsilon`.*'0.1'"),
        (lambda: Constant(True), r"`epsilon`.*True"),
        (lambda: Linear(None, 0.0), r"`start`.*None"),
        (lambda: Step(0.5, [0.1, 0.0]), r"`milestones` to be a list of floats.*0.5"),
        (lambda: Step([0.5], "ab"), r"`values` to be a list of floats.*'ab'"),
    ],
)
def test_invalid_types_raise_type_error(make, match):
    with pytest.raises(TypeError, match=match):
        make()


@pytest.mark.parametrize("t", [-0.01, 1.01, math.nan, math.inf])
@pytest.mark.parametrize("schedule", [Constant(0.1), Linear(0.1, 0.0), Step([0.5], [0.1, 0.0]), TwoStage(0.1, 0.5)])
def test_progress_outside_unit_interval_is_refused(schedule, t):
    with pytest.raises(ValueError, match=r"argument `t` to be a float in \[0, 1\]"):
        schedule(t)


def test_progress_of_wrong_type_is_refused():
    with pytest.raises(TypeError, match=r"argument `t`"):
        Cosine(0.1, 0.0)("0.5")


def test_repr():
    assert repr(Constant(0.1)) == "Constant(epsilon=0.1)"
    assert repr(Cosine(start=0.1, end=0.0)) == "Cosine(start=0.1, end=0.0)"
    assert repr(Linear(1, 0)) == "Linear(start=1.0, end=0.0)"  # ints are stored as floats
    assert repr(Exponential(0.2, 0.01)) == "Exponential(start=0.2, end=0.01)"
    assert repr(Step([0.5], [0.1, 0])) == "Step(milestones=(0.5,), values=(0.1, 0.0))"
    assert repr(TwoStage(0.1, switch_at=0.8)) == "TwoStage(epsilon=0.1, switch_at=0.8)"


ALL = [
    Constant(0.1),
    Linear(0.2, 0.0),
    Cosine(0.2, 0.0),
    Exponential(0.2, 0.01),
    Step([0.5], [0.1, 0.0]),
    TwoStage(0.1, 0.8),
]


@pytest.mark.parametrize("schedule", ALL)
def test_value_object(schedule):
    assert isinstance(schedule, Schedule)
    for clone in (pickle.loads(pickle.dumps(schedule)), copy.deepcopy(schedule), eval(repr(schedule))):
        assert clone == schedule
        assert hash(clone) == hash(schedule)
        assert [clone(i / 8) for i in range(9)] == [schedule(i / 8) for i in range(9)]
    with pytest.raises(AttributeError):
        schedule.start = 0.5  # frozen: a schedule cannot drift during a run


def test_equality_is_by_type_and_value():
    assert Linear(0.2, 0.0) == Linear(0.2, 0)
    assert Linear(0.2, 0.0) != Linear(0.2, 0.1)
    assert Linear(0.2, 0.0) != Cosine(0.2, 0.0)
    assert Step([0.5], [0.1, 0.0]) == Step((0.5,), (0.1, 0.0))  # lists and tuples alike


def test_step_keeps_no_reference_to_caller_lists():
    milestones, values = [0.5], [0.1, 0.0]
    schedule = Step(milestones, values)
    milestones[0], values[0] = 0.9, 0.9
    assert schedule(0.6) == 0.0 and schedule(0.4) == 0.1


def test_base_class_is_abstract():
    with pytest.raises(TypeError):
        Schedule()


def test_instantiated_by_jsonargparse_from_class_path():
    """A LightningCLI-style config (``class_path``/``init_args``) builds the same schedules."""
    jsonargparse = pytest.importorskip("jsonargparse")
    parser = jsonargparse.ArgumentParser(exit_on_error=False)
    parser.add_argument("--schedule", type=float | Schedule)
    cases = {
        '{"class_path": "ls_lightning.smoothing.Cosine", "init_args": {"start": 0.2, "end": 0.0}}': Cosine(0.2, 0.0),
        '{"class_path": "ls_lightning.smoothing.Step", "init_args": {"milestones": [0.5], "values": [0.1, 0.0]}}': Step(
            [0.5], [0.1, 0.0]
        ),
        '{"class_path": "ls_lightning.smoothing.TwoStage", "init_args": {"epsilon": 0.1, "switch_at": 0.8}}': TwoStage(
            0.1, 0.8
        ),
    }
    for text, expected in cases.items():
        config = parser.parse_args([f"--schedule={text}"])
        assert parser.instantiate(config).schedule == expected
    assert parser.instantiate(parser.parse_args(["--schedule=0.3"])).schedule == 0.3
