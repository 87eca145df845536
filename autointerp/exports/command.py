"""`autointerp export RUN --format F OUT`: the command line of the exports (argparse only)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from autointerp.exports import FORMATS, ExportError

EPILOG = """\
examples:
  autointerp export runs/demo --format neuronpedia runs/demo/neuronpedia --model-id gemma-2-2b
  autointerp export runs/demo --format saebench runs/demo/saebench

neuronpedia writes OUT/upload-batch/batch-N.json (bodies of Neuronpedia's POST /api/feature/upload-batch,
at most 128 features each) and OUT/explanations/batch-N.jsonl.gz (Explanation rows for its bulk import);
saebench writes one <model>_<hookpoint>_eval_results.json per hookpoint.
"""


def add_parser(sub: Any) -> None:
    text = "write a run's explanations (and activations) in Neuronpedia's or SAEBench's format"
    p = sub.add_parser(
        "export", help=text, description=text, epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("run", type=Path, help="run folder")
    p.add_argument("out", type=Path, help="folder to write into (created)")
    p.add_argument("--format", required=True, choices=FORMATS, help="what to write")
    g = p.add_argument_group("neuronpedia")
    g.add_argument("--model-id", help="Neuronpedia's model id (default: the subject model's name, lowercased)")
    g.add_argument(
        "--source-set",
        default="autointerp",
        help="source set name; a hookpoint's source is <layer>-<site>-<set> (default: autointerp)",
    )
    g.add_argument(
        "--source",
        action="append",
        default=[],
        metavar="HOOKPOINT=SOURCE",
        help="the Neuronpedia source of one hookpoint, overriding the default (repeatable)",
    )
    g.add_argument("--method-name", help="an explanation type the Neuronpedia instance knows (default: none given)")
    g.add_argument("--author-id", default="autointerp", help="authorId of the explanation rows (a user id there)")


def run(args: argparse.Namespace) -> int:
    if args.format == "saebench":
        from autointerp.exports.saebench import export_saebench

        print(export_saebench(args.run, args.out).describe())
        return 0
    from autointerp.exports.neuronpedia import NeuronpediaOptions, export_neuronpedia

    sources = {}
    for item in args.source:
        hookpoint, sep, source = item.partition("=")
        if not sep or not hookpoint or not source:
            raise ExportError(f"--source takes HOOKPOINT=SOURCE, got {item!r}")
        sources[hookpoint] = source
    options = NeuronpediaOptions(
        model_id=args.model_id,
        source_set=args.source_set,
        sources=sources,
        method_name=args.method_name,
        author_id=args.author_id,
    )
    print(export_neuronpedia(args.run, args.out, options).describe())
    return 0
