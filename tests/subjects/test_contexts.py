"""Contexts as the dictionary was trained: the activations we cache for a corpus equal the peers' own
encoders on the contexts the peers' own packing code builds from that corpus (SAELens's
concat_and_batch_sequences, sparsify's chunk_and_tokenize), with BOS, excluded tokens and positions
outside the trained slice never cached; and dictionary settings we cannot honour are refused before
the model loads."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers.cache_files import cached
from helpers.report_fixtures import WORDS
from helpers.tiny_subjects import make_tiny_llama

from autointerp.api import Run
from autointerp.config import ConfigError
from autointerp.option_table import options
from autointerp.subjects.contexts import (
    ContextError,
    Recorded,
    _one_per_context,
    _saelens,
    pack_contexts,
    recorded_contexts,
    resolve_contexts,
)
from autointerp.subjects.sources import DictionarySource

VOCAB = ["<unk>", "<s>", "</s>", *WORDS]
BOS, EOS = 1, 2
CTX = 64
HOOK = "blocks.1.hook_resid_post"  # the output of block 1 of 3
D_IN, D_SAE = 16, 24


def write_bos_subject(folder: Path) -> Path:
    """A tiny random 3-block Llama whose word-level tokenizer puts BOS first by default, as Llama's does."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    make_tiny_llama(seed=0, vocab=len(VOCAB), layers=3).save_pretrained(folder)
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(VOCAB)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", BOS)]
    )
    PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>").save_pretrained(
        folder
    )
    return folder


def corpus_documents(n: int = 24, seed: int = 0) -> list[str]:
    """Documents of 3 to 40 random words: some share a context, some span two."""
    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(WORDS, size=int(rng.integers(3, 40)))) for _ in range(n)]


@pytest.fixture(scope="module")
def subject(tmp_path_factory) -> Path:
    return write_bos_subject(tmp_path_factory.mktemp("subject"))


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> tuple[Path, list[str]]:
    docs = corpus_documents()
    path = tmp_path_factory.mktemp("corpus") / "corpus.txt"
    path.write_text("\n".join(docs) + "\n")
    return path, docs


def _tokenizer(subject: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(subject)


def hook_activations(subject: Path, rows: torch.Tensor, layer: int = 1) -> torch.Tensor:
    """The output of block `layer` on each row, read by a forward hook of our own (float32)."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(subject, dtype=torch.float32).eval()
    seen: list[torch.Tensor] = []
    handle = model.model.layers[layer].register_forward_hook(
        lambda module, args, out: seen.append((out[0] if isinstance(out, tuple) else out).detach())
    )
    with torch.no_grad():
        model(rows)
    handle.remove()
    return seen[0]


def assert_same_activations(ours: np.ndarray, reference: np.ndarray) -> None:
    """Our cached values (stored as float16) against the peer's float32 encoding: the same entries
    are nonzero and each value agrees to float16 precision."""
    assert ours.shape == reference.shape
    assert (reference > 0).sum() > 50, "the test needs activations to compare"
    np.testing.assert_allclose(ours, reference, rtol=1e-3, atol=1e-4)


def run_cache(out: Path, subject: Path, dictionary: Path, corpus: Path, **options) -> tuple[dict, list[str]]:
    lines: list[str] = []
    run = Run(
        out,
        progress=False,
        echo=lines.append,
        model=str(subject),
        dictionary=str(dictionary),
        corpus=str(corpus),
        dtype="float32",
        n_tokens=100_000,
        **options,
    )
    return run.cache(), lines


# ------------------------------------------------------------------------------------------ SAELens


def saelens_sae(folder: Path, **metadata):
    """A random standard SAE made and saved by SAELens itself, with the training metadata given."""
    sae_lens = pytest.importorskip("sae_lens")
    from sae_lens.saes.sae import SAEMetadata

    torch.manual_seed(1)
    cfg = sae_lens.StandardSAEConfig(
        d_in=D_IN, d_sae=D_SAE, metadata=SAEMetadata(model_name="tiny", hook_name=HOOK, **metadata)
    )
    sae = sae_lens.StandardSAE(cfg)
    with torch.no_grad():
        for p in sae.parameters():
            p.copy_(torch.randn_like(p) * 0.5)
    sae.save_model(folder)
    return sae


def saelens_contexts(tokenizer, docs: list[str], *, prepend_bos: bool, separator: int | None) -> torch.Tensor:
    """The contexts SAELens's ActivationsStore builds from raw text: each document tokenized without
    special tokens, packed by its own concat_and_batch_sequences."""
    from sae_lens.tokenization_and_batching import concat_and_batch_sequences

    tokens = (torch.tensor(tokenizer(doc, add_special_tokens=False)["input_ids"]) for doc in docs)
    contexts = concat_and_batch_sequences(
        tokens,
        context_size=CTX,
        begin_batch_token_id=tokenizer.bos_token_id if prepend_bos else None,
        begin_sequence_token_id=None,
        sequence_separator_token_id=separator,
    )
    return torch.stack(list(contexts))


def test_saelens_prepend_bos_parity(tmp_path, subject, corpus):
    """prepend_bos and context_size from the SAE's cfg: our rows are SAELens's contexts, BOS first, and
    every cached activation is SAELens's encode of the hook's activation there; the BOS position never."""
    corpus_path, docs = corpus
    sae = saelens_sae(tmp_path / "sae", prepend_bos=True, context_size=CTX, sequence_separator_token="bos")
    resolved, lines = run_cache(tmp_path / "run", subject, tmp_path / "sae", corpus_path)
    tokens, ours = cached(tmp_path / "run" / "cache")

    rows = saelens_contexts(_tokenizer(subject), docs, prepend_bos=True, separator=BOS)
    assert len(rows) >= 8
    np.testing.assert_array_equal(tokens, rows.numpy())
    assert (tokens[:, 0] == BOS).all()
    with torch.no_grad():
        reference = sae.encode(hook_activations(subject, rows)).numpy()
    reference[tokens == BOS] = 0  # the BOS position (position 0, and BOS between documents) is not cached
    assert_same_activations(ours, reference)

    assert resolved["contexts"]["ctx_len"] == CTX and resolved["contexts"]["prepend_bos"] is True
    said = "\n".join(lines)
    assert "prepend_bos=yes from the SAE's cfg.json" in said and f"ctx_len {CTX} from the SAE's cfg.json" in said
    stored = json.loads((tmp_path / "run" / "config.json").read_text())
    assert any("prepend_bos=yes" in why for why in stored["resolved"]["contexts"]["why"])
    meta = json.loads((tmp_path / "run" / "cache" / "meta.json").read_text())
    assert meta["contexts"]["prepend_bos"] is True and meta["contexts"]["separator"] == BOS


def test_saelens_excluded_tokens_and_slice_parity(tmp_path, subject, corpus):
    """exclude_special_tokens and seqpos_slice: only positions in the slice, and no special token, are
    cached, each with SAELens's value; EOS between documents as the cfg's separator."""
    corpus_path, docs = corpus
    sae = saelens_sae(
        tmp_path / "sae",
        prepend_bos=True,
        context_size=CTX,
        sequence_separator_token="eos",
        exclude_special_tokens=True,
        seqpos_slice=[5, 50],
    )
    run_cache(tmp_path / "run", subject, tmp_path / "sae", corpus_path)
    tokens, ours = cached(tmp_path / "run" / "cache")

    rows = saelens_contexts(_tokenizer(subject), docs, prepend_bos=True, separator=EOS)
    np.testing.assert_array_equal(tokens, rows.numpy())
    assert (tokens == EOS).any()
    with torch.no_grad():
        reference = sae.encode(hook_activations(subject, rows)).numpy()
    reference[np.isin(tokens, [BOS, EOS])] = 0
    reference[:, :5] = 0
    reference[:, 50:] = 0
    assert_same_activations(ours, reference)
    assert not ours[:, 50:].any() and not ours[np.isin(tokens, [BOS, EOS])].any()


def test_prepend_bos_override_and_folder_refuses_another_spec(tmp_path, subject, corpus):
    """--prepend-bos no and --ctx-len override the cfg; a folder cached with one spec refuses another."""
    corpus_path, _ = corpus
    saelens_sae(tmp_path / "sae", prepend_bos=True, context_size=CTX)
    resolved, lines = run_cache(tmp_path / "run", subject, tmp_path / "sae", corpus_path, prepend_bos="no", ctx_len=32)
    tokens, _ = cached(tmp_path / "run" / "cache")
    assert tokens.shape[1] == 32 and not (tokens[:, 0] == BOS).all()
    assert "prepend_bos=no from --prepend-bos" in "\n".join(lines)
    with pytest.raises(ConfigError, match="prepend_bos"):
        run_cache(tmp_path / "run", subject, tmp_path / "sae", corpus_path, prepend_bos="yes", ctx_len=32)


def test_folder_remembers_the_length_it_resolved(tmp_path, subject, corpus):
    """A folder cached with the cfg's context_size accepts the same length given explicitly later, and
    refuses another."""
    corpus_path, _ = corpus
    saelens_sae(tmp_path / "sae", prepend_bos=True, context_size=CTX)
    run_cache(tmp_path / "run", subject, tmp_path / "sae", corpus_path)
    run_cache(tmp_path / "run", subject, tmp_path / "sae", corpus_path, ctx_len=CTX)
    with pytest.raises(ConfigError, match="ctx_len"):
        run_cache(tmp_path / "run", subject, tmp_path / "sae", corpus_path, ctx_len=32)


def test_saelens_packing_matches_concat_and_batch_sequences():
    """Our packer against SAELens's own on token documents of every awkward kind: longer than a context,
    starting with BOS or with the separator, empty."""
    from sae_lens.tokenization_and_batching import concat_and_batch_sequences

    rng = np.random.default_rng(3)
    docs = [list(rng.integers(3, 90, size=int(n))) for n in rng.integers(0, 50, size=60)]
    docs[3] = [BOS, *docs[3]]
    docs[7] = [EOS, *docs[7]]
    docs[9] = [5] * 70
    for bos, sep in [(BOS, BOS), (BOS, EOS), (None, EOS), (BOS, None), (None, None)]:
        ours = list(_saelens(iter(docs), 16, bos, sep))
        theirs = concat_and_batch_sequences(
            (torch.tensor(d, dtype=torch.long) for d in docs),
            context_size=16,
            begin_batch_token_id=bos,
            sequence_separator_token_id=sep,
        )
        np.testing.assert_array_equal(np.stack(ours), torch.stack(list(theirs)).numpy())


def test_one_document_per_context_matches_saelens():
    from sae_lens.tokenization_and_batching import concat_and_batch_sequences

    rng = np.random.default_rng(4)
    docs = [list(rng.integers(3, 90, size=int(n))) for n in rng.integers(10, 30, size=40)]
    docs[2] = [BOS, *docs[2]]
    for bos in (BOS, None):
        ours = list(_one_per_context(iter(docs), 16, bos))
        theirs = concat_and_batch_sequences(
            (torch.tensor(d, dtype=torch.long) for d in docs),
            context_size=16,
            begin_batch_token_id=bos,
            disable_concat_sequences=True,
        )
        np.testing.assert_array_equal(np.stack(ours), torch.stack(list(theirs)).numpy())


def test_separator_recorded_as_none_and_bos_between_documents(tmp_path, subject):
    """A cfg that says no separator keeps none; BOS between documents is never cached even without BOS
    at position 0."""
    from helpers.checkpoint_fixtures import write_saelens

    folder = write_saelens(tmp_path / "sae", HOOK)
    cfg = json.loads((folder / "cfg.json").read_text())
    cfg["metadata"].update(prepend_bos=False, sequence_separator_token=None)
    (folder / "cfg.json").write_text(json.dumps(cfg))
    (recorded,) = recorded_contexts([DictionarySource(folder, None)])
    assert recorded.separator is None and recorded.prepend_bos is False
    spec = resolve_contexts([recorded], _tokenizer(subject))
    assert (spec.separator, spec.silenced_tokens) == (None, ())

    between = resolve_contexts([Recorded("x", "saelens", "cfg", prepend_bos=False)], _tokenizer(subject))
    assert (between.prepend_bos, between.separator, between.silenced_tokens) == (False, BOS, (BOS,))


# ------------------------------------------------------------------------------------------ sparsify


def test_sparsify_chunking_parity(tmp_path, subject, corpus):
    """A sparsify run folder (coder saved by sparsify, its run config.json with ctx_len): our rows are
    chunk_and_tokenize's chunks (BOS first, as the tokenizer adds it) and our cached activations are
    sparsify's encode there, BOS position aside."""
    pytest.importorskip("sparsify")
    from datasets import Dataset
    from sparsify import SparseCoder, SparseCoderConfig
    from sparsify.__main__ import RunConfig as SparsifyRun
    from sparsify.data import chunk_and_tokenize

    corpus_path, docs = corpus
    torch.manual_seed(2)
    coder_cfg = SparseCoderConfig(num_latents=D_SAE, k=4)
    coder = SparseCoder(D_IN, coder_cfg)
    with torch.no_grad():
        for p in coder.parameters():
            p.copy_(torch.randn_like(p) * 0.5)
    coder.save_to_disk(tmp_path / "run_sae" / "layers.1")
    SparsifyRun(sae=coder_cfg, ctx_len=CTX, hookpoints=["layers.1"]).save_json(tmp_path / "run_sae" / "config.json")

    resolved, lines = run_cache(tmp_path / "run", subject, tmp_path / "run_sae", corpus_path)
    tokens, ours = cached(tmp_path / "run" / "cache")

    chunks = chunk_and_tokenize(Dataset.from_dict({"text": docs}), _tokenizer(subject), max_seq_len=CTX, num_proc=1)
    rows = torch.stack(list(chunks["input_ids"]))
    np.testing.assert_array_equal(tokens, rows.numpy())
    assert (tokens[:, 0] == BOS).all()
    with torch.no_grad():
        hidden = hook_activations(subject, rows)
        out = coder.encode(hidden.flatten(0, 1))
        reference = torch.zeros(hidden.shape[0] * hidden.shape[1], D_SAE).scatter_(-1, out.top_indices, out.top_acts)
    reference = reference.reshape(*rows.shape, D_SAE).numpy()
    reference[tokens == BOS] = 0
    assert_same_activations(ours, reference)
    said = "\n".join(lines)
    assert f"ctx_len {CTX} from sparsify's run config.json" in said and "chunked as sparsify does" in said


# ------------------------------------------------------------------------------------------ choices


def test_auto_follows_the_tokenizer_when_nothing_is_recorded(tmp_path, subject):
    """A sparsify coder with no run config records nothing: BOS as the tokenizer adds it, 256 tokens,
    documents packed with EOS; a tokenizer without BOS keeps the plain packing."""
    from helpers.checkpoint_fixtures import write_subject
    from helpers.tiny_subjects import write_sparsify_sae

    write_sparsify_sae(tmp_path / "sae" / "layers.1")
    (recorded,) = recorded_contexts([DictionarySource(tmp_path / "sae" / "layers.1", None)])
    spec = resolve_contexts([recorded], _tokenizer(subject))
    assert (spec.prepend_bos, spec.ctx_len, spec.packing, spec.separator) == (True, 256, "saelens", EOS)
    assert "the tokenizer adds BOS by default" in spec.describe()
    rows = list(pack_contexts(["alpha beta gamma"] * 200, _tokenizer(subject), spec))
    assert all(row[0] == BOS for row in rows)

    plain = resolve_contexts([recorded], _tokenizer(write_subject(tmp_path / "nobos")))
    assert (plain.prepend_bos, plain.packing) == (False, "plain")


def test_gemma_scope_defaults(tmp_path, subject):
    from helpers.tiny_subjects import gemma_scope_params

    folder = tmp_path / "gemma-scope-2b-pt-res" / "layer_1" / "width_16k" / "average_l0_10"
    folder.mkdir(parents=True)
    np.savez(folder / "params.npz", **gemma_scope_params())
    spec = resolve_contexts(recorded_contexts([DictionarySource(folder, None)]), _tokenizer(subject))
    assert (spec.prepend_bos, spec.ctx_len, spec.separator) == (True, 1024, BOS)
    assert "ctx_len 1024 from Gemma Scope's defaults" in spec.describe()


def test_gemma_scope_with_an_unknown_array_is_refused(tmp_path):
    from helpers.tiny_subjects import gemma_scope_params

    np.savez(tmp_path / "params.npz", **gemma_scope_params(), input_scale=np.ones(16, np.float32))
    with pytest.raises(ContextError, match="unknown array 'input_scale'"):
        recorded_contexts([DictionarySource(tmp_path, "layers.1")])


def test_prepend_bos_yes_needs_a_bos_token(tmp_path):
    from helpers.checkpoint_fixtures import write_subject

    tokenizer = _tokenizer(write_subject(tmp_path / "nobos"))
    with pytest.raises(ContextError, match="no BOS token"):
        resolve_contexts([Recorded("x", "plain", "")], tokenizer, prepend_bos="yes")


def test_recorded_context_size_is_rounded_to_whole_windows(subject):
    spec = resolve_contexts([Recorded("x", "saelens", "cfg", prepend_bos=True, ctx_len=100)], _tokenizer(subject))
    assert spec.ctx_len == 96 and "rounded down to 96" in spec.describe()


def test_options_on_the_command_line():
    table = options()
    assert table["ctx_len"].dotted == "cache.ctx_len" and table["ctx_len"].frozen
    assert table["prepend_bos"].dotted == "cache.prepend_bos"
    assert {"run", "cache"} <= set(table["prepend_bos"].option.placement.commands)


# ------------------------------------------------------------------------------------------ refusals


@pytest.mark.parametrize(
    ("cfg", "named"),
    [
        ({"metadata": {"hook_name": HOOK, "hook_head_index": 2}}, "hook_head_index=2"),
        ({"metadata": {"hook_name": "blocks.1.attn.hook_z"}, "reshape_activations": "hook_z"}, "reshape_activations"),
        ({"metadata": {"hook_name": HOOK}, "normalize_activations": "sphere"}, "normalize_activations='sphere'"),
        ({"metadata": {"hook_name": HOOK, "mystery_setting": 3}}, "mystery_setting=3"),
        ({"hook_point": HOOK, "mystery": True}, "mystery=True"),
        (
            {"metadata": {"hook_name": HOOK, "model_from_pretrained_kwargs": {"center_writing_weights": True}}},
            "center_writing_weights=True",
        ),
    ],
)
def test_unhonoured_settings_are_refused_before_the_model_loads(tmp_path, corpus, cfg, named):
    """Each refused by name and value; the subject model named does not exist, so an error about it
    would mean the model was reached first."""
    from helpers.checkpoint_fixtures import write_saelens

    folder = write_saelens(tmp_path / "sae", HOOK)
    (folder / "cfg.json").write_text(json.dumps({"architecture": "standard", "d_in": 16, "d_sae": 20, **cfg}))
    with pytest.raises(ContextError, match=named.replace("(", r"\(")):
        run_cache(tmp_path / "run", tmp_path / "no-such-model", folder, corpus[0])


def test_the_command_line_says_what_it_chose_and_refuses_bos_without_one(tmp_path, subject, corpus, capsys):
    from helpers.checkpoint_fixtures import write_subject

    from autointerp.cli import main

    saelens_sae(tmp_path / "sae", prepend_bos=True, context_size=CTX)
    common = ["--dictionary", str(tmp_path / "sae"), "--corpus", str(corpus[0]), "--n-tokens", "512"]
    assert main(["cache", "--out", str(tmp_path / "run"), "--model", str(subject), *common]) == 0
    out = capsys.readouterr().out
    assert "contexts: prepend_bos=yes from the SAE's cfg.json" in out and "BOS positions are never cached" in out

    nobos = write_subject(tmp_path / "nobos")
    rc = main(["cache", "--out", str(tmp_path / "r2"), "--model", str(nobos), *common, "--prepend-bos", "yes"])
    assert rc == 2 and "--prepend-bos yes: the tokenizer has no BOS token" in capsys.readouterr().err
