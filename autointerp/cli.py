"""Command line: `autointerp cache | explain | score | run` over one run folder; `report` writes its HTML
report, `publish` uploads it, and `serve` serves a folder of them over HTTP.

This module only turns arguments into calls of the Python API (`autointerp.Run`, api.py) and prints
what they return: the options of the stage commands, their help and the defaults shown are generated
from the settings' declarations (config.py, settings.py), so `--help`, config.json and the library
cannot disagree, and anything the command line does a notebook can do too.

Errors the user can act on (`AutointerpError`) are caught once, in `main`: the message, exit status 2.
Any other exception is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

from autointerp import option_args
from autointerp.config import RunConfig
from autointerp.errors import AutointerpError
from autointerp.exports import command as export_command
from autointerp.option_table import OptionField, config_from_options, options
from autointerp.serve import command as serve_command
from autointerp.settings import GROUPS, STAGE_COMMANDS

EPILOG = """\
examples:
  autointerp run --out runs/demo                       # embedded default: SmolLM2 + shipped SAE + local judge
  autointerp run --out runs/quick --judge smollm2 --max-latents 3 --n-tokens 20000
  autointerp run --out runs/mine --model ./my-hf-model --dictionary ./sae-run --hookpoint layers.6
  autointerp run --out runs/hub --model EleutherAI/pythia-160m --dictionary EleutherAI/sae-pythia-160m-32k \\
      --hookpoint layers.6                             # model and dictionary from the Hub
  autointerp run --out runs/all --model ./my-hf-model --dictionary ./sae-run --hookpoints all \\
      --sample-latents 100                             # every hookpoint in one pass, 100 latents of each
  autointerp run --out runs/neurons --dictionary neurons --hookpoint layers.10
  autointerp cache --out runs/x && autointerp explain --out runs/x && autointerp score --out runs/x
  autointerp publish runs/demo --repo alice/smollm2-sae-labels    # results as a Hub dataset
  autointerp report runs/demo                                     # static HTML site in runs/demo/report/

A run folder holds config.json, cache/, explanations.jsonl, scores.jsonl, results.parquet and
judgments.parquet. Running a command again on the same folder resumes: finished latents are kept,
unfinished ones are done. One command writes a folder at a time: a second one exits 2 naming the
first (pid, host, command), or with --wait starts when it ends. Options that define the cache or the
train/test split cannot change within a folder, and are the only ones it remembers (give them to
cache or run): any other option left out takes its default.

exit status: 0 done; 1 done, but some latents failed (the summary says where the reasons are);
2 nothing done: bad options or input, or a judge that cannot be reached.
"""


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


STAGE_HELP = {
    "run": "cache, explain and score in one go (resumable)",
    "cache": "stream the corpus through model + dictionary and cache latent activations",
    "explain": "label each selected latent with the explainer model",
    "score": "score existing explanations ({scorers})",
}
FIXED = " (fixed for a run folder)"


def _scorers_in_brief() -> str:
    from autointerp.scorers.registry import scorer_classes

    classes = scorer_classes()
    judged = [name for name, cls in classes.items() if cls.needs_judge]
    other = [name for name, cls in classes.items() if not cls.needs_judge]
    return ", ".join(judged) + " with the judge" + (f"; {', '.join(other)} without" if other else "")


def shown_default(spec: OptionField) -> str | None:
    """The default `--help` shows for an option, read from its field (None: nothing to show)."""
    return option_args.shown_default(spec.default, spec.option)


def _scorers_listed() -> str:
    from autointerp.scorers.registry import scorer_classes

    return ", ".join(f"{name} ({cls.summary})" if cls.summary else name for name, cls in scorer_classes().items())


def help_text(spec: OptionField) -> str:
    text = spec.field.metadata["help"]
    if callable(text):
        text = text(spec.owner())
    if spec.dotted == "scorers":  # the config names no scorer: the registry lists them
        text = "comma-separated, from " + _scorers_listed()
    return option_args.help_line(text, spec.option, shown_default(spec))


def _argument(spec: OptionField) -> dict[str, Any]:
    """argparse keyword arguments for an option, from its field's annotation and metadata."""
    from autointerp.settings import hints

    return option_args.argument(spec.name, hints(spec.owner)[spec.field.name], spec.option, help_text(spec))


def add_setting_options(parser: argparse.ArgumentParser, command: str) -> None:
    """Every setting's option that `command` shows, in its group, in declaration order."""
    shown = [spec for spec in options().values() if command in spec.option.placement.commands]
    for key, title in GROUPS.items():
        members = [spec for spec in shown if spec.option.placement.group == key]
        if not members:
            continue
        frozen = {spec.frozen for spec in members}
        if len(frozen) > 1:
            raise TypeError(f"the {key!r} options mix settings that define the run folder with ones that do not")
        group = parser.add_argument_group(title + (FIXED if frozen == {True} else ""))
        for spec in members:
            group.add_argument(spec.flag, **_argument(spec))


def option_values(args: argparse.Namespace) -> dict[str, Any]:
    """The setting options given on the command line, by name (those left out are absent)."""
    return {name: getattr(args, name) for name in options() if hasattr(args, name)}


def config_from_args(args: argparse.Namespace) -> tuple[RunConfig, set[str]]:
    """The config the options given describe, and the (dotted) fields they set."""
    return config_from_options(option_values(args))


def build_parser() -> argparse.ArgumentParser:
    from autointerp.explanation_sources import FORMATS

    parser = argparse.ArgumentParser(
        prog="autointerp",
        description="Explain and score the latents of sparse autoencoders with LLM judges.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in STAGE_COMMANDS:
        text = STAGE_HELP[name].format(scorers=_scorers_in_brief() if name == "score" else "")
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
        p.add_argument(
            "--wait",
            action="store_true",
            help="when another command (or autointerp serve) is writing the run folder, wait for it to end "
            "instead of exiting with status 2",
        )
        add_setting_options(p, name)
        what = {
            "cache": "cache on a Ray cluster, shards of corpus rows as Ray tasks",
            "run": "cache, explain and score on a Ray cluster, shards of corpus rows and then of latents as Ray tasks",
        }.get(name, "explain and score on a Ray cluster, shards of latents as Ray tasks")
        ray_group = p.add_argument_group("on a Ray cluster")
        ray_group.add_argument(
            "--ray",
            nargs="?",
            const="local",
            metavar="ADDRESS",
            help=f"{what} (a GPU each with --device cuda): 'auto' (the cluster "
            "this machine belongs to), HOST:PORT or ray://HOST:PORT; bare --ray starts a local Ray instance. "
            "--out must be a folder every machine shares, or give --ray-storage. "
            "Needs the extra: pip install 'autointerp[ray]'",
        )
        ray_group.add_argument(
            "--ray-storage",
            metavar="URL",
            help="with --ray, for machines that share no folder: an fsspec URL (s3://BUCKET/PREFIX, "
            "gs://BUCKET/PREFIX) the driver and the workers exchange the run through (cache shards, the "
            "merged cache, the logs); --out is then the driver's own folder. Credentials and endpoint come "
            "from each machine's environment (AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID...); s3:// needs "
            "pip install s3fs, gs:// pip install gcsfs",
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
                "batch-N.jsonl.gz) or SAEBench *_eval_results.json; or a Hub repo ORG/NAME[@REV][/PATH] "
                "holding such files (only those of the run's hookpoints are downloaded, at one commit, which the "
                "import records); entries left out are listed in import_report.json",
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
    export_command.add_parser(sub)
    return parser


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
    p.add_argument(
        "--prices",
        type=Path,
        help="price table (JSON or TOML, as for `run --prices`): the card gives the judge cost per 1,000 latents",
    )
    p.add_argument("--dry-run", action="store_true", help="only write the folder that would be uploaded")
    p.add_argument(
        "--staging-dir",
        type=Path,
        help="where to write that folder (default with --dry-run: RUN/hub; otherwise a temporary "
        "folder, removed after the upload)",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bars")


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


# ---------------------------------------------------------------- the commands


def stage_command(args: argparse.Namespace) -> int:
    """`autointerp run | cache | explain | score`: exit 0 when done, 1 when some latents failed."""
    from autointerp.api import Run

    run = Run(
        args.out,
        quiet=getattr(args, "quiet", False),
        wait=getattr(args, "wait", False),
        ray=getattr(args, "ray", None),
        ray_storage=getattr(args, "ray_storage", None),
        **option_values(args),
    )
    if args.command == "cache":
        run.cache()
        return 0
    if args.command == "run":
        outcome = run.run()
    elif args.command == "explain":
        outcome = run.explain()
    else:
        outcome = run.score(
            getattr(args, "explanations", None),
            explanations_format=getattr(args, "explanations_format", None),
            explanations_layer=getattr(args, "explanations_layer", None),
        )
    print(outcome.describe())
    sys.stdout.flush()
    note = outcome.failure_note()
    if note:
        print(f"autointerp: {note}", file=sys.stderr)
        return 1
    return 0


def publish_command(args: argparse.Namespace) -> int:
    from autointerp.api import Run

    kept, done = Run(args.run, quiet=args.quiet).publish(
        args.repo,
        private=args.private,
        with_judgments=args.with_judgments,
        license=args.license,
        dry_run=args.dry_run,
        staging=args.staging_dir,
        prices=args.prices,
    )
    if done is None:
        assert kept is not None
        files = sorted(p.relative_to(kept).as_posix() for p in kept.rglob("*") if p.is_file())
        print(f"dry run: nothing uploaded; {kept} holds what would go to {args.repo}: {', '.join(files)}")
        return 0
    repo_kind = ("new" if done.created else "existing") + (" private" if args.private else "")
    print(f"published {', '.join(done.files)} to {done.url} ({repo_kind} repo)")
    print(f'load it with: datasets.load_dataset("{args.repo}")')
    if kept is not None:
        print(f"uploaded folder kept in {kept}")
    return 0


def report_command(args: argparse.Namespace) -> int:
    """`autointerp report RUN`: prints the path of the index page it wrote."""
    from autointerp.api import Run

    print(Run(args.run, quiet=args.quiet).report(args.site))
    return 0


COMMANDS = {
    "publish": publish_command,
    "report": report_command,
    "serve": serve_command.run,
    "export": export_command.run,
    **dict.fromkeys(STAGE_COMMANDS, stage_command),
}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except AutointerpError as e:
        if os.environ.get("AUTOINTERP_DEBUG"):
            raise
        print(f"autointerp: error: {e}", file=sys.stderr)
        print("(set AUTOINTERP_DEBUG=1 for the traceback)", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
