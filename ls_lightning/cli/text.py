"""The text corpus of ``data=text``: Python's standard library sources, a cached byte-level BPE tokenizer, blocks.

The tokenizer is trained by HuggingFace ``tokenizers`` (the ``data`` extra) and cached under a key that hashes the
corpus and the settings, so that later runs and the other processes of a run load it instead of training it again.
"""

from __future__ import annotations

import hashlib
import json
import os
import sysconfig
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

import torch
from torch import Tensor

from ls_lightning.cli.errors import MissingDependencyError

if TYPE_CHECKING:
    from tokenizers import Tokenizer

# The document separator (also the first token of each document) and the input padding token: ids 0 and 1.
END_OF_TEXT, PAD = "<|endoftext|>", "<pad>"
SPECIAL_TOKENS = (END_OF_TEXT, PAD)
# 256 bytes and the special tokens: the smallest byte-level vocabulary
MIN_VOCAB_SIZE = 256 + len(SPECIAL_TOKENS)
CACHE_ENV = "LS_LIGHTNING_CACHE"
# bump when the tokenizer's settings or the corpus selection change meaning
_FORMAT = 1
# folders of the standard library left out: installed third-party packages (they differ between machines) and tests
_SKIPPED_DIRS = frozenset({"site-packages", "dist-packages", "__pycache__", "test", "tests", "idle_test"})


class Document(NamedTuple):
    """One file of the corpus: its path relative to the standard library and its text."""

    name: str
    text: str


class CachedTokenizer(NamedTuple):
    """A tokenizer with the file it was loaded from and whether this call trained it (``seconds`` > 0 if so)."""

    tokenizer: Tokenizer
    path: Path
    trained: bool
    seconds: float


def stdlib_documents(max_bytes: int, root: Path | str | None = None) -> list[Document]:
    """Python's own standard library sources: a fixed selection of ``*.py`` files of at most ``max_bytes`` in all.

    Files are taken in a fixed order (top-level modules first, then by path) and each one that still fits is kept,
    so the selection depends only on the installed Python, not on the file system's order. Tests and installed
    third-party packages are left out.

    Args:
        max_bytes: the size cap of the corpus (bytes of UTF-8 text), >= 1.
        root: the standard library's folder; ``sysconfig.get_paths()["stdlib"]`` when ``None``.

    Returns:
        The documents, in the selection's order.

    Raises:
        ValueError: if no file fits under ``max_bytes``.
    """
    root = Path(root if root is not None else sysconfig.get_paths()["stdlib"])
    paths: list[Path] = []
    for folder, subfolders, files in os.walk(root):
        subfolders[:] = [name for name in subfolders if name not in _SKIPPED_DIRS]  # not walked at all
        paths += [Path(folder, name) for name in files if name.endswith(".py")]
    paths.sort(key=lambda p: (len(p.relative_to(root).parts), p.relative_to(root).as_posix()))
    documents, total = [], 0
    for path in paths:
        size = path.stat().st_size
        if total + size > max_bytes or size == 0:
            continue
        text = path.read_text(encoding="utf-8", errors="replace")
        documents.append(Document(path.relative_to(root).as_posix(), text))
        total += size
    if not documents:
        raise ValueError(f"Expected argument `max_corpus_bytes` to fit one file of {root}, but got {max_bytes}")
    return documents


def cache_root(cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """The cache folder: ``cache_dir``, else ``$LS_LIGHTNING_CACHE``, else ``~/.cache/ls_lightning``."""
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "ls_lightning").expanduser()


def tokenizer_key(documents: Sequence[Document], vocab_size: int, min_frequency: int) -> str:
    """A hash of everything the trained tokenizer depends on: the corpus, the settings and the library's version."""
    from tokenizers import __version__ as library_version

    settings = {"format": _FORMAT, "model": "byte-level-bpe", "vocab_size": vocab_size}
    settings |= {"min_frequency": min_frequency, "special_tokens": SPECIAL_TOKENS, "tokenizers": library_version}
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True).encode())
    for document in documents:
        digest.update(hashlib.sha256(document.name.encode()).digest())
        digest.update(hashlib.sha256(document.text.encode("utf-8", errors="surrogatepass")).digest())
    return digest.hexdigest()


def load_or_train_tokenizer(
    documents: Sequence[Document], vocab_size: int, min_frequency: int = 2, cache_dir: str | Path | None = None
) -> CachedTokenizer:
    """Load the byte-level BPE tokenizer of these documents and settings from the cache, training it if absent.

    Safe for processes that start together (DDP ranks, several runs): training is deterministic, and the file is
    written to a temporary name and moved into place (``os.replace``), so a reader sees a whole file or none; two
    processes that both train write the same file.

    Args:
        documents: the training corpus.
        vocab_size: the vocabulary size, >= 258 (256 bytes and 2 special tokens).
        min_frequency: pairs seen fewer times are not merged.
        cache_dir: see :func:`cache_root`.
    """
    key = tokenizer_key(documents, vocab_size, min_frequency)
    path = cache_root(cache_dir) / "tokenizers" / f"bpe-{vocab_size}-{key[:24]}.json"
    tokenizer_class = _tokenizer_class()
    if path.is_file():
        return CachedTokenizer(tokenizer_class.from_file(str(path)), path, False, 0.0)
    start = time.perf_counter()
    tokenizer = _train_tokenizer(documents, vocab_size, min_frequency)
    seconds = time.perf_counter() - start
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", dir=path.parent, prefix=path.name, suffix=".tmp", delete=False) as file:
        file.write(tokenizer.to_str())
    os.replace(file.name, path)
    return CachedTokenizer(tokenizer, path, True, seconds)


def _tokenizer_class() -> type[Tokenizer]:
    try:
        from tokenizers import Tokenizer
    except ImportError:
        raise MissingDependencyError(
            'The text data set needs HuggingFace tokenizers: install it with `pip install "ls-lightning[data]"`.'
        ) from None
    return Tokenizer


def _train_tokenizer(documents: Sequence[Document], vocab_size: int, min_frequency: int) -> Tokenizer:
    """Train a byte-level BPE (GPT-2's scheme: any text encodes, no unknown token) on the documents' texts."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator([d.text for d in documents], trainer=trainer, length=len(documents))
    return tokenizer


def document_blocks(ids: Sequence[int], block_size: int, pad_id: int, ignore_index: int) -> tuple[Tensor, Tensor]:
    """Cut one document's token stream into next-token (input, target) blocks of ``block_size`` positions.

    The stream is ``<|endoftext|>``, the document's tokens, ``<|endoftext|>``: every token and the document's end
    are a target exactly once. The last block is padded: inputs with ``pad_id``, targets with ``ignore_index``.

    Returns:
        int64 inputs and targets, each (ceil((len(ids) + 1) / block_size), block_size).

    Example:
        >>> x, y = document_blocks([5, 6, 7], block_size=3, pad_id=1, ignore_index=-100)
        >>> x.tolist(), y.tolist()
        ([[0, 5, 6], [7, 1, 1]], [[5, 6, 7], [0, -100, -100]])
    """
    eot = SPECIAL_TOKENS.index(END_OF_TEXT)
    stream = torch.tensor([eot, *ids, eot], dtype=torch.int64)
    targets = len(stream) - 1
    size = -(-targets // block_size) * block_size
    x = torch.full((size,), pad_id, dtype=torch.int64)
    y = torch.full((size,), ignore_index, dtype=torch.int64)
    x[:targets], y[:targets] = stream[:-1], stream[1:]
    return x.view(-1, block_size), y.view(-1, block_size)
