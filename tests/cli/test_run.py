"""``run_main``: what the command line's entry points share (a user's mistake is one line and exit status 2)."""

from __future__ import annotations

import pytest

from ls_lightning.cli.errors import MissingDependencyError
from ls_lightning.cli.run import run_main


def test_user_errors_are_one_line_and_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    def task(cfg: object) -> dict[str, float]:
        raise MissingDependencyError('The digits data set needs scikit-learn: pip install "ls-lightning[data]"')

    with pytest.raises(SystemExit) as info:
        run_main(task, None, "ls-train")  # type: ignore[arg-type]
    assert info.value.code == 2
    assert (
        capsys.readouterr().err
        == 'ls-train: error: The digits data set needs scikit-learn: pip install "ls-lightning[data]"\n'
    )
