"""Command line: `autointerp cache | explain | score | run | report`, all over one run folder;
`publish` uploads one; `serve` serves a folder of them over HTTP.

The CLI only parses options into a `RunConfig` and calls the stages; every default lives in the
config dataclasses, so `--help`, config.json and the library agree.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

from autointerp.config import (
    DEFAULT_JUDGE,
    DEFAULT_JUDGE_TIMEOUT_S,
    DEFAULT_MAX_LATENTS,
    DEFAULT_N_TOKENS,
    ConfigError,
    RunConfig,
    load_config,
    merge,
    save_config,
    set_field,
    with_folder,
)
from autointerp.controls import CONTROL_KINDS
from autointerp.explainers import TOKENS_EXPLAINER
from autointerp.explanation_sources import FORMATS
from autointerp.llm.accounting import PriceTable, describe
from autointerp.results import RunFiles, materialize, usage_by_model
from autointerp.serve import command as serve_command

EPILOG = """\
examples:
  autointerp run --out runs/demo                       # embedded default: SmolLM2 + shipped SAE + local judge
  autointerp run --out runs/quick --judge smollm2 --max-latents 3 --n-tokens 20000
  autointerp run --out runs/mine --model ./my-hf-model --dictionary ./sae-run --hookpoint layers.6
  autointerp run --out runs/hub --model EleutherAI/pythia-160m --dictionary EleutherAI/sae-pythia-160m-32k \\
      --hookpoint layers.6                             # model and dictionary from the Hub
  autointerp run --out runs/neurons --dictionary neurons --hookpoint layers.10
  autointerp cache --out runs/x && autointerp explain --out runs/x && autointerp score --out runs/x
  autointerp publish runs/demo --repo alice/smollm2-sae-labels    # results as a Hub dataset
  autointerp report runs/demo                                     # static HTML site in runs/demo/report/

A run folder holds config.json, cache/, explanations.jsonl, scores.jsonl, results.parquet and
judgments.parquet. Running a command again on the same folder resumes: finished latents are kept,
unfinished ones are done. Options that define the cache or the train/test split cannot change
within a folder, and are the only ones it remembers: any other option left out takes its default.

exit status: 0 done; 1 done, but some latents failed (the summary says where the reasons are);
2 nothing done: bad options or input, or a judge that cannot be reached.
"""

# option dest -> dotted RunConfig field
OPTION_FIELDS = {
    "model": "model",
    "model_revision": "model_revision",
    "dictionary": "dictionary",
    "dictionary_revision": "dictionary_revision",
    "hookpoint": "hookpoint",
    "corpus": "corpus",
    "text_column": "text_column",
    "n_tokens": "n_tokens",
    "neurons_k": "neurons_k",
    "dtype": "dtype",
    "device": "device",
    "batch_rows": "cache.batch_rows",
    "ctx_len": "cache.ctx_len",
    "window_len": "cache.window_len",
    "seed": "cache.seed",
    "n_train": "sampling.n_train",
    "n_test": "sampling.n_test",
    "n_negatives": "sampling.n_negatives",
    "min_examples": "sampling.min_examples",
    "train_type": "sampling.train_type",
    "latents": "latents",
    "max_latents": "max_latents",
    "judge": "judge",
    "explainer": "explainer",
    "scorers": "scorers",
    "controls": "controls",
    "judge_mode": "classifier.mode",
    "batch_size": "classifier.batch_size",
    "fuzz_negatives": "fuzz_negatives",
    "show_activations": "explain.show_activations",
    "best_of": "explain.best_of",
    "best_of_scorer": "explain.best_of_scorer",
    "token_counts": "explain.token_counts",
    "concurrency": "concurrency",
    "judge_concurrency": "judge_concurrency",
    "judge_url": "judge_url",
    "judge_timeout": "judge_timeout",
    "api_key_env": "api_key_env",
    "no_logprobs": "no_logprobs",
    "no_cache": "response_cache",
    "response_cache_path": "response_cache_path",
    "prices": "prices",
    "kl_target": "intervention.kl_target",
    "intervention_prompts": "intervention.n_prompts",
    "negatives": "sampling.negatives",
    "n_train_negatives": "sampling.n_train_negatives",
    "similar_model": "sampling.similar_model",
    "embedding_model": "embedding_model",
    "explainer_style": "explain.style",
    "prompt_logprobs": "prompt_logprobs",
}
# the sampling seed follows the cache seed, so one --seed fixes every draw
LINKED = {"cache.seed": "sampling.seed"}


def _int_list(text: str) -> list[int]:
    try:
        return [int(x) for x in text.replace(" ", "").split(",") if x]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected latent indices like 3,17,42, got {text!r}") from None


def _max_latents(text: str) -> int | None:
    if text.lower() == "all":
        return None
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number or 'all', got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError("--max-latents must be at least 1 (or 'all')")
    return value


def _str_list(text: str) -> list[str]:
    return [x for x in text.replace(" ", "").split(",") if x]


PUBLISH_EPILOG = """\
examples:
  autointerp publish runs/demo --repo alice/smollm2-sae-labels --dry-run     # writes runs/demo/hub, uploads nothing
  autointerp publish runs/demo --repo alice/smollm2-sae-labels --private --with-judgments
  HF_TOKEN=hf_... autointerp publish runs/demo --repo my-org/labels --license cc-by-4.0

The dataset repo gets data/results.parquet (one row per latent), with --with-judgments also
judgments/judgments.parquet (one row per judged example, a second config), and a README.md card:
model, dictionary, hookpoints, corpus, judges, prompts hash, settings and a score summary, with the
`configs:` header that makes `datasets.load_dataset("OWNER/NAME")` work. Never uploaded: cache/,
the JSONL logs, config.json. --dry-run writes the exact folder a real upload sends.

The token comes from $HF_TOKEN or from `hf auth login`; it is never printed. HF_ENDPOINT picks another
Hub server.
"""


def _add_publish_parser(sub: Any) -> None:
    text = "upload a run's results to the Hugging Face Hub as a dataset, with a generated card"
    p = sub.add_parser(
        "publish",
        help=text,
        description=text,
        epilog=PUBLISH_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("run", type=Path, help="run folder (what `autointerp run --out` wrote)")
    p.add_argument("--repo", required=True, help="dataset repo id OWNER/NAME; created if missing")
    p.add_argument("--private", action="store_true", help="create the repo private (refused if it exists public)")
    p.add_argument(
        "--with-judgments",
        action="store_true",
        help="also upload judgments.parquet (every judge answer) as the config 'judgments'",
    )
    p.add_argument("--license", help="license id for the card, e.g. mit, apache-2.0, cc-by-4.0 (default: none)")
    p.add_argument("--dry-run", action="store_true", help="only write the folder that would be uploaded")
    p.add_argument(
        "--staging-dir",
        type=Path,
        help="where to write that folder (default with --dry-run: RUN/hub; otherwise a temporary "
        "folder, removed after the upload)",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def publish_command(args: argparse.Namespace) -> int:
    from autointerp.hub import PublishError, PublishOptions, publish

    options = PublishOptions(
        repo_id=args.repo, private=args.private, with_judgments=args.with_judgments, license=args.license
    )
    try:
        kept, done = publish(args.run, options, dry_run=args.dry_run, staging=args.staging_dir, progress=not args.quiet)
    except PublishError as e:
        if os.environ.get("AUTOINTERP_DEBUG"):
            raise
        print(f"autointerp: error: {e}", file=sys.stderr)
        return 2
    if done is None:
        files = sorted(p.relative_to(kept).as_posix() for p in kept.rglob("*") if p.is_file())
        print(f"dry run: nothing uploaded; {kept} holds what would go to {args.repo}: {', '.join(files)}")
        return 0
    repo_kind = ("new" if done.created else "existing") + (" private" if args.private else "")
    print(f"published {', '.join(done.files)} to {done.url} ({repo_kind} repo)")
    print(f'load it with: datasets.load_dataset("{args.repo}")')
    if kept is not None:
        print(f"uploaded folder kept in {kept}")
    return 0


def _scorers_help() -> str:
    from autointerp.scorers.registry import scorer_classes

    return ", ".join(f"{name} ({cls.summary})" if cls.summary else name for name, cls in scorer_classes().items())


def _scorers_in_brief() -> str:
    from autointerp.scorers.registry import scorer_classes

    classes = scorer_classes()
    judged = [name for name, cls in classes.items() if cls.needs_judge]
    other = [name for name, cls in classes.items() if not cls.needs_judge]
    return ", ".join(judged) + " with the judge" + (f"; {', '.join(other)} without" if other else "")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="autointerp",
        description="Explain and score the latents of sparse autoencoders with LLM judges.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    helps = {
        "run": "cache, explain and score in one go (resumable)",
        "cache": "stream the corpus through model + dictionary and cache latent activations",
        "explain": "label each selected latent with the explainer model",
        "score": "score existing explanations (" + _scorers_in_brief() + ")",
    }
    for name, text in helps.items():
        p = sub.add_parser(
            name,
            help=text,
            description=text,
            epilog=EPILOG,
            formatter_class=argparse.RawDescriptionHelpFormatter,
            argument_default=argparse.SUPPRESS,
        )
        p.add_argument("--out", required=True, type=Path, help="run folder (created; reused to resume)")
        p.add_argument("--quiet", action="store_true", help="no progress bars")
        if name in ("run", "cache"):
            g = p.add_argument_group("what to cache (fixed for a run folder)")
            g.add_argument(
                "--model",
                help="subject model: 'smollm2' (embedded SmolLM2-135M, default), a local Hugging Face model "
                "folder, or a Hub repo ORG/NAME (safetensors weights; HF_HUB_OFFLINE=1: the local Hub cache only)",
            )
            g.add_argument("--model-revision", help="branch, tag or commit of a Hub --model (default: main)")
            g.add_argument(
                "--dictionary",
                help="'default' (shipped TopK SAE on layers.3), 'neurons' (MLP neurons), a sparsify / "
                "SAELens / Gemma Scope (params.npz) folder, a Hub repo ORG/NAME[/FOLDER] (only the files of "
                "--hookpoint are fetched), or saelens:RELEASE/SAE_ID from sae-lens's directory",
            )
            g.add_argument("--dictionary-revision", help="branch, tag or commit of a Hub --dictionary (default: main)")
            g.add_argument(
                "--hookpoint",
                help="where the dictionary reads: layers.N, layers.N.mlp, or a "
                "TransformerLens name like blocks.N.hook_resid_post",
            )
            g.add_argument(
                "--corpus",
                help="text file (one document per line), .jsonl or .parquet with a text "
                "column; default: gensim's lee_background.cor (299 news articles)",
            )
            g.add_argument("--text-column", help="column holding the text in .jsonl/.parquet corpora (default: text)")
            g.add_argument("--n-tokens", type=int, help=f"tokens to cache at most (default: {DEFAULT_N_TOKENS:,})")
            g.add_argument(
                "--neurons-k",
                type=int,
                help="with --dictionary neurons: strongest neurons kept per token (default: 32)",
            )
            g.add_argument(
                "--dtype", choices=["bfloat16", "float16", "float32"], help="subject model dtype (default: bfloat16)"
            )
            g.add_argument("--device", help="torch device for the subject model (default: cpu)")
            g.add_argument("--batch-rows", type=int, help="rows of 256 tokens per forward pass (default: 8)")
            g.add_argument("--seed", type=int, help="seed for every random draw (default: 0)")
        if name in ("run", "explain", "score"):
            g = p.add_argument_group("which latents")
            g.add_argument("--latents", type=_int_list, help="comma-separated latent indices, e.g. 3,17,42")
            g.add_argument(
                "--max-latents",
                type=_max_latents,
                help=f"how many latents (the first ones that fire often enough); 'all' for every "
                f"latent (default: {DEFAULT_MAX_LATENTS})",
            )
            g = p.add_argument_group("examples (fixed for a run folder)")
            g.add_argument("--n-train", type=int, help="activating examples shown to the explainer (default: 40)")
            g.add_argument("--n-test", type=int, help="held-out activating examples per scorer (default: 50)")
            g.add_argument("--n-negatives", type=int, help="held-out non-activating examples (default: 50)")
            g.add_argument(
                "--min-examples", type=int, help="skip latents active in fewer windows than this (default: 20)"
            )
            g.add_argument(
                "--train-type",
                choices=["quantiles", "top"],
                help="explainer examples spread over activation quantiles, or the strongest (default: quantiles)",
            )
            g.add_argument(
                "--negatives",
                choices=["random", "similar", "cooccurring"],
                help="non-activating examples: random silent windows (default); 'similar': silent "
                "windows closest by sentence embedding to the activating ones; 'cooccurring': top "
                "windows of the latents that fire with this one, where it is silent",
            )
            g.add_argument(
                "--n-train-negatives",
                type=int,
                help="non-activating examples shown to the contrastive explainer (default: 20)",
            )
            g.add_argument(
                "--similar-model",
                help="embedding model that ranks --negatives similar: 'default' (bundled "
                "all-MiniLM-L6-v2), a sentence-transformers folder, or a cached model id",
            )
            g = p.add_argument_group("judges")
            g.add_argument(
                "--judge",
                help=f"scorer judge: 'qwen2.5-coder-1.5b' (default, local), 'smollm2' (small, "
                f"fast, for quick runs), a .gguf file, 'openai:MODEL' for any "
                f"OpenAI-compatible server, or 'vllm:MODEL' (HF folder or name, "
                f"'vllm:smollm2') in process by vLLM (default: {DEFAULT_JUDGE})",
            )
            g.add_argument(
                "--explainer",
                help="explainer model, same choices as --judge (default: the judge); 'tokens': no LLM, the "
                "label names the tokens most often marked in the training examples",
            )
            g.add_argument(
                "--judge-url",
                help="base URL of the OpenAI-compatible server for openai:MODEL judges, "
                "e.g. http://127.0.0.1:8000/v1 (default: api.openai.com)",
            )
            g.add_argument(
                "--judge-timeout",
                type=float,
                metavar="SECONDS",
                help="seconds an HTTP judge may take to answer one request before it is retried (after "
                f"waiting as long again, since the server may still be busy with it) (default: "
                f"{DEFAULT_JUDGE_TIMEOUT_S:g}, for a busy local server)",
            )
            g.add_argument(
                "--api-key-env",
                help="name of the environment variable holding the API key "
                "(default: OPENAI_API_KEY); the key itself is never written",
            )
            g.add_argument(
                "--no-logprobs",
                action="store_true",
                help="the server gives no logprobs: judges answer in text (no AUROC)",
            )
            g.add_argument(
                "--prompt-logprobs",
                action="store_true",
                help="the server echoes prompt logprobs (/completions with echo=True, e.g. vLLM): "
                "needed by surprisal, used by simulation (local judges always have them)",
            )
            g.add_argument(
                "--no-cache",
                action="store_false",
                dest="no_cache",
                help="do not answer repeated requests from the response cache",
            )
            g.add_argument(
                "--prices",
                help="price table for a cost estimate: JSON or TOML, "
                '{"MODEL": {"prompt": USD per 1M tokens, "completion": ...}}',
            )
            g.add_argument(
                "--response-cache",
                dest="response_cache_path",
                help="SQLite file of the response cache (default: ~/.cache/autointerp/responses.sqlite)",
            )
            g.add_argument(
                "--concurrency",
                type=int,
                help="latents in flight at once (default: 1; a local judge answers one prompt at a time anyway)",
            )
            g.add_argument(
                "--judge-concurrency",
                type=int,
                help="judge requests in flight (default: 1 for llama.cpp, 8 over HTTP, 128 for vLLM); "
                "when more wait, one latent's prompts go first, so a server's prefix cache is hit",
            )
        if name in ("run", "explain"):
            p.add_argument(
                "--show-activations",
                action="store_true",
                help="also show the explainer 0-10 activation values of marked tokens",
            )
            p.add_argument(
                "--token-counts",
                action="store_true",
                help="also list the most frequent marked tokens with their counts for the explainer",
            )
            p.add_argument(
                "--best-of",
                type=int,
                help="sample N labels and keep the one --best-of-scorer rates best on a validation "
                "split that the final scores never see (default: 1; costs N explainer calls and "
                "N x 40 judge calls more per latent)",
            )
            p.add_argument("--best-of-scorer", help="scorer that picks among best-of-n labels (default: detection)")
            p.add_argument(
                "--explainer-style",
                choices=["default", "contrastive"],
                help="default: show activating examples; contrastive: also show non-activating ones "
                "(hard with --negatives similar) and ask what sets them apart",
            )
        if name in ("run", "score"):
            g = p.add_argument_group("scoring")
            g.add_argument(
                "--scorers",
                type=_str_list,
                help="comma-separated, from " + _scorers_help() + f" (default: {','.join(RunConfig().scorers)})",
            )
            g.add_argument(
                "--controls",
                choices=list(CONTROL_KINDS),
                help="shuffled: also score each latent's held-out examples with another latent's label "
                "(a seeded derangement), the chance level beside each score, <scorer>_control_* columns; "
                "none: skip it (default: shuffled; doubles the scoring cost)",
            )
            g.add_argument(
                "--embedding-model",
                help="embedding scorer's model: 'default' (bundled all-MiniLM-L6-v2), a "
                "sentence-transformers folder, or a model id already in the Hugging Face cache",
            )
            g.add_argument(
                "--judge-mode",
                choices=["auto", "logprobs", "text", "json"],
                help="logprobs: one example per call, P(Yes) from logprobs (default when the judge "
                "gives them; gives AUROC); text: one per call, Yes/No read from the answer; "
                "json: --batch-size examples per call answered as a JSON list",
            )
            g.add_argument("--batch-size", type=int, help="examples per prompt in json mode (default: 5)")
            g.add_argument(
                "--fuzz-negatives",
                choices=["silent", "misplaced"],
                help="fuzzing's wrong marks: on random tokens of silent excerpts (default) or on "
                "silent tokens of activating excerpts",
            )
            g.add_argument(
                "--kl-target",
                type=float,
                help="intervention: steering strength is tuned so the mean next-token KL(clean||steered) "
                "is this (default: 0.5)",
            )
            g.add_argument(
                "--intervention-prompts",
                type=int,
                help="intervention: held-out prompts continued per latent (default: 8)",
            )
        if name == "score":
            g = p.add_argument_group("existing explanations (score labels made elsewhere)")
            g.add_argument(
                "--explanations",
                type=Path,
                metavar="PATH",
                help="import these explanations into the run and score only their latents (--latents "
                "narrows the import): one of our "
                "run folders (or its explanations.jsonl / results.parquet), a delphi output folder, "
                "an EleutherAI auto_interp_explanations .json, a Neuronpedia export (explanations/"
                "batch-N.jsonl.gz) or SAEBench *_eval_results.json; entries left out are listed in "
                "import_report.json",
            )
            g.add_argument(
                "--explanations-format",
                choices=["auto", *FORMATS],
                help="the file's format (default: auto, from the folder layout, suffix and JSON shape)",
            )
            g.add_argument(
                "--explanations-layer",
                metavar="NAME",
                help="take the file's entries of this layer, named as the file names it (default: "
                "those whose layer name means the run's hookpoint, e.g. layers.10 = 10-...-res-...)",
            )
    _add_publish_parser(sub)
    _add_report_parser(sub)
    serve_command.add_parser(sub)
    return parser


def _add_report_parser(sub: Any) -> None:
    p = sub.add_parser(
        "report",
        help="write a static HTML report of a run folder",
        description="Write a static HTML site (index + one page per latent) for a run folder; "
        "it opens from file:// with no network.",
    )
    p.add_argument("run", type=Path, help="run folder holding results.parquet")
    p.add_argument("--site", type=Path, help="folder to write the site into (default: RUN/report)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def report_command(args: argparse.Namespace) -> int:
    """`autointerp report RUN`: prints the path of the index page it wrote."""
    from autointerp.report import ReportError, build_report

    try:
        index = build_report(args.run, args.site, progress=not args.quiet)
    except (ReportError, ConfigError, OSError) as e:
        if os.environ.get("AUTOINTERP_DEBUG"):
            raise
        print(f"autointerp: error: {e}", file=sys.stderr)
        return 2
    print(index)
    return 0


def config_from_args(args: argparse.Namespace) -> tuple[RunConfig, set[str]]:
    requested = RunConfig()
    explicit: set[str] = set()
    for dest, dotted in OPTION_FIELDS.items():
        if hasattr(args, dest):
            value = getattr(args, dest)
            set_field(requested, dotted, value)
            explicit.add(dotted)
            if dotted in LINKED:
                set_field(requested, LINKED[dotted], value)
                explicit.add(LINKED[dotted])
    return requested, explicit


def resolve_config(files: RunFiles, args: argparse.Namespace) -> tuple[RunConfig, dict[str, Any], RunConfig | None]:
    """The command's config (its options on the folder's cache and split), what the folder resolved
    (names, sizes), and the config stored in the folder (None for a new one)."""
    requested, explicit = config_from_args(args)
    if files.config.exists():
        stored, resolved = load_config(files.config)
        return merge(stored, requested, explicit), resolved, stored
    return requested, {}, None


def _validate(config: RunConfig) -> None:
    from autointerp.scorers.registry import find_scorer, scorer_names

    unknown = [s for s in config.scorers if find_scorer(s) is None]
    if unknown:
        raise ConfigError(f"unknown scorer(s) {unknown}; available: {scorer_names()}")
    if config.explain.style == "contrastive" and config.sampling.n_train_negatives < 1:
        raise ConfigError(
            "--explainer-style contrastive shows non-activating examples: --n-train-negatives must be at least 1"
        )
    if config.controls not in CONTROL_KINDS:
        raise ConfigError(f"unknown --controls {config.controls!r}; valid: {', '.join(CONTROL_KINDS)}")
    if config.explainer_model == TOKENS_EXPLAINER and (config.explain.best_of > 1 or config.explain.style != "default"):
        raise ConfigError(
            "--explainer tokens makes one label from the marked tokens, with no LLM: it takes no --best-of "
            "and no --explainer-style contrastive"
        )
    if config.cache.ctx_len % config.cache.window_len:
        raise ConfigError("the context length must be a multiple of the window length")
    chooser = find_scorer(config.explain.best_of_scorer)
    if chooser is None:
        raise ConfigError(f"unknown --best-of-scorer {config.explain.best_of_scorer!r}; available: {scorer_names()}")
    if config.explain.best_of < 1:
        raise ConfigError("--best-of must be at least 1")
    if config.explain.best_of > 1 and not chooser.can_pick_best_of:
        able = [name for name in scorer_names() if find_scorer(name).can_pick_best_of]  # type: ignore[union-attr]
        raise ConfigError(
            f"--best-of-scorer cannot be {chooser.name}: it cannot rate labels on a validation split; use one of "
            + ", ".join(able)
        )
    for name in ("n_tokens", "neurons_k", "concurrency", "judge_concurrency"):
        if getattr(config, name) is not None and getattr(config, name) < 1:
            raise ConfigError(f"--{name.replace('_', '-')} must be at least 1")
    if not config.judge_timeout > 0:
        raise ConfigError(f"--judge-timeout must be a positive number of seconds, got {config.judge_timeout}")
    if not config.intervention.kl_target > 0:
        raise ConfigError(f"--kl-target must be positive, got {config.intervention.kl_target}")
    if config.intervention.n_prompts < 1:
        raise ConfigError("--intervention-prompts must be at least 1")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "publish":
        return publish_command(args)
    if args.command == "report":
        return report_command(args)
    if args.command == "serve":
        return serve_command.run(args)
    from autointerp import app

    try:
        files = RunFiles(args.out)
        files.prepare()
        config, resolved, stored = resolve_config(files, args)
        _validate(config)
        if (hasattr(args, "explanations_format") or hasattr(args, "explanations_layer")) and not hasattr(
            args, "explanations"
        ):
            raise ConfigError("--explanations-format and --explanations-layer go with --explanations FILE")
        progress = not getattr(args, "quiet", False)
        if args.command in ("run", "cache"):
            resolved = app.cache_stage(files, config, progress=progress, resolved=resolved)
            note = " (the corpus ended first)" if resolved["n_tokens"] + config.cache.ctx_len <= config.n_tokens else ""
            print(
                f"cache: {resolved['n_tokens']:,} tokens{note}, {resolved['num_latents']:,} latents at "
                f"{resolved['hookpoint']} in {files.cache}"
            )
            # the cache settles what defines the folder; the command's other options are recorded once
            # they too have been checked (judges reached, explanations read), below
            save_config(files.config, with_folder(stored or RunConfig(), config), resolved)
        elif not files.config.exists():
            raise ConfigError(
                f"{files.folder} has no run yet: start with `autointerp cache --out {files.folder}` or `autointerp run`"
            )
        if args.command == "cache":
            return 0
        stages = {"run": {"explain", "score"}, "explain": {"explain"}, "score": {"score"}}[args.command]

        def ready() -> RunConfig:
            """Judges are reached: read the explanations to import, then record the command's options."""
            selected = _import_explanations(files, config, args, progress) if hasattr(args, "explanations") else config
            save_config(files.config, config, resolved)
            return selected

        summary = asyncio.run(app.latent_stages(files, config, stages, progress=progress, ready=ready))
        table = materialize(files, provenance(resolved), config.scorers)
        print_summary(summary, table, config, files)
        prices = PriceTable.load(config.prices) if config.prices else None
        for model, usage in usage_by_model(files).items():
            print(f"  tokens in this folder, {describe(usage, model, prices)}")
        if summary.failed:
            print(
                f"autointerp: {summary.failed} of {summary.latents} latents failed; the reasons are in the "
                f"status and error columns of {files.results} (in full in {files.explanations.name} and "
                f"{files.scores.name}); running the command again retries those that ended in an error",
                file=sys.stderr,
            )
            return 1
        return 0
    except app.USER_ERRORS as e:
        if os.environ.get("AUTOINTERP_DEBUG"):
            raise
        print(f"autointerp: error: {e}", file=sys.stderr)
        print("(set AUTOINTERP_DEBUG=1 for the traceback)", file=sys.stderr)
        return 2


def _import_explanations(files: RunFiles, config: RunConfig, args: argparse.Namespace, progress: bool) -> RunConfig:
    """Write the file's explanations into the run; the config to score with selects just their latents
    (`--latents`, when given, restricts the import; the run's stored config is not changed)."""
    from autointerp.importing import import_explanations

    outcome = import_explanations(
        files,
        config,
        args.explanations,
        fmt=getattr(args, "explanations_format", "auto"),
        layer=getattr(args, "explanations_layer", None),
        latents=getattr(args, "latents", None),
        progress=progress,
    )
    print(outcome.summary())
    sys.stdout.flush()
    return replace(config, latents=outcome.latents, max_latents=None)


def provenance(resolved: dict[str, Any]) -> dict[str, Any]:
    return {k: resolved.get(k) for k in ("model", "dictionary", "hookpoint")}


def print_summary(summary, table, config: RunConfig, files: RunFiles) -> None:
    controlled = f"{summary.controlled} controlled, " if summary.controlled else ""
    lines = [
        f"{summary.latents} latents in {summary.seconds:.0f}s: {summary.explained} explained, "
        f"{summary.scored} scored, {controlled}{summary.skipped} skipped, {summary.failed} failed"
    ]
    ok = table[table["status"] == "ok"] if len(table) else table
    from autointerp.scorers.registry import find_scorer, scorer_metrics

    for scorer in config.scorers:
        headline = [m for m in scorer_metrics(scorer)[:2] if f"{scorer}_{m}" in ok]
        if len(ok) and headline:
            parts = []
            for m in headline:
                values = ok[f"{scorer}_{m}"].dropna()
                if len(values):
                    control = ok[f"{scorer}_control_{m}"].dropna() if f"{scorer}_control_{m}" in ok else ()
                    beside = f" (control {control.mean():.3f})" if len(control) else ""
                    parts.append(f"{m} {values.mean():.3f}{beside}")
            failed = int(ok[f"{scorer}_n_failed"].fillna(0).sum())
            total = int(ok[f"{scorer}_n"].fillna(0).sum())
            cls = find_scorer(scorer)
            asks = cls is None or cls.needs_judge  # embedding asks no judge
            note = f"{failed}/{total} judge answers unusable" if asks else f"{total} examples, no judge"
            if parts:  # an explain-only folder has the columns, but no score yet
                lines.append(f"  {scorer}: mean " + ", ".join(parts) + f" ({note})")
    for msg in summary.messages:
        lines.append("  " + msg)
    lines.append(f"results: {files.results}")
    print("\n".join(lines))
    sys.stdout.flush()


if __name__ == "__main__":
    raise SystemExit(main())
