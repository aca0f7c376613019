"""The language-model path: the standard-library corpus, the cached BPE tokenizer, token blocks, the Transformer.

The command line on two processes (``ls-train data=text model=transformer``, then ``ls-eval`` and ``ls-report``) is
tested in tests/e2e/test_ls_train_fsdp.py, with ``trainer=fsdp_cpu``.
"""

from __future__ import annotations

import hashlib
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from helpers import quiet_trainer

from ls_lightning.cli import text as _text
from ls_lightning.cli.data import SequencesPerEpochSampler, TextDataModule
from ls_lightning.cli.models import Transformer

pytest.importorskip("tokenizers")

TINY = dict(vocab_size=300, block_size=16, max_corpus_bytes=30_000, batch_size=8)
BIN = Path(sys.executable).parent


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty tokenizer cache, also the default one ($LS_LIGHTNING_CACHE), and a count of tokenizer trainings."""
    monkeypatch.setenv(_text.CACHE_ENV, str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.fixture
def trainings(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    calls: list[int] = []
    train = _text._train_tokenizer

    def counted(*args, **kwargs):  # type: ignore[no-untyped-def]
        calls.append(1)
        return train(*args, **kwargs)

    monkeypatch.setattr(_text, "_train_tokenizer", counted)
    return calls


def tiny(**kwargs: object) -> TextDataModule:
    dm = TextDataModule(**{**TINY, **kwargs})  # type: ignore[arg-type]
    dm.setup()
    return dm


def test_tokenizer_is_trained_once_with_the_configured_vocabulary_then_loaded_from_the_cache(
    cache: Path, trainings: list[int]
) -> None:
    first = tiny()
    assert first.tokenizer.get_vocab_size() == 300 and trainings == [1]
    (path,) = (cache / "tokenizers").iterdir()
    stamp = path.stat().st_mtime_ns
    second = tiny(block_size=8)  # the blocks are not part of the tokenizer's key
    assert trainings == [1] and path.stat().st_mtime_ns == stamp
    assert second.tokenizer.to_str() == first.tokenizer.to_str()
    tiny(vocab_size=320)  # another setting: another tokenizer, next to the first
    assert trainings == [1, 1] and len(list((cache / "tokenizers").iterdir())) == 2
    assert not list(cache.rglob("*.tmp"))


@pytest.mark.slow
def test_processes_started_together_write_one_tokenizer_that_later_processes_reuse(
    cache: Path, trainings: list[int]
) -> None:
    code = (
        "import hashlib; from ls_lightning.cli.data import TextDataModule;"
        f" dm = TextDataModule(**{TINY!r}); dm.setup();"
        " print(hashlib.sha256(dm.tokenizer.to_str().encode()).hexdigest())"
    )
    processes = [
        subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    outputs = [p.communicate(timeout=120) for p in processes]
    assert [p.returncode for p in processes] == [0, 0], [err[-2000:] for _, err in outputs]
    (path,) = (cache / "tokenizers").iterdir()  # one file, no temporary left behind
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    assert [out.split()[-1] for out, _ in outputs] == [digest, digest]
    tiny()  # this process loads it
    assert trainings == []


def test_default_config_trains_a_vocabulary_of_at_least_8k_tokens(cache: Path) -> None:
    from hydra import compose, initialize_config_module

    from ls_lightning.cli.config import register_configs

    register_configs()
    with initialize_config_module("ls_lightning.conf", version_base="1.3"):
        cfg = compose("train", overrides=["data=text", "model=transformer"])
    assert cfg.data.vocab_size >= 8192
    documents = _text.stdlib_documents(cfg.data.max_corpus_bytes)
    cached = _text.load_or_train_tokenizer(documents, cfg.data.vocab_size, cfg.data.min_frequency)
    assert cached.trained and cached.tokenizer.get_vocab_size() == cfg.data.vocab_size


def test_corpus_is_a_fixed_selection_of_the_standard_library_under_the_cap() -> None:
    import sysconfig

    documents = _text.stdlib_documents(100_000)
    root = Path(sysconfig.get_paths()["stdlib"])
    assert sum((root / d.name).stat().st_size for d in documents) <= 100_000
    assert all(d.text == (root / d.name).read_text(encoding="utf-8", errors="replace") for d in documents)
    assert not any("site-packages" in d.name or "/test" in d.name for d in documents)
    assert documents == _text.stdlib_documents(100_000)
    with pytest.raises(ValueError, match="`max_corpus_bytes`"):
        _text.stdlib_documents(1)


def test_blocks_are_next_token_pairs_of_each_document_with_padding_ignored(cache: Path) -> None:
    dm = tiny()
    x, y = (torch.cat([dm.splits[s].tensors[i] for s in ("train", "val", "test")]) for i in (0, 1))
    assert x.dtype == y.dtype == torch.int64 and x.shape == y.shape and x.shape[1] == 16
    padded = y == dm.ignore_index
    assert padded.any() and (x[padded] == dm.pad_id).all()
    assert (y[:, :-1] == x[:, 1:])[~padded[:, 1:]].all()  # the target is the next input (where one follows)
    # reference: the tokenizer applied to each source file, plus its end-of-text target
    documents = _text.stdlib_documents(TINY["max_corpus_bytes"])  # type: ignore[arg-type]
    encodings = [dm.tokenizer.encode(d.text, add_special_tokens=False) for d in documents]
    assert int((~padded).sum()) == sum(len(e.ids) + 1 for e in encodings)
    assert int(padded.sum()) == sum(-(len(e.ids) + 1) % 16 for e in encodings)
    assert dm.tokenizer.decode(encodings[0].ids) == documents[0].text  # byte-level: the text round-trips


def test_split_is_a_partition_fixed_by_split_seed_only(cache: Path) -> None:
    torch.manual_seed(1)
    first = tiny()
    torch.manual_seed(2)
    again = tiny()
    other = tiny(split_seed=1)
    sizes = {k: len(v) for k, v in first.splits.items()}
    total = sum(sizes.values())
    assert sizes["val"] == sizes["test"] == round(0.03 * total)
    for split in ("train", "val", "test"):
        assert torch.equal(first.splits[split].tensors[1], again.splits[split].tensors[1])
    assert not torch.equal(first.splits["val"].tensors[1], other.splits["val"].tensors[1])
    rows = {tuple(r.tolist()) for d in first.splits.values() for r in torch.cat(d.tensors, 1)}
    assert len(rows) == len({tuple(r.tolist()) for d in other.splits.values() for r in torch.cat(d.tensors, 1)})


def test_unigram_perplexity_is_the_add_one_unigram_model_of_the_training_targets(cache: Path) -> None:
    from collections import Counter

    dm = tiny()
    train, val = (dm.splits[s].tensors[1] for s in ("train", "val"))
    counts = Counter(t for t in train.flatten().tolist() if t != -100)
    total = sum(counts.values()) + dm.num_classes
    log_likelihood = [math.log((counts[t] + 1) / total) for t in val.flatten().tolist() if t != -100]
    reference = math.exp(-sum(log_likelihood) / len(log_likelihood))
    assert math.isclose(dm.unigram_perplexity("val"), reference, rel_tol=1e-9)
    with pytest.raises(ValueError, match="`split`"):
        dm.unigram_perplexity("valid")


def test_sequences_per_epoch_sampler_walks_shuffles_and_splits_them_across_processes() -> None:
    data = range(10)
    ranks = [SequencesPerEpochSampler(data, samples_per_epoch=4, seed=3, num_replicas=2, rank=r) for r in (0, 1)]
    seen: list[int] = []
    for epoch in range(5):
        for sampler in ranks:
            sampler.set_epoch(epoch)
        parts = [list(s) for s in ranks]
        assert [len(p) for p in parts] == [len(s) for s in ranks] == [2, 2]
        seen += parts[0] + parts[1]
    # epochs 0..4 take positions 0..19 of two shuffles of the 10 samples: each sample exactly twice
    assert sorted(seen) == sorted(2 * list(data))
    assert len(SequencesPerEpochSampler(data, 5, num_replicas=2, rank=0)) == 3  # rounded up: equal steps per rank
    with pytest.raises(ValueError, match="`samples_per_epoch`"):
        SequencesPerEpochSampler(data, 0)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"vocab_size": 100}, "`vocab_size` to be an int >= 258"),
        ({"block_size": 0}, "`block_size`"),
        ({"train_sequences_per_epoch": 0}, "`train_sequences_per_epoch`"),
        ({"val_fraction": 0.6, "test_fraction": 0.5}, "`val_fraction \\+ test_fraction` to be below 1"),
    ],
)
def test_text_datamodule_refuses_bad_arguments(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        TextDataModule(**kwargs)  # type: ignore[arg-type]


def small_model(**kwargs: object) -> Transformer:
    options = dict(num_features=16, num_classes=300, d_model=32, num_heads=2, dim_feedforward=64)
    return Transformer(**{**options, **kwargs})  # type: ignore[arg-type]


def test_transformer_is_causal_and_ties_its_output_layer_to_the_embedding() -> None:
    torch.manual_seed(0)
    model = small_model().eval()
    tokens = torch.randint(0, 300, (2, 16))
    changed = tokens.clone()
    changed[:, 10] = (changed[:, 10] + 1) % 300
    h, h_changed = model.hidden(tokens), model.hidden(changed)
    assert h.shape == (2, 16, 32)
    torch.testing.assert_close(h[:, :10], h_changed[:, :10])  # no position sees a later token
    assert not torch.allclose(h[:, 10:], h_changed[:, 10:])
    assert model.lm_head_weight is model.token_embedding.weight
    torch.testing.assert_close(model(tokens), h @ model.token_embedding.weight.T)
    assert small_model(tie_weights=False).lm_head_weight.shape == (300, 32)
    with pytest.raises(ValueError, match="`num_heads` to divide `d_model` = 32"):
        small_model(num_heads=3)
    with pytest.raises(ValueError, match="at most 16 tokens"):
        model.hidden(torch.zeros(1, 17, dtype=torch.int64))
    with pytest.raises(TypeError, match=r"integer token ids, but got torch\.float32"):
        model.hidden(torch.zeros(1, 16))


@pytest.mark.parametrize("tie_weights", [True, False])
def test_transformer_loss_and_gradients_equal_materialised_cross_entropy(tie_weights: bool) -> None:
    torch.manual_seed(0)
    model = small_model(tie_weights=tie_weights, label_smoothing=0.2).double()
    tokens = torch.randint(0, 300, (3, 16))
    target = torch.randint(0, 300, (3, 16))
    target[0, 9:] = target[2, 4:] = -100  # padding
    loss = model.training_step((tokens, target), 0)
    grads = [p.grad for p in (loss.backward(), *model.parameters())[1:]]
    model.zero_grad()
    reference = F.cross_entropy(model(tokens).transpose(1, 2), target, ignore_index=-100, label_smoothing=0.2)
    reference.backward()
    torch.testing.assert_close(loss, reference, rtol=1e-9, atol=1e-12)
    for grad, p in zip(grads, model.parameters(), strict=True):
        torch.testing.assert_close(grad, p.grad, rtol=1e-7, atol=1e-10)


def test_fast_dev_run_logs_the_mixin_keys_and_perplexity_on_tokens(cache: Path, tmp_path: Path) -> None:
    torch.manual_seed(0)
    dm = TextDataModule(**{**TINY, "train_sequences_per_epoch": 16})  # type: ignore[arg-type]
    model = small_model()
    trainer = quiet_trainer(tmp_path, fast_dev_run=True)
    trainer.fit(model, datamodule=dm)
    fit_metrics = dict(trainer.callback_metrics)
    trainer.test(model, datamodule=dm, verbose=False)
    metrics = {**fit_metrics, **trainer.callback_metrics}
    keys = ["loss", "h_pq", "h_uq", "acc", "ece", "perplexity"]
    extra = ["mce", "rmsce", "ece_adaptive", "brier", "overconfidence"]
    expected = {f"train/{k}" for k in keys} | {f"{s}/{k}" for s in ("val", "test") for k in keys + extra}
    assert expected <= set(metrics)
    for stage in ("train", "val", "test"):
        h_pq = metrics[f"{stage}/h_pq_epoch" if stage == "train" else f"{stage}/h_pq"]
        torch.testing.assert_close(metrics[f"{stage}/perplexity"], h_pq.exp())
    assert metrics["val/perplexity"] > 1.0
