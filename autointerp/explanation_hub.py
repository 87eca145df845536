"""Published explanations by Hub id: `score --explanations ORG/NAME[@REVISION][/PATH]`.

A published explanation set can be large (EleutherAI's holds every layer of several models, one file
per layer: `Gemma/131k/res/model.layers.11_feature.json`), and a run needs only its own hookpoints. So
the repo's file list is read first, the revision is resolved to one commit, and only the files for the
run's hookpoints are downloaded, at that commit; the import records `ORG/NAME@COMMIT/PATH` as where the
explanations came from, so a moved branch cannot change what a run says it scored.

Which files a set holds is read from their names, in the layouts `explanation_sources` reads:

- one of our published datasets (`data/results.parquet`): that one file (it names each row's hookpoint);
- SAEBench results (`*_eval_results.json`), EleutherAI layer files (`<layer>_feature.json`, any `.json`):
  the files whose name means the block of one of the run's hookpoints (`layer_key`);
- a Neuronpedia export (`.../<source>/explanations/batch-N.jsonl.gz`): the batches of the sources whose
  name means one of the run's hookpoints (all of them where the folder names no layer).

Files for a hookpoint in more than one folder (two models or widths of the same layer) are refused,
naming the folders, so the user picks one with `/PATH`. Dataset repos are looked up first, then model
repos. The chosen files are linked into a temporary folder for the import, so files of other layers
that the local Hub cache may hold from earlier are never read.
"""

from __future__ import annotations

import glob
import re
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from autointerp.errors import AutointerpError
from autointerp.explanation_sources import LayerKey, layer_key

_SPEC = re.compile(
    r"(?P<repo>[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*)(?:@(?P<rev>[^/\s]+))?(?:/(?P<path>.+))?"
)
OURS = "data/results.parquet"
_NEURONPEDIA_BATCH = re.compile(r"batch-\d+\.jsonl(\.gz)?")


class HubExplanationsError(AutointerpError):
    """Published explanations that cannot be found or fetched; the message says which and why."""


@dataclass
class Found:
    """Where the import reads from, and what it records as the source."""

    path: Path
    source: str | None  # `ORG/NAME@COMMIT[/PATH]` for a Hub download; None for a local path
    files: list[str]  # the repo files downloaded (empty for a local path)


def is_hub_id(spec: str) -> bool:
    """Not an existing local path, and shaped `ORG/NAME[@REV][/PATH]`."""
    return not Path(spec).exists() and _SPEC.fullmatch(spec) is not None and ".." not in spec


@contextmanager
def explanations_at(spec: str, hookpoints: Sequence[str]) -> Iterator[Found]:
    """The local path to import `spec` from: the path itself, or the run's files of a Hub repo, downloaded."""
    if not is_hub_id(spec):
        yield Found(Path(spec), None, [])
        return
    m = _SPEC.fullmatch(spec)
    assert m is not None
    repo, revision, scope = m["repo"], m["rev"], (m["path"] or "").strip("/")
    repo_type, commit, listing = _listing(repo, revision)
    files = choose_files(listing, hookpoints, scope, f"{repo}@{commit}")
    local = _download(repo, repo_type, commit, files)
    source = f"{repo}@{commit}" + (f"/{scope}" if scope else "")
    with tempfile.TemporaryDirectory(prefix="autointerp-hub-explanations-") as tmp:
        yield Found(_staged(local, files, Path(tmp)), source, files)


def choose_files(listing: Sequence[str], hookpoints: Sequence[str], scope: str, where: str) -> list[str]:
    """The files of `listing` (under `scope`) that hold explanations for the run's hookpoints."""
    inside = [f for f in listing if not scope or f == scope or f.startswith(scope + "/")]
    if not inside:
        raise HubExplanationsError(f"{where} has no file {scope!r} or files under it")
    ours = [f for f in inside if f == OURS or f.endswith("/" + OURS)]
    if ours:
        return _one_folder(ours, where)
    keys = [layer_key(hp) for hp in hookpoints]
    wanted: list[str] = []
    for f in inside:
        p = PurePosixPath(f)
        if _NEURONPEDIA_BATCH.fullmatch(p.name) and p.parent.name == "explanations":
            named = layer_key(p.parent.parent.name) if p.parent.parent.name else LayerKey(None, None)
            if named.layer is None or any(named.fits(k) for k in keys):
                wanted.append(f)
        elif p.name.endswith(".json"):
            stem = p.name.removesuffix(".json").removesuffix("_eval_results").removesuffix("_feature")
            named = layer_key(stem)
            site = layer_key(p.parent.name).site if named.site is None else named.site
            if any(LayerKey(named.layer, site).fits(k) for k in keys):
                wanted.append(f)
    if not wanted:
        shown = ", ".join(inside[:8]) + (f" and {len(inside) - 8} more" if len(inside) > 8 else "")
        raise HubExplanationsError(
            f"{where}{'/' + scope if scope else ''}: no explanation file for the run's hookpoints "
            f"({', '.join(f'{hp} ({layer_key(hp)})' for hp in hookpoints)}); it holds {shown}"
        )
    return _one_folder(wanted, where)


def _one_folder(files: list[str], where: str) -> list[str]:
    """Refuse files of one kind spread over several folders (two models, two widths): the user picks one."""

    def folder(f: str) -> str:
        p = PurePosixPath(f)
        return str(p.parent.parent.parent if p.parent.name == "explanations" else p.parent)

    folders = sorted({folder(f) for f in files})
    if len(folders) > 1:
        raise HubExplanationsError(
            f"{where} has explanations for the run's hookpoints in {len(folders)} folders "
            f"({', '.join(folders[:10])}); name one: --explanations REPO/FOLDER"
        )
    return sorted(files)


def _listing(repo: str, revision: str | None) -> tuple[str, str, list[str]]:
    """(repo type, commit, files) of the repo at the revision: a dataset repo, else a model repo."""
    from huggingface_hub import HfApi
    from huggingface_hub.errors import RepositoryNotFoundError, RevisionNotFoundError

    from autointerp.subjects.sources import hub_endpoint

    api = HfApi()
    for repo_type in ("dataset", "model"):
        try:
            info = api.repo_info(repo, repo_type=repo_type, revision=revision)
        except RevisionNotFoundError:
            raise HubExplanationsError(f"{repo_type} repo {repo} has no revision {revision!r}") from None
        except RepositoryNotFoundError:
            continue
        except Exception as e:  # connection refused, timeout, DNS: one line
            raise HubExplanationsError(f"cannot reach {hub_endpoint()} for explanations {repo}: {e}") from None
        if not info.sha:
            raise HubExplanationsError(f"{repo}: {hub_endpoint()} answered without a commit")
        siblings = getattr(info, "siblings", None) or []
        return repo_type, info.sha, [s.rfilename for s in siblings]
    raise HubExplanationsError(
        f"explanations {repo!r}: no such local path, and no dataset or model repo of that id on {hub_endpoint()} "
        "(a private repo needs HF_TOKEN or `hf auth login`)"
    )


def _download(repo: str, repo_type: str, commit: str, files: list[str]) -> Path:
    from huggingface_hub import snapshot_download

    try:
        local = snapshot_download(
            repo, repo_type=repo_type, revision=commit, allow_patterns=[glob.escape(f) for f in files]
        )
    except Exception as e:  # HTTP errors, a dropped connection, a full disk: one line, the cause kept
        raise HubExplanationsError(f"downloading explanations {repo}@{commit} failed: {e}") from e
    missing = [f for f in files if not (Path(local) / f).is_file()]
    if missing:
        raise HubExplanationsError(f"{repo}@{commit}: the Hub did not deliver {', '.join(missing)}")
    return Path(local)


def _staged(local: Path, files: list[str], tmp: Path) -> Path:
    """The files linked by name into a folder of their layout (`explanations/` kept for batches): the readers
    tell formats and layers by file name, which the Hub cache's own links lead away from."""
    for f in files:
        p = PurePosixPath(f)
        target = tmp / ("explanations" if p.parent.name == "explanations" else "") / p.name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.symlink_to((local / f).resolve())
    return tmp
