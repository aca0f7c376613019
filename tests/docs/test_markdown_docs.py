"""The guides hold: every code block of README.md, docs/*.md and examples/**/*.md is a test (Sybil parses them).

- A ```python block runs, in a fresh namespace and a temporary working directory: each block is whole, as a reader
  copies it. An ``<!-- invisible-code-block: python -->`` comment just before a block runs first, as its setup.
- A shell block (bash, console, shell, sh) is checked, not run: each ``ls-train`` command line (also
  ``python -m ls_lightning.cli.train``, ``torchrun ... -m ls_lightning.cli.train`` and the overrides passed to
  ``torchrun_loopback.sh``) is composed with Hydra's compose API against the package's configs, every value of a
  ``-m`` sweep once, and checked by :func:`ls_lightning.cli.config.validate_config`, the check ``ls-train`` runs
  before it trains; ``ls-eval`` lines the same against ``eval.yaml``; ``ls-report`` lines are parsed by its own
  argument parser; the extras of a ``pip install`` exist; a script run with ``python``/``bash`` exists.
  A renamed key, group, option, extra or file in the guides fails here.
- A yaml block parses, and each of its top-level entries with a ``_target_`` instantiates.
- A block that needs a GPU, several machines, a plugin the package does not bring or minutes is marked skipped with
  the reason in the marker, an HTML comment invisible on GitHub and in the built site:
  ``<!-- skip: next "needs a GPU" -->``.
"""

from __future__ import annotations

import os
import re
import shlex
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from sybil import Document, Example, Sybil
from sybil.parsers.myst import CodeBlockParser, PythonCodeBlockParser, SkipParser

ROOT = Path(__file__).resolve().parents[2]
GUIDES = sorted(
    [ROOT / "README.md", *(ROOT / "docs").glob("*.md"), *(ROOT / "examples").rglob("*.md")],
    key=lambda path: str(path.relative_to(ROOT)),
)
SHELLS = ("bash", "console", "shell", "sh")
# what a guide writes where a run's own value goes: a run directory's date and time, "your other overrides"
PLACEHOLDER = re.compile(r"<[a-z ]+>|\.\.\.")


def _extras() -> set[str]:
    try:
        import tomllib  # Python 3.11+
    except ImportError:
        return set()
    return set(tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"])


EXTRAS = _extras()


def _check_shell_block(example: Example) -> None:
    for cwd, argv in _commands(example.parsed):
        _check_command(cwd, argv)


def _check_yaml_block(example: Example) -> None:
    """A YAML block parses; each top-level node with a ``_target_`` (a Hydra config entry) instantiates."""
    import yaml
    from hydra.utils import instantiate

    for node in (yaml.safe_load(example.parsed) or {}).values():
        if isinstance(node, dict) and "_target_" in node:
            instantiate(node)


SYBIL = Sybil(
    parsers=[
        SkipParser(),
        PythonCodeBlockParser(),
        *(CodeBlockParser(language, _check_shell_block) for language in SHELLS),
        CodeBlockParser("yaml", _check_yaml_block),
    ]
)


def _is_block(example: Example) -> bool:
    """A fenced block the reader sees (not a skip marker, not an invisible setup block)."""
    lexemes = example.region.lexemes
    return "source" in lexemes and "directive" not in lexemes


def _blocks() -> Iterator[tuple[str, int]]:
    for path in GUIDES:
        for example in SYBIL.parse(path):
            if _is_block(example):
                yield str(path.relative_to(ROOT)), example.line


BLOCKS = list(_blocks())


@pytest.mark.parametrize(("guide", "line"), BLOCKS, ids=[f"{guide}:{line}" for guide, line in BLOCKS])
def test_code_block(guide: str, line: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The block at ``guide:line``, after the skip markers and setup blocks just before it."""
    monkeypatch.chdir(tmp_path)  # what a block writes (a Trainer's logs) stays out of the working tree
    monkeypatch.setenv("LS_LIGHTNING_CACHE", str(tmp_path / "cache"))
    document = SYBIL.parse(ROOT / guide)
    for example in _own_examples(document, line):
        example.evaluate()


def _own_examples(document: Document, line: int) -> list[Example]:
    """The examples since the previous visible block, up to the block at ``line``."""
    own: list[Example] = []
    for example in document:
        if example.line > line:
            break
        own = [example] if own and _is_block(own[-1]) else [*own, example]
    return own


def test_every_guide_has_its_blocks_found() -> None:
    """No fenced python or shell block escapes the parsers (an unclosed fence, a language spelt otherwise)."""
    fence = re.compile(r"^```(python|yaml|" + "|".join(SHELLS) + r")$", re.MULTILINE)
    for path in GUIDES:
        text = path.read_text()
        found = {line for guide, line in BLOCKS if guide == str(path.relative_to(ROOT))}
        expected = {text.count("\n", 0, match.start()) + 1 for match in fence.finditer(text)}
        assert found == expected, path


# shell blocks -----------------------------------------------------------------------------------------------------


def _commands(source: str) -> Iterator[tuple[Path, list[str]]]:
    """(working directory, argv) of each command of a shell block, from the repository's root, following `cd`."""
    cwd = ROOT
    for line in source.replace("\\\n", " ").splitlines():
        line = re.sub(r"^\s*\$ ", "", line).replace("$PWD", str(ROOT))
        lexer = shlex.shlex(line, posix=True, punctuation_chars="&;|")
        lexer.whitespace_split = True
        argv: list[str] = []
        for token in [*lexer, ";"]:
            if token not in ("&&", "||", ";", "|", "&"):
                argv.append(token)
                continue
            if argv and argv[0] == "cd":
                cwd = cwd / argv[1]
            elif argv:
                yield cwd, argv
            argv = []


def _check_command(cwd: Path, argv: list[str]) -> None:
    while argv and re.fullmatch(r"[A-Z_]+=\S*", argv[0]):  # VAR=value before the command
        argv = argv[1:]
    if argv[:2] == ["nice", "-n"]:
        argv = argv[3:]
    program, args = argv[0], argv[1:]
    if program in ("python", "python3", "torchrun", "srun") and "-m" in args:
        module = args[args.index("-m") + 1]
        program, args = (
            {"ls_lightning.cli.train": "ls-train", "ls_lightning.cli.eval": "ls-eval"}.get(module, module),
            args[args.index("-m") + 2 :],
        )
    if program == "ls-train":
        _check_overrides("train", args)
    elif program == "ls-eval":
        _check_overrides("eval", args)
    elif program == "ls-report":
        _check_report(args)
    elif program == "pip" and args[:1] == ["install"]:
        for extras in re.findall(r"\[([\w,-]+)\]", " ".join(args)):
            unknown = set(extras.split(",")) - EXTRAS if EXTRAS else set()
            assert not unknown, f"no such extra in pyproject.toml: {unknown} in pip install {' '.join(args)}"
    elif program.endswith((".py", ".sh")) or program in ("python", "python3", "bash"):
        script = program if program.endswith((".py", ".sh")) else next(a for a in args if not a.startswith("-"))
        assert (cwd / script).is_file(), f"{' '.join(argv)}: no {script} in {cwd.relative_to(ROOT)}"
        if script.endswith("torchrun_loopback.sh"):  # RUN_DIR PORT OVERRIDES...
            _check_overrides("train", args[2:])


def _check_overrides(config: str, args: list[str]) -> None:
    """Compose ``config`` with the command line's overrides (each value of a sweep once) and check the result."""
    from hydra import compose, initialize_config_module
    from hydra.core.override_parser.overrides_parser import OverridesParser

    from ls_lightning.cli.config import register_configs, validate_config
    from ls_lightning.cli.search import check_sweeper_plugins

    flags = [a for a in args if a.startswith("-")]
    assert set(flags) <= {"-m", "--multirun"}, f"ls-{config} {' '.join(args)}: flags not checked here: {flags}"
    overrides = [a for a in args if not a.startswith("-") and a != "..."]
    check_sweeper_plugins(overrides)
    placeholders = [o for o in overrides if PLACEHOLDER.search(o)]
    for override in placeholders:  # a path of the reader's own run: checked for its key only
        assert override.startswith(("ckpt_path=", "hydra.run.dir=")), override
    checkpoint = any(o.startswith("ckpt_path=") for o in overrides)
    assert config != "eval" or checkpoint, f"ls-eval {' '.join(args)}: ls-eval needs ckpt_path="
    concrete = [o for o in overrides if o not in placeholders and not o.startswith("ckpt_path=")]
    register_configs()
    with initialize_config_module("ls_lightning.conf", version_base="1.3"):
        for variant in _sweep_variants(OverridesParser.create().parse_overrides(concrete)):
            cfg = compose(config, overrides=[*variant, "ckpt_path=null"], return_hydra_config=True)
            validate_config(cfg)


def _sweep_variants(overrides: list) -> Iterator[list[str]]:
    """The overrides with each sweep (``seed=0,1,2``) taking each of its values once, the others their first."""
    fixed = [o.input_line for o in overrides if not o.is_sweep_override()]
    sweeps = {o.get_key_element(): list(o.sweep_string_iterator()) for o in overrides if o.is_sweep_override()}
    first = [f"{key}={values[0]}" for key, values in sweeps.items()]
    yield fixed + first
    for index, (key, values) in enumerate(sweeps.items()):
        for value in values[1:]:
            yield [*fixed, *first[:index], f"{key}={value}", *first[index + 1 :]]


def _check_report(args: list[str]) -> None:
    """``ls-report``'s own parser takes the arguments: run on a sweep directory that does not exist, it gets as far
    as looking for it."""
    from ls_lightning.cli.report import main

    missing = "/nonexistent/sweep"
    args = [missing if PLACEHOLDER.search(a) else a for a in args]
    stderr = sys.stderr
    sys.stderr = captured = _Capture()
    try:
        with pytest.raises(SystemExit):
            main(args)
    finally:
        sys.stderr = stderr
    assert f"to be a directory, but got '{missing}'" in captured.text, f"ls-report {' '.join(args)}: {captured.text}"


class _Capture:
    def __init__(self) -> None:
        self.text = ""

    def write(self, text: str) -> int:
        self.text += text
        return len(text)

    def flush(self) -> None:
        pass


def test_shell_commands_are_checked() -> None:
    """The checks themselves catch a renamed group, key, extra or flag."""
    _check_command(ROOT, ["ls-train", "-m", "seed=0,1", "data=synthetic", "data.label_noise=0.2"])
    with pytest.raises(Exception, match="schedulez"):
        _check_command(ROOT, ["ls-train", "label_smoothing/schedule=schedulez"])
    with pytest.raises(Exception, match="epsilonn"):
        _check_command(ROOT, ["ls-train", "label_smoothing.schedule.epsilonn=0.2"])
    with pytest.raises(Exception, match="out of range"):
        _check_command(ROOT, ["ls-train", "-m", "label_smoothing.schedule.epsilon=0.1,1.5"])
    with pytest.raises(AssertionError, match="no such extra"):
        _check_command(ROOT, ["pip", "install", "ls-lightning[clii]"])
    with pytest.raises(AssertionError, match="unrecognized"):
        _check_report(["multirun/train/<date>/<time>", "--no-figures"])
    assert [argv for _, argv in _commands("cd examples && python x.py --a 1  # note\nls-train \\\n  seed=1")] == [
        ["python", "x.py", "--a", "1"],
        ["ls-train", "seed=1"],
    ]
    assert os.path.isdir(ROOT / "examples")


# tables that must list everything ---------------------------------------------------------------------------------


def _table_rows(text: str, header: str) -> list[list[str]]:
    """The cells of each row of the Markdown table whose header row starts with ``header``."""
    start = text.index(header)
    rows = []
    for line in text[start:].splitlines()[2:]:
        if not line.startswith("|"):
            break
        rows.append([cell.strip() for cell in line.strip("|").split("|")])
    return rows


@pytest.mark.parametrize("guide", ["README.md", "docs/getting-started.md"])
def test_extras_table_lists_every_extra(guide: str) -> None:
    rows = _table_rows((ROOT / guide).read_text(), "| extra | brings | needed for |")
    listed = [re.fullmatch(r"`([\w-]+)`", row[0])[1] for row in rows]
    assert sorted(listed) == sorted(EXTRAS) or not EXTRAS


def test_config_groups_table_lists_every_option() -> None:
    """docs/command-line.md names every option of every config group that ships, and no other."""
    conf = ROOT / "ls_lightning" / "conf"
    rows = _table_rows((ROOT / "docs" / "command-line.md").read_text(), "| group | options | what |")
    listed = {}
    for row in rows:
        for group in re.findall(r"`([\w/]+)`", row[0]):
            listed[group] = set(re.findall(r"`(\w+)`", row[1]))
    shipped = {
        str(path.relative_to(conf)): {option.stem for option in path.glob("*.yaml")}
        for path in conf.rglob("*")
        if path.is_dir() and any(path.glob("*.yaml"))
    }
    assert {group: listed.get(group, set()) for group in shipped} == shipped


@pytest.mark.parametrize("guide", [str(path.relative_to(ROOT)) for path in GUIDES])
def test_guides_name_no_old_import_path(guide: str) -> None:
    """The guides name each module by its home, not by a path of ls_lightning 0.1 that only the graveyard keeps (a
    paragraph about the graveyard may list them)."""
    from ls_lightning import _graveyard

    old = "|".join(re.escape(path.removeprefix("ls_lightning.")) for path in _graveyard.MOVED)
    pattern = re.compile(rf"ls_lightning\.({old})\b(?![/\w])")
    paragraphs = (ROOT / guide).read_text().split("\n\n")
    wrong = [match.group(0) for p in paragraphs if "_graveyard" not in p for match in pattern.finditer(p)]
    assert not wrong, wrong
