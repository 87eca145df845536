"""A corpus by Hub dataset id, read by the real `datasets` library from a fake Hub on 127.0.0.1: the
documents are the dataset's rows (texts, or token ids from a pre-tokenized column), a split slice
reads its rows only, the files after the rows needed are never fetched, the commit read is recorded,
HF_HUB_OFFLINE / HF_DATASETS_OFFLINE are honoured, and every name that is not there gets one line
saying what is."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from itertools import islice
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from helpers.fake_hub import FakeHub, go_offline, point_clients_at
from helpers.tiny_subjects import make_tiny_llama, write_sparsify_sae

from autointerp.config import ConfigError, RunConfig
from autointerp.corpus import CorpusError, buffer_shuffled, iter_documents, iter_rows
from autointerp.corpus_choice import open_corpus

REPO = "alice/tiny-corpus"
WORDS = [f"w{i}" for i in range(90)]
# twelve documents of 50 words, six per data file; the words say which document they are in
TRAIN = [" ".join(WORDS[(d + j) % 90] for j in range(50)) for d in range(12)]
TEST = ["w1 w2 w3"]
TOKENS = [[3, 4, 5], [6, 7], [8, 9, 10, 11]]
CARD = b"""---
configs:
- config_name: plain
  default: true
  data_files:
  - split: train
    path: plain/train-*.parquet
  - split: test
    path: plain/test-*.parquet
- config_name: tok
  data_files:
  - split: train
    path: tok/train-*.parquet
---
# a tiny corpus
"""


def _parquet(frame: pd.DataFrame) -> bytes:
    out = io.BytesIO()
    frame.to_parquet(out, row_group_size=2)  # several row groups, as a real shard has
    return out.getvalue()


def _dataset_files(train: list[str] = TRAIN) -> dict[str, bytes]:
    return {
        "README.md": CARD,
        "plain/train-00000-of-00002.parquet": _parquet(pd.DataFrame({"text": train[:6], "id": range(6)})),
        "plain/train-00001-of-00002.parquet": _parquet(pd.DataFrame({"text": train[6:], "id": range(6, 12)})),
        "plain/test-00000-of-00001.parquet": _parquet(pd.DataFrame({"text": TEST, "id": [0]})),
        "tok/train-00000-of-00001.parquet": _parquet(pd.DataFrame({"input_ids": TOKENS})),
    }


@pytest.fixture
def hub(monkeypatch, tmp_path):
    server = FakeHub("hf_fAkEtOkEn0123456789abcdefXYZ")
    with server:
        point_clients_at(server, monkeypatch, tmp_path / "caches")
        yield server


def _read(*args, **kwargs) -> list:
    return list(open_corpus(*args, **kwargs).documents())


# ------------------------------------------------------------------------------------------ reading


def test_documents_are_the_rows_of_the_split_at_the_commit_recorded(hub):
    sha = hub.add_files(REPO, _dataset_files(), repo_type="dataset")
    corpus = open_corpus(REPO)
    assert corpus.name == f"{REPO}@{sha}/plain/train"  # the card's default config
    assert list(corpus.documents()) == TRAIN
    assert list(corpus.documents()) == TRAIN  # read again from the start
    assert _read(REPO, split="test") == TEST
    # a pre-tokenized column: the default 'text' is missing, input_ids is taken, ids as they are
    tokens = open_corpus(REPO, config="tok")
    assert tokens.name == f"{REPO}@{sha}/tok/train" and list(tokens.documents()) == TOKENS
    assert _read(REPO, config="tok", text_column="input_ids") == TOKENS
    assert not hub.unhandled


def test_a_split_slice_reads_those_rows(hub):
    hub.add_files(REPO, _dataset_files(), repo_type="dataset")
    assert _read(REPO, split="train[2:5]") == TRAIN[2:5]
    assert _read(REPO, split="train[:10]") == TRAIN[:10]
    # percentages and bounds from the end count the split's rows (12, in the Parquet footers)
    assert _read(REPO, split="train[:25%]") == TRAIN[:3]
    assert _read(REPO, split="train[50%:75%]") == TRAIN[6:9]
    assert _read(REPO, split="train[-2:]") == TRAIN[-2:]
    assert open_corpus(REPO, split="train[:25%]").name.endswith("/plain/train[:25%]")


def test_only_the_data_files_the_rows_need_are_fetched(hub):
    hub.add_files(REPO, _dataset_files(), repo_type="dataset")
    first, second = "plain/train-00000-of-00002.parquet", "plain/train-00001-of-00002.parquet"
    documents = open_corpus(REPO).documents()
    assert list(islice(documents, 3)) == TRAIN[:3]
    assert first in hub.downloads() and second not in hub.downloads()
    assert next(documents) == TRAIN[3]  # the stream goes on where it stopped
    # a slice that starts in the second file skips the rows before it, yet reads no more after its end
    hub.requests.clear()
    assert _read(REPO, split="train[4:7]") == TRAIN[4:7]
    assert second in hub.downloads() and "plain/test-00000-of-00001.parquet" not in hub.downloads()


def test_the_revision_is_pinned_and_a_moving_branch_is_seen(hub):
    v1 = hub.add_files(REPO, _dataset_files(), repo_type="dataset", tags=("v1",))
    newer = [doc.upper() for doc in TRAIN]
    head = hub.add_files(REPO, _dataset_files(newer), repo_type="dataset")
    assert open_corpus(REPO, revision="v1").name == f"{REPO}@{v1}/plain/train"
    assert _read(REPO, revision="v1") == TRAIN
    assert _read(REPO, revision=v1) == TRAIN
    latest = open_corpus(REPO)
    assert latest.name == f"{REPO}@{head}/plain/train" and list(latest.documents()) == newer


def test_a_jsonl_dataset_without_a_card(hub):
    """Columns come from the first row; a percentage cannot be counted without reading every file."""
    rows = [{"tokens": ids, "n": i} for i, ids in enumerate(TOKENS)]
    hub.add_files("alice/jsonl", {"train.jsonl": "\n".join(map(json.dumps, rows)).encode()}, repo_type="dataset")
    assert _read("alice/jsonl") == TOKENS  # no 'text' column: the tokens column
    assert _read("alice/jsonl", split="train[1:]") == TOKENS[1:]
    with pytest.raises(CorpusError, match=r"has no column 'body'; columns: tokens, n$"):
        open_corpus("alice/jsonl", text_column="body")
    with pytest.raises(CorpusError, match=r"needs the split's number of rows.*give row numbers, e.g. train\[:100000\]"):
        open_corpus("alice/jsonl", split="train[:50%]")


def test_a_seeded_shuffle_is_a_reproducible_permutation(hub):
    hub.add_files(REPO, _dataset_files(), repo_type="dataset")
    a = _read(REPO, shuffle_seed=22, shuffle_buffer=5)
    assert a == _read(REPO, shuffle_seed=22, shuffle_buffer=5)
    assert sorted(a) == sorted(TRAIN) and a != TRAIN
    assert a != _read(REPO, shuffle_seed=23, shuffle_buffer=5)
    # the buffer bounds how far ahead a document can come: the first one yielded is among the first five
    assert a[0] in TRAIN[:5]
    assert list(buffer_shuffled(range(100), 0, 1)) == list(range(100))  # a buffer of one changes nothing


# ------------------------------------------------------------------------------------------ bad input


def test_each_name_that_is_not_there_gets_one_line_naming_what_is(hub, tmp_path):
    hub.add_files(REPO, _dataset_files(), repo_type="dataset")
    cases = [
        (dict(name="alice/nope"), r"no local file of that name, and no dataset 'alice/nope' on the Hub at http"),
        (dict(name=REPO, config="nope"), r"has no config 'nope'; configs: plain, tok$"),
        (dict(name=REPO, split="validation"), r"\(config plain\) has no split 'validation'; splits: train, test$"),
        (dict(name=REPO, text_column="body"), r"has no column 'body'; columns: text, id$"),
        (dict(name=REPO, config="tok", text_column="body"), r"has no column 'body'; columns: input_ids$"),
        (dict(name=REPO, revision="v9"), r"Hub dataset 'alice/tiny-corpus' has no revision 'v9'"),
        (dict(name=REPO, split="train[a:b]"), r"is not a split name with an optional slice"),
    ]
    for kwargs, message in cases:
        with pytest.raises(CorpusError, match=message) as caught:
            open_corpus(**kwargs)  # type: ignore[arg-type]
        assert "\n" not in str(caught.value)
    with pytest.raises(ConfigError, match="not a split name"):
        RunConfig(corpus=REPO, corpus_split="train[1%").validate()
    # a local corpus takes no Hub options; a missing local file that cannot be a Hub id says so
    local = tmp_path / "c.txt"
    local.write_text("a b c\n")
    with pytest.raises(ConfigError, match="--corpus-config, --corpus-split is for a Hub dataset"):
        open_corpus(str(local), config="plain", split="test")
    with pytest.raises(CorpusError, match="corpus file not found: nope.txt \\(a Hub dataset is named ORG/NAME\\)"):
        open_corpus("nope.txt")
    asked = len(hub.requests)
    with pytest.raises(CorpusError, match="corpus file not found: data/nope.jsonl$"):
        open_corpus("data/nope.jsonl")  # the form of a Hub id, the ending of a file: not looked for on the Hub
    assert len(hub.requests) == asked


def test_a_dataset_of_several_configs_and_no_default_asks_for_one(hub):
    card = CARD.replace(b"  default: true\n", b"")
    hub.add_files(REPO, {**_dataset_files(), "README.md": card}, repo_type="dataset")
    with pytest.raises(CorpusError, match="several configs and no default: give --corpus-config, one of plain, tok"):
        open_corpus(REPO)
    assert _read(REPO, config="tok") == TOKENS


def test_the_cli_exits_2_with_the_line(hub, tmp_path, capsys):
    from autointerp.cli import main

    hub.add_files(REPO, _dataset_files(), repo_type="dataset")
    rc = main(["cache", "--out", str(tmp_path / "r"), "--corpus", REPO, "--corpus-split", "dev", "--quiet"])
    err = capsys.readouterr().err
    assert rc == 2 and "has no split 'dev'; splits: train, test" in err
    assert not (tmp_path / "r" / "cache").exists()


# ------------------------------------------------------------------------------------------ offline


def test_offline_reads_the_datasets_cache_and_nothing_else(hub, monkeypatch):
    import datasets

    sha = hub.add_files(REPO, _dataset_files(), repo_type="dataset")
    go_offline(monkeypatch)
    with pytest.raises(CorpusError, match=r"not in the local datasets cache and HF_HUB_OFFLINE") as caught:
        open_corpus(REPO)
    assert "datasets.load_dataset('alice/tiny-corpus')" in str(caught.value) and "\n" not in str(caught.value)
    assert not hub.requests

    go_offline(monkeypatch, False)
    datasets.load_dataset(REPO, "plain")  # a non-streaming load fills the datasets cache
    go_offline(monkeypatch)
    hub.requests.clear()
    corpus = open_corpus(REPO, split="train[:25%]")  # the cache records the row count
    assert corpus.name == f"{REPO}@{sha}/plain/train[:25%]" and list(corpus.documents()) == TRAIN[:3]
    assert _read(REPO, split="test") == TEST
    with pytest.raises(CorpusError, match="has no config 'tok'; the local datasets cache holds plain"):
        open_corpus(REPO, config="tok")
    assert not hub.requests


def test_hf_datasets_offline_from_the_environment_is_honoured(hub, tmp_path):
    """As a user sets it: read by datasets when it is imported, in a fresh process."""
    hub.add_files(REPO, _dataset_files(), repo_type="dataset")
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("HF_")},
        "HF_ENDPOINT": hub.url,
        "HF_HOME": str(tmp_path / "hf-home"),
        "HF_DATASETS_OFFLINE": "1",
        "PYTHONPATH": os.pathsep.join([str(Path(__file__).parents[2]), os.environ.get("PYTHONPATH", "")]),
    }
    code = f"from autointerp.corpus_choice import open_corpus; open_corpus({REPO!r})"
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode != 0 and "CorpusError" in done.stderr
    assert "not in the local datasets cache and HF_HUB_OFFLINE (or HF_DATASETS_OFFLINE) is set" in done.stderr
    assert not hub.requests


# ------------------------------------------------------------------------------------------ into the cache


def test_pre_tokenized_local_files_and_mixed_documents_make_rows(tmp_path):
    pd.DataFrame({"input_ids": TOKENS}).to_parquet(tmp_path / "t.parquet")
    (tmp_path / "t.jsonl").write_text("\n".join(json.dumps({"tokens": ids}) for ids in TOKENS))
    assert list(iter_documents(tmp_path / "t.parquet")) == TOKENS == list(iter_documents(tmp_path / "t.jsonl"))
    (tmp_path / "bad.jsonl").write_text(json.dumps({"text": 3}))
    with pytest.raises(CorpusError, match=r"bad\.jsonl:1: the 'text' field: 3 is neither text nor a list of token"):
        list(iter_documents(tmp_path / "bad.jsonl"))

    def encode(texts: list[str]) -> list[list[int]]:
        return [[len(word) for word in text.split()] for text in texts]

    rows = iter_rows(iter(["aa bbb", [7, 8, 9], "c"]), encode, ctx_len=3, separator=0, vocab_size=10)
    assert np.concatenate(list(rows)).tolist() == [2, 3, 0, 7, 8, 9, 0, 1, 0]
    with pytest.raises(CorpusError, match="token id 12, but the tokenizer has 10 tokens"):
        list(iter_rows(iter([[1, 12]]), encode, ctx_len=2, separator=0, vocab_size=10))


def _model_folder(folder: Path) -> Path:
    """A tiny Llama with a word-level tokenizer over WORDS (id = 2 + the word's number)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    make_tiny_llama().save_pretrained(folder)
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(["<unk>", "</s>", *WORDS])}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", eos_token="</s>").save_pretrained(folder)
    return folder


def test_a_run_from_python_caches_a_hub_corpus_and_records_its_commit(hub, tmp_path):
    import autointerp
    from autointerp.cache.store import read_metas

    sha = hub.add_files(REPO, _dataset_files(), repo_type="dataset")
    sae = write_sparsify_sae(tmp_path / "sae" / "layers.1")
    model = str(_model_folder(tmp_path / "model"))
    common = dict(model=model, dictionary=str(sae.parent), hookpoint="layers.1", dtype="float32")
    run = autointerp.Run(
        tmp_path / "run",
        corpus=REPO,
        corpus_split="train[:6]",  # six documents of 51 tokens with the separator: one row of 256
        n_tokens=10_000,
        **common,
    )
    resolved = run.cache()
    assert resolved["corpus"] == f"{REPO}@{sha}/plain/train[:6]" and resolved["n_tokens"] == 256
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["resolved"]["corpus"] == resolved["corpus"]
    assert config["config"]["corpus_split"] == "train[:6]" and config["config"]["corpus_revision"] is None
    (meta,) = read_metas(tmp_path / "run" / "cache").values()
    assert meta.corpus == resolved["corpus"] and meta.n_rows == 1
    assert "plain/train-00001-of-00002.parquet" not in hub.downloads()  # the six rows are all in the first

    # a long split: caching stops pulling documents once it has --n-tokens, and the second file is never read
    long_docs = [" ".join(WORDS[(d * 7 + j) % 90] for j in range(50)) for d in range(160)]
    files = {
        f"data/train-0000{i}-of-00002.parquet": _parquet(pd.DataFrame({"text": long_docs[i * 80 : (i + 1) * 80]}))
        for i in range(2)
    }
    hub.add_files("alice/long-corpus", files, repo_type="dataset")
    hub.requests.clear()
    resolved = autointerp.Run(tmp_path / "long", corpus="alice/long-corpus", n_tokens=512, **common).cache()
    assert resolved["n_tokens"] == 512
    assert "data/train-00000-of-00002.parquet" in hub.downloads()
    assert "data/train-00001-of-00002.parquet" not in hub.downloads()
