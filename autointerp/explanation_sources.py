"""Reading explanations users already have, in the formats our peers write them.

Labels made elsewhere are worth scoring here (on this run's held-out split, with this run's judge, so
they compare with our own); five sources are understood, the formats the common tools write:

- `autointerp`: one of our run folders, its `explanations.jsonl` or its `results.parquet`;
- `delphi`: an output folder with `explanations/<hookpoint>_latent<i>.txt` (each a JSON string);
- `eleuther`: EleutherAI/auto_interp_explanations, `{"<latent>": "<explanation>"}` per layer file
  (`model.layers.11_feature.json`), or a folder of them;
- `neuronpedia`: an export's `explanations/batch-N.jsonl.gz` (rows with `layer`, `index`,
  `description`, `explanationModelName`), a folder of them, or one file;
- `saebench`: an autointerp `..._eval_results.json` (`eval_result_unstructured[latent].explanation`,
  the hook name in `sae_cfg_dict`), or a folder of them.

Readers return plain `SourceEntry`s, one per explanation found, in file order, and drop nothing:
an entry that cannot be read (no integer latent index, not a string) comes back with `problem`
set so the import can report it. Matching entries to a run (layer names, latent ranges,
duplicates) is `autointerp.importing`'s job; this module only knows the formats, and how to tell
which layer a name stands for (`layer_key`).
"""

from __future__ import annotations

import gzip
import json
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from autointerp.errors import AutointerpError
from autointerp.records import ExplanationRow, RowError

FORMATS = ("autointerp", "delphi", "eleuther", "neuronpedia", "saebench")

_DELPHI_NAME = re.compile(r"(?P<hookpoint>.*)_latent(?P<latent>-?\d+)\.txt")
_NEURONPEDIA_NAME = re.compile(r".*batch-\d+\.jsonl(\.gz)?")


class SourceError(AutointerpError):
    """A file that is not in (or does not fit) the explanation format asked for; the message says what is."""


@dataclass
class SourceEntry:
    """One explanation as a file holds it, before it is matched to a run."""

    source: str  # the format: one of FORMATS
    origin: str  # where it was found: file, and line or key, so a report can point at it
    layer: str | None  # the layer/hookpoint exactly as the file names it; None where the format names none
    latent: int | None  # None when the entry has no readable latent index (see `problem`)
    text: str | None  # the explanation; None or blank when the entry has none
    explainer_model: str | None = None  # where the format records it
    problem: str = ""  # why the entry cannot be used as read; "" when it could be read
    extra: dict[str, Any] = field(default_factory=dict)  # provenance the format adds (typeName, modelId, ...)


# ---------------------------------------------------------------- layer names


@dataclass(frozen=True)
class LayerKey:
    """What a layer name stands for: a block number and where in the block (None = not said)."""

    layer: int | None
    site: str | None  # "resid" (after the block), "resid_mid", "mlp", "attn"

    def fits(self, other: LayerKey) -> bool:
        """Same block, and the same site where both names say one."""
        if self.layer is None or other.layer is None or self.layer != other.layer:
            return False
        return self.site is None or other.site is None or self.site == other.site

    def __str__(self) -> str:
        return f"layer {self.layer}" + (f" ({self.site})" if self.site else "")


def layer_key(name: str) -> LayerKey:
    """Read a block number and site from the names the peers use for one place in a model.

    "layers.10", ".model.layers.10", "model.layers.10", "blocks.10.hook_resid_post",
    "10-gemmascope-res-16k", "layer_10/width_16k/..." all name the residual stream after block 10;
    "layers.10.mlp", "blocks.10.hook_mlp_out", "10-gemmascope-mlp-16k" its MLP, "...att..." its
    attention. TransformerLens's `hook_resid_pre` of block L is the stream after block L-1, and is
    keyed so. The block number is the first all-digit part of the name; a name with none has no key.
    """
    tokens = [t for t in re.split(r"[^0-9a-z]+", name.lower()) if t]
    numbers = [int(t) for t in tokens if t.isdigit()]
    layer = numbers[0] if numbers else None
    words = set(tokens)
    followed = set(zip(tokens, tokens[1:], strict=False))
    site: str | None
    if {("resid", "pre"), ("res", "pre")} & followed:
        return LayerKey(None if layer is None else layer - 1, "resid")
    if {("resid", "mid"), ("res", "mid"), ("mlp", "in")} & followed or "layernorm" in words:
        site = "resid_mid"
    elif words & {"mlp", "transcoder", "tc", "mlpout"}:
        site = "mlp"
    elif words & {"att", "attn", "attention", "attnout"}:
        site = "attn"
    elif words & {"res", "resid", "residual"} or tokens[-2:-1] in (["layers"], ["blocks"], ["h"]):
        site = "resid"  # a bare module path `layers.N` is the block's output: the residual stream
    else:
        site = None
    return LayerKey(layer, site)


# ---------------------------------------------------------------- format detection


def detect_format(path: Path) -> str:
    """Which of FORMATS a path is, from its folder layout, file suffix or JSON shape."""
    path = Path(path)
    if not path.exists():
        raise SourceError(f"explanations file {path} not found")
    if path.is_dir():
        if (path / "explanations.jsonl").exists() or (path / "results.parquet").exists():
            return "autointerp"
        for folder in (path / "explanations", path):
            if folder.is_dir():
                names = [p.name for p in folder.iterdir() if p.is_file()]
                if any(_NEURONPEDIA_NAME.fullmatch(n) for n in names):
                    return "neuronpedia"
                if any(_DELPHI_NAME.fullmatch(n) for n in names):
                    return "delphi"
        jsons = sorted(path.glob("*.json"))
        if any(p.name.endswith("eval_results.json") for p in jsons):
            return "saebench"
        if jsons:
            return _json_format(jsons[0])
        raise SourceError(
            f"{path} is a folder with no explanations in a known layout: expected one of our run "
            "folders (explanations.jsonl), a delphi output folder (explanations/<hookpoint>_latent<i>"
            ".txt), a Neuronpedia export (explanations/batch-N.jsonl.gz), or a folder of EleutherAI "
            "(<layer>_feature.json) or SAEBench (*_eval_results.json) files"
        )
    name = path.name.lower()
    if name.endswith(".parquet"):
        return "autointerp"
    if _DELPHI_NAME.fullmatch(path.name):
        return "delphi"
    if name.endswith((".jsonl", ".jsonl.gz", ".gz")):
        first = next(_jsonl_rows(path), None)
        if first is None:
            raise SourceError(f"{path} holds no rows (every line is blank)")
        where, row = first
        if isinstance(row, BadLine):
            raise SourceError(f"{where}: not JSON ({row.error}), so the file's format cannot be told from it")
        if isinstance(row, dict) and "description" in row and "index" in row:
            return "neuronpedia"
        if isinstance(row, dict) and "latent" in row and ("explanation" in row or "status" in row):
            return "autointerp"
        raise SourceError(
            f"{path}: cannot tell the format of its rows (first row: {str(row)[:200]}); "
            "Neuronpedia rows have index and description, ours latent and explanation"
        )
    if name.endswith(".json"):
        return _json_format(path)
    raise SourceError(
        f"{path}: unknown explanations file type; expected .jsonl(.gz), .json, .parquet, a "
        "delphi <hookpoint>_latent<i>.txt, or a folder"
    )


def _json_format(path: Path) -> str:
    data = _load_json(path)
    if isinstance(data, dict) and "eval_result_unstructured" in data:
        return "saebench"
    if isinstance(data, dict) and 2 * sum(_int_or_none(k) is not None for k in data) > len(data):
        return "eleuther"  # mostly latent keys; the odd other key is reported by the reader, not guessed away
    raise SourceError(
        f"{path}: a JSON file that is neither SAEBench results (eval_result_unstructured) nor an "
        'EleutherAI explanations file ({"<latent>": "<explanation>", ...})'
    )


# ---------------------------------------------------------------- readers


def read_explanations(path: Path, fmt: str = "auto", *, progress: bool = False) -> tuple[str, list[SourceEntry]]:
    """The format used (detected when `fmt` is "auto") and every entry the file or folder holds."""
    fmt, entries = iter_explanations(path, fmt, progress=progress)
    return fmt, list(entries)


def iter_explanations(path: Path, fmt: str = "auto", *, progress: bool = False) -> tuple[str, Iterator[SourceEntry]]:
    """Like `read_explanations`, but the entries stream: an export of a whole model need not fit in memory."""
    path = Path(path)
    if fmt == "auto":
        fmt = detect_format(path)
    elif fmt not in FORMATS:
        raise SourceError(f"unknown explanations format {fmt!r}; valid: auto, {', '.join(FORMATS)}")
    if not path.exists():
        raise SourceError(f"explanations file {path} not found")
    reader = {
        "autointerp": _read_autointerp,
        "delphi": _read_delphi,
        "eleuther": _read_eleuther,
        "neuronpedia": _read_neuronpedia,
        "saebench": _read_saebench,
    }[fmt]
    return fmt, reader(path, progress)


def _files(path: Path, matches: Callable[[str], bool], what: str, progress: bool) -> Iterator[Path]:
    """The files of a folder that `matches` (sorted), or the path itself; a progress bar over many."""
    if path.is_file():
        yield path
        return
    files = sorted((p for p in path.iterdir() if p.is_file() and matches(p.name)), key=_natural)
    if not files:
        raise SourceError(f"{path} holds no {what}")
    yield from tqdm(
        files, desc="reading explanations", unit="file", disable=not progress or len(files) < 20, dynamic_ncols=True
    )


def _natural(p: Path) -> list[Any]:
    """batch-2 before batch-10."""
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", p.name)]


def _read_autointerp(path: Path, progress: bool) -> Iterator[SourceEntry]:
    if path.is_dir():
        if (path / "explanations.jsonl").exists():
            path = path / "explanations.jsonl"
        elif (path / "results.parquet").exists():
            path = path / "results.parquet"
        else:
            raise SourceError(
                f"{path} is not an autointerp run folder: it has no explanations.jsonl or results.parquet"
            )
    if path.name.endswith(".parquet"):
        yield from _read_our_table(path)
        return
    # the log is append-only: a latent's last row is its current explanation, earlier ones are history
    newest: dict[tuple[Any, Any], tuple[str, ExplanationRow | None, str]] = {}
    for where, data in _jsonl_rows(path):
        latent = _int_or_none(data.get("latent")) if isinstance(data, dict) else None
        if not isinstance(data, dict):
            newest[("?", where)] = (where, None, _not_an_object(data))
            continue
        if latent is None:
            newest[("?", where)] = (where, None, f"latent {data.get('latent')!r} is not an integer")
            continue
        try:  # a hand-written file may leave out the status of its (usable) rows
            row = ExplanationRow.from_json({"status": "ok", **data, "latent": latent})
        except RowError as e:
            newest[("?", where)] = (where, None, str(e))
            continue
        newest.pop((row.hookpoint, row.latent), None)
        newest[(row.hookpoint, row.latent)] = (where, row, "")
    for where, found, problem in newest.values():
        if found is None:
            yield SourceEntry(source="autointerp", origin=where, layer=None, latent=None, text=None, problem=problem)
            continue
        row = found
        if row.status != "ok":
            problem = f"status {row.status!r} in the source run (no usable explanation)"
        yield SourceEntry(
            source="autointerp",
            origin=where,
            layer=row.hookpoint,
            latent=row.latent,
            text=_text(row.explanation),
            explainer_model=row.explainer_model,
            problem=problem,
        )


def _read_our_table(path: Path) -> Iterator[SourceEntry]:
    import pandas as pd

    table = pd.read_parquet(path)
    missing = {"latent", "explanation"} - set(table.columns)
    if missing:
        raise SourceError(f"{path} has no {sorted(missing)} column(s): not an autointerp results table")
    for i, r in enumerate(table.to_dict("records")):
        row = {k: (None if _isna(v) else v) for k, v in r.items()}
        latent = _int_or_none(row.get("latent"))
        status = row.get("status", "ok")
        problem = "" if latent is not None else f"latent {row.get('latent')!r} is not an integer"
        if not problem and status != "ok":
            problem = f"status {status!r} in the source run (no usable explanation)"
        yield SourceEntry(
            source="autointerp",
            origin=f"{path.name} row {i}",
            layer=row.get("hookpoint"),
            latent=latent,
            text=_text(row.get("explanation")),
            explainer_model=row.get("explainer_model"),
            problem=problem,
        )


def _read_delphi(path: Path, progress: bool) -> Iterator[SourceEntry]:
    if path.is_dir() and (path / "explanations").is_dir():
        path = path / "explanations"
    model = _delphi_explainer(path)
    for file in _files(
        path,
        lambda n: _DELPHI_NAME.fullmatch(n) is not None,
        "delphi explanations (<hookpoint>_latent<i>.txt)",
        progress,
    ):
        m = _DELPHI_NAME.fullmatch(file.name)
        if m is None:
            raise SourceError(f"{file}: a delphi explanation file is named <hookpoint>_latent<i>.txt")
        raw = file.read_text(encoding="utf-8")
        try:
            text = json.loads(raw)  # delphi writes orjson.dumps(explanation): a JSON string
        except json.JSONDecodeError:
            text = raw  # a hand-written or older plain-text file
        problem = "" if isinstance(text, str) else f"holds {type(text).__name__}, not a JSON string"
        yield SourceEntry(
            source="delphi",
            origin=str(file),
            layer=m["hookpoint"],
            latent=int(m["latent"]),
            text=text if isinstance(text, str) else None,
            explainer_model=model,
            problem=problem,
        )


def _delphi_explainer(folder: Path) -> str | None:
    """delphi saves its run options, the explainer model among them, beside `explanations/`."""
    for config in (folder.parent / "run_config.json", folder / "run_config.json"):
        if config.is_file():
            try:
                value = json.loads(config.read_text()).get("explainer_model")
            except (json.JSONDecodeError, AttributeError):
                return None
            return value if isinstance(value, str) else None
    return None


def _read_eleuther(path: Path, progress: bool) -> Iterator[SourceEntry]:
    for file in _files(path, lambda n: n.endswith(".json"), "EleutherAI explanation files (*.json)", progress):
        data = _load_json(file)
        if not isinstance(data, dict):
            raise SourceError(
                f'{file}: an EleutherAI explanations file is a JSON object {{"<latent>": '
                f'"<explanation>"}}, this holds {type(data).__name__}'
            )
        stem = file.name.removesuffix(".json").removesuffix("_feature")
        layer = stem if layer_key(stem).layer is not None else None
        for key, value in data.items():
            latent = _int_or_none(key)
            if isinstance(value, dict):  # tolerate {"<latent>": {"explanation": ...}}
                value = value.get("explanation", value.get("description"))
            problem = "" if latent is not None else f"key {key!r} is not a latent index"
            if not problem and value is not None and not isinstance(value, str):
                problem = f"explanation is {type(value).__name__}, not a string"
            yield SourceEntry(
                source="eleuther",
                origin=f"{file}[{key!r}]",
                layer=layer,
                latent=latent,
                text=value if isinstance(value, str) else None,
                problem=problem,
            )


def _read_neuronpedia(path: Path, progress: bool) -> Iterator[SourceEntry]:
    if path.is_dir() and (path / "explanations").is_dir():
        path = path / "explanations"
    for file in _files(
        path,
        lambda n: n.endswith((".jsonl", ".jsonl.gz")),
        "Neuronpedia explanation batches (batch-N.jsonl.gz)",
        progress,
    ):
        for where, row in _jsonl_rows(file):
            if not isinstance(row, dict):
                yield SourceEntry("neuronpedia", where, None, None, None, problem=_not_an_object(row))
                continue
            latent = _int_or_none(row.get("index"))
            problem = "" if latent is not None else f"index {row.get('index')!r} is not a latent index"
            if "description" not in row and not problem:
                problem = "no description field"
            extra = {k: row[k] for k in ("modelId", "typeName", "id") if row.get(k) is not None}
            yield SourceEntry(
                source="neuronpedia",
                origin=where,
                layer=_str_or_none(row.get("layer")),
                latent=latent,
                text=_text(row.get("description")),
                explainer_model=_str_or_none(row.get("explanationModelName")),
                problem=problem,
                extra=extra,
            )


def _read_saebench(path: Path, progress: bool) -> Iterator[SourceEntry]:
    for file in _files(path, lambda n: n.endswith(".json"), "SAEBench results (*_eval_results.json)", progress):
        data = _load_json(file)
        results = data.get("eval_result_unstructured") if isinstance(data, dict) else None
        if not isinstance(results, dict):
            raise SourceError(
                f"{file}: SAEBench autointerp results hold eval_result_unstructured "
                "{latent: {explanation, score, ...}}; this file does not"
            )
        cfg = data.get("sae_cfg_dict") or {}
        hook = cfg.get("hook_name") or (cfg.get("metadata") or {}).get("hook_name")
        sae_id = data.get("sae_lens_id")
        for key, value in results.items():
            latent = _int_or_none(key)
            text = value.get("explanation") if isinstance(value, dict) else None
            problem = "" if latent is not None else f"key {key!r} is not a latent index"
            extra = {"score": value.get("score")} if isinstance(value, dict) and "score" in value else {}
            if sae_id:
                extra["sae_lens_id"] = sae_id
            yield SourceEntry(
                source="saebench",
                origin=f"{file}[{key!r}]",
                layer=_str_or_none(hook),
                latent=latent,
                text=_text(text),
                problem=problem,
                extra=extra,
            )


# ---------------------------------------------------------------- small helpers


@dataclass
class BadLine:
    """A JSONL line that does not parse, with the parser's complaint."""

    error: str


def _not_an_object(row: Any) -> str:
    return f"not JSON ({row.error})" if isinstance(row, BadLine) else "not a JSON object"


def _jsonl_rows(path: Path) -> Iterator[tuple[str, Any]]:
    """(where, parsed row) for every non-blank line, `where` being `path:line`; a line that is not
    JSON is yielded as a `BadLine` saying why."""
    opener = gzip.open if path.name.endswith(".gz") else open
    try:
        with opener(path, "rt", encoding="utf-8") as f:
            for number, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    yield f"{path}:{number}", json.loads(line)
                except json.JSONDecodeError as e:
                    yield f"{path}:{number}", BadLine(str(e))
    except (OSError, EOFError, UnicodeDecodeError) as e:
        raise SourceError(f"cannot read {path}: {e}") from None


def _load_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise SourceError(f"{path} is not valid JSON: {e}") from None


def _int_or_none(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str) and re.fullmatch(r"\s*-?\d+\s*", value):
        return int(value)
    return None


def _str_or_none(value: Any) -> str | None:
    return None if value is None else str(value)


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def _isna(value: Any) -> bool:
    try:
        return value is None or bool(value != value)
    except (TypeError, ValueError):
        return False
