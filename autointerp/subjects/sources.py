"""Where the subject model and the dictionary come from: a local path, a Hugging Face Hub repo, or a
SAELens release.

A name that is an existing local path is always read from disk. Otherwise `ORG/NAME` is a Hub repo
(for dictionaries `ORG/NAME/sub/folder` names a folder inside it), and `saelens:RELEASE/SAE_ID` is
looked up in the directory of releases that the installed sae-lens package ships.

The repo's file list is read first (one request), so that only what a run needs is downloaded: the
files of the requested hookpoints of a sparsify run with thirty of them, a model's safetensors
weights and tokenizer but never its pickled, ONNX or GGUF copies. The revision is resolved to a
commit once; the download and the recorded provenance (`ORG/NAME@COMMIT[/FOLDER]`, never a path in
the local cache) use that commit, and later stages of a run load the same commit again, so a branch
that moves in between cannot mix two versions.

With `HF_HUB_OFFLINE=1` nothing is asked of the network: the commit comes from the local Hub cache's
refs and the file list from its snapshot folder. When the Hub cannot be reached the cache is used
the same way.
"""

from __future__ import annotations

import glob
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any, TypeVar

from autointerp.errors import AutointerpError
from autointerp.subjects.dictionaries import GEMMA_SCOPE_FILE, gemma_scope_hookpoint, held_dictionaries

T = TypeVar("T")
SAELENS_PREFIX = "saelens:"
ALL = "all"  # as the requested hookpoints: every hookpoint the dictionary holds
_REPO_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*")
_COMMIT = re.compile(r"[0-9a-f]{40}")
_PINNED = re.compile(r"(?P<repo>[^@\s]+)@(?P<commit>[0-9a-f]{40})(?:/(?P<path>.*))?")
# top-level files of a model repo that transformers reads; weights are chosen separately
_MODEL_SUFFIXES = (".json", ".txt", ".model", ".jinja", ".tiktoken")
# what each dictionary format needs from its folder (optional extras are fetched when present)
_DICTIONARY_FILES = {
    "sparsify": (("cfg.json", "sae.safetensors"), ()),
    "saelens": (
        ("cfg.json", "sae_weights.safetensors"),
        ("activation_scaler.json", "activation_whitening.safetensors"),
    ),
    "gemma_scope": ((GEMMA_SCOPE_FILE,), ()),
}
# sae-lens conversion functions whose checkpoints one of our loaders reads
_SAELENS_FORMATS = {None: "saelens", "gemma_2": "gemma_scope"}
# keys of a release's config_overrides that change how our SAELens loader encodes
# and the ones that say how it read the model (checked by subjects.contexts before the model loads)
_SAELENS_OVERRIDES = ("normalize_activations", "apply_b_dec_to_input", "model_from_pretrained_kwargs")


class SourceError(AutointerpError):
    """A model or dictionary that cannot be found or fetched; one line that names it."""


def looks_like_repo_id(text: str) -> bool:
    """`ORG/NAME` (what the Hub accepts), as opposed to a path such as `./x`, `/abs/x` or `x`."""
    return bool(_REPO_ID.fullmatch(text)) and ".." not in text


def pinned_commit(name: str | None) -> str | None:
    """The commit in a provenance name `ORG/NAME@COMMIT[/FOLDER]`, None for anything else (a local path)."""
    m = _PINNED.fullmatch(name or "")
    return m.group("commit") if m else None


def hub_endpoint() -> str:
    from huggingface_hub import constants

    return constants.ENDPOINT


@dataclass(frozen=True)
class Snapshot:
    """A repo at one commit and the files it has there (offline: the files the local cache holds)."""

    repo_id: str
    commit: str
    files: tuple[str, ...]
    cached: bool  # the listing is the local cache's, not the Hub's
    revision: str | None = None  # as asked (None: main)

    def pinned(self, folder: str = "") -> str:
        return f"{self.repo_id}@{self.commit}" + (f"/{folder}" if folder else "")

    def fetch(self, paths: Sequence[str], what: str) -> Path:
        """The local snapshot folder, with `paths` in it: downloaded through `snapshot_download`
        (only those files) unless the local cache already has them all."""
        from huggingface_hub import snapshot_download
        from huggingface_hub.errors import EntryNotFoundError

        folder = _cache_folder(self.repo_id) / "snapshots" / self.commit
        missing = [p for p in paths if not (folder / p).is_file()]
        if not missing:
            self._remember_ref()
            return folder
        if self.cached:
            raise SourceError(
                f"{what} {self.pinned()}: {', '.join(missing)} not in the local Hub cache "
                f"({_offline_reason()}); fetch it once with the Hub reachable"
            )
        try:
            local = snapshot_download(
                self.repo_id, revision=self.commit, allow_patterns=[glob.escape(p) for p in paths]
            )
        except EntryNotFoundError as e:
            raise SourceError(f"{what} {self.pinned()}: a listed file is not on the Hub ({_first_line(e)})") from e
        except Exception as e:  # HTTP errors, a dropped connection, a full disk: one line, the cause kept
            raise SourceError(f"{what} {self.pinned()}: download from {hub_endpoint()} failed: {_first_line(e)}") from e
        folder = Path(local)
        missing = [p for p in paths if not (folder / p).is_file()]
        if missing:
            raise SourceError(f"{what} {self.pinned()}: the Hub did not deliver {', '.join(missing)}")
        self._remember_ref()
        return folder

    def _remember_ref(self) -> None:
        """Record in the cache's `refs/` which commit the revision named (the download was asked by
        commit, which records none), so that HF_HUB_OFFLINE finds it by that name later."""
        revision = self.revision or "main"
        if self.cached or _COMMIT.fullmatch(revision):
            return
        ref = _cache_folder(self.repo_id) / "refs" / revision
        if ref.is_file() and ref.read_text().strip() == self.commit:
            return
        ref.parent.mkdir(parents=True, exist_ok=True)
        tmp = ref.with_name(f".{ref.name}.{os.getpid()}.tmp")
        tmp.write_text(self.commit)
        os.replace(tmp, ref)


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return f"{type(error).__name__}: {text.splitlines()[0] if text else ''}"


def _offline() -> bool:
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)


def _offline_reason() -> str:
    return "HF_HUB_OFFLINE is set" if _offline() else f"the Hub at {hub_endpoint()} could not be reached"


def _cache_folder(repo_id: str) -> Path:
    from huggingface_hub import constants
    from huggingface_hub.file_download import repo_folder_name

    return Path(constants.HF_HUB_CACHE).expanduser() / repo_folder_name(repo_id=repo_id, repo_type="model")


def _cached_snapshot(repo_id: str, revision: str | None) -> Snapshot | None:
    """The snapshot of the local Hub cache for this revision (a ref such as `main`, or a commit)."""
    storage = _cache_folder(repo_id)
    revision = revision or "main"
    if _COMMIT.fullmatch(revision):
        commit = revision
    else:
        ref = storage / "refs" / revision
        if not ref.is_file():
            return None
        commit = ref.read_text().strip()
    folder = storage / "snapshots" / commit
    if not folder.is_dir():
        return None
    files = tuple(sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()))
    return Snapshot(repo_id, commit, files, cached=True)


def _cache_only(repo_id: str, revision: str | None, what: str, error: BaseException | None = None) -> Snapshot:
    found = _cached_snapshot(repo_id, revision)
    if found is not None:
        return found
    refs = _cache_folder(repo_id) / "refs"
    cached = sorted(p.name for p in refs.iterdir()) if refs.is_dir() else []
    which = f"revision {revision!r} of " if revision else ""
    has = f" (it has {', '.join(cached)})" if cached else ""
    cause = f" ({_first_line(error)})" if error is not None else ""
    raise SourceError(
        f"{what} {which}{repo_id!r} is not in the local Hub cache{has} and {_offline_reason()}{cause}; "
        "fetch it once with the Hub reachable"
    )


def _hub_snapshot(repo_id: str, revision: str | None, what: str, *, named_by_user: bool = True) -> Snapshot:
    """The repo's commit and file list from the Hub; the local cache when offline or unreachable.
    `named_by_user`: the user typed the repo id, where a local path of that name was looked for too."""
    if _offline():
        return _cache_only(repo_id, revision, what)
    from huggingface_hub import HfApi
    from huggingface_hub.errors import (
        GatedRepoError,
        HFValidationError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    try:
        info = HfApi().model_info(repo_id, revision=revision)
    except RevisionNotFoundError:
        raise SourceError(f"{what} repo {repo_id!r} has no revision {revision!r} on {hub_endpoint()}") from None
    except GatedRepoError:
        raise SourceError(
            f"{what} repo {repo_id!r} is gated: accept its terms on the Hub, then log in (HF_TOKEN or `hf auth login`)"
        ) from None
    except RepositoryNotFoundError:
        local = f"no local path {repo_id!r} and " if named_by_user else ""
        raise SourceError(
            f"{what} not found: {local}no repo {repo_id!r} on {hub_endpoint()} "
            "(a private repo needs HF_TOKEN or `hf auth login`)"
        ) from None
    except HFValidationError as e:
        raise SourceError(f"{what} {repo_id!r} is neither a local path nor a Hub repo id ({e})") from None
    except Exception as e:  # connection refused, timeout, DNS, a proxy: use what the cache has
        return _cache_only(repo_id, revision, what, e)
    if not info.sha:
        raise SourceError(f"{what} repo {repo_id!r}: {hub_endpoint()} answered without a commit")
    files = tuple(s.rfilename for s in info.siblings or [])
    return Snapshot(repo_id, info.sha, files, cached=False, revision=revision)


def _choose(
    repo_id: str, revision: str | None, what: str, choose: Callable[[Snapshot], T], *, named_by_user: bool = True
) -> T:
    """`choose(snapshot)`, reading the listing from the local cache first when the revision is a
    commit that is cached (later stages of a run, which pin the commit the cache was built from),
    so that they need no network; the Hub's listing is asked when the cache's does not serve."""
    if revision and _COMMIT.fullmatch(revision) and not _offline():
        local = _cached_snapshot(repo_id, revision)
        if local is not None:
            try:
                return choose(local)
            except SourceError:
                pass  # not all of it is cached: the Hub's listing decides
    return choose(_hub_snapshot(repo_id, revision, what, named_by_user=named_by_user))


# ------------------------------------------------------------------------------------------- models


def model_files(files: Sequence[str], *, weights: bool = True) -> list[str]:
    """The files of a model repo that a transformers causal LM and its tokenizer load from: top-level
    config and tokenizer files, and safetensors weights only (one consolidated file, else the shards
    named `model-*` with their index, else every top-level safetensors file)."""
    top = [f for f in files if "/" not in f]
    wanted = [f for f in top if f.endswith(_MODEL_SUFFIXES) and not f.endswith(".safetensors.index.json")]
    if not weights:
        return wanted
    if "model.safetensors" in top:
        return [*wanted, "model.safetensors"]
    if "model.safetensors.index.json" in top:
        return [*wanted, "model.safetensors.index.json", *[f for f in top if re.fullmatch(r"model-.*\.safetensors", f)]]
    return [*wanted, *[f for f in top if f.endswith(".safetensors")]]


def fetch_model(repo_id: str, revision: str | None = None, *, weights: bool = True) -> tuple[Path, str]:
    """(local folder, provenance `ORG/NAME@COMMIT`) of a Hub model: its config, tokenizer and, with
    `weights`, its safetensors weights (a repo with only pickled weights is refused)."""
    what = "subject model"

    def choose(snapshot: Snapshot) -> tuple[Snapshot, list[str]]:
        wanted = model_files(snapshot.files, weights=weights)
        has_weights = any(f.endswith(".safetensors") for f in wanted)
        if snapshot.cached:  # the cache's listing: what it lacks may simply never have been fetched
            needs = {"config.json": "config.json" in wanted, "safetensors weights": has_weights or not weights}
            lacks = [name for name, ok in needs.items() if not ok]
            if lacks:
                raise SourceError(
                    f"{what} {snapshot.pinned()}: its {' and '.join(lacks)} are not in the local Hub cache "
                    f"({_offline_reason()}); fetch them once with the Hub reachable"
                )
        where = snapshot.pinned()
        if "config.json" not in wanted:
            raise SourceError(f"{what} {where} has no config.json: not a transformers model")
        if not has_weights and weights:
            others = [f for f in snapshot.files if f.endswith((".bin", ".pt", ".pth", ".ckpt", ".h5", ".msgpack"))]
            raise SourceError(
                f"{what} {where} has no safetensors weights"
                + (f" (only {', '.join(others[:3])})" if others else "")
                + "; autointerp loads safetensors only, never pickled checkpoints"
            )
        return snapshot, wanted

    snapshot, wanted = _choose(repo_id, revision, what, choose)
    return snapshot.fetch(wanted, what), snapshot.pinned()


# ------------------------------------------------------------------------------------- dictionaries


@dataclass(frozen=True)
class DictionarySource:
    """One dictionary, on local disk, ready for `load_dictionary`."""

    path: Path  # a local dictionary folder (or file); for a download, the hookpoint's folder in the cache
    hookpoint: str | None  # handed to the loader (None: the dictionary's own)
    name: str | None = None  # provenance to record instead of `path`: ORG/NAME@COMMIT[/FOLDER]
    cfg_overrides: dict[str, Any] = field(default_factory=dict)


def locate_dictionary(
    spec: str, hookpoints: Sequence[str] | None = None, revision: str | None = None
) -> list[DictionarySource]:
    """The dictionary named by `spec` for each requested hookpoint, fetching from the Hub what is needed.

    `spec` is a local path (kept as it is: the loaders read it), `ORG/NAME[/FOLDER]` on the Hub, or
    `saelens:RELEASE/SAE_ID`. `hookpoints` None means the dictionary's own (one, or an error listing
    them when the folder holds several); each named hookpoint must be one the folder holds. All the
    files of all requested hookpoints are fetched in one download.
    """
    requested = list(hookpoints or [])
    if spec.startswith(SAELENS_PREFIX):
        return [_saelens_source(spec, requested, revision)]
    local = Path(spec).expanduser()
    hub = not local.exists() and _hub_dictionary_spec(spec)
    if not hub:
        if revision is not None:
            raise SourceError(f"--dictionary-revision {revision} is for Hub dictionaries, but {spec!r} is a local path")
        return [DictionarySource(local, hp) for hp in requested] or [DictionarySource(local, None)]
    parts = spec.strip("/").split("/")
    repo_id, folder = "/".join(parts[:2]), "/".join(parts[2:])
    what = "dictionary"

    def choose(snapshot: Snapshot) -> tuple[Snapshot, list[tuple[str, str | None, str]]]:
        return snapshot, _select_folders(snapshot, folder, requested)

    snapshot, chosen = _choose(repo_id, revision, what, choose)
    root = snapshot.fetch([p for f, _, fmt in chosen for p in _folder_files(snapshot, f, fmt)], what)
    sources = []
    for sub, hookpoint, fmt in chosen:
        if fmt == "gemma_scope":
            hookpoint = _gemma_scope_hookpoint(snapshot, sub, hookpoint)
        sources.append(DictionarySource(root / sub if sub else root, hookpoint, snapshot.pinned(sub)))
    return sources


def natural_key(name: str) -> list[Any]:
    """Sorts hookpoint names as people read them: layers.2 before layers.10."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


def split_dictionaries(spec: str) -> list[str]:
    """The locations in a `--dictionary` value: one, or several separated by commas (a local path that
    exists is one location, comma or not)."""
    if "," not in spec or Path(spec).expanduser().exists():
        return [spec]
    return [part.strip() for part in spec.split(",") if part.strip()]


def locate_dictionaries(
    spec: str, hookpoints: Sequence[str] | None = None, revision: str | None = None
) -> list[DictionarySource]:
    """The dictionaries of a run that may read several hookpoints, one source per hookpoint.

    `spec` is one location or several separated by commas (`split_dictionaries`); a location is one
    dictionary or a folder of them (a sparsify run; a folder of SAELens or Gemma Scope folders; the
    same on the Hub). `hookpoints`: None = the dictionary a location is (a folder of several must be
    told which, unless it holds just one); `[ALL]` = every hookpoint the locations hold; names = those
    hookpoints, each of which the location must hold (the error lists the ones it does). Several
    locations mean every hookpoint they hold: `hookpoints` may then only be None or `[ALL]`. A single
    dictionary asked for one hookpoint reads there (as `--hookpoint` always has: a SAELens or Gemma
    Scope SAE whose files name no hook, or another name for the same place).
    """
    parts = split_dictionaries(spec)
    requested = list(hookpoints) if hookpoints is not None else None
    every = requested == [ALL]
    if len(parts) > 1:
        if requested is not None and not every:
            raise SourceError(
                f"--dictionary lists {len(parts)} locations, and every hookpoint they hold is cached: "
                "--hookpoints can only be 'all' with several (list fewer locations to cache fewer hookpoints)"
            )
        return [source for part in parts for source in _locate_part(part, [ALL], revision)]
    return _locate_part(spec, requested, revision)


def _locate_part(spec: str, requested: list[str] | None, revision: str | None) -> list[DictionarySource]:
    every = requested == [ALL]
    if spec.startswith(SAELENS_PREFIX):
        return locate_dictionary(spec, None if every else requested, revision)
    local = Path(spec).expanduser()
    if not local.exists() and _hub_dictionary_spec(spec):
        return locate_dictionary(spec, requested, revision)
    single, held = held_dictionaries(local)
    if not held:  # nothing recognisable: the loader says what is wrong with it
        return locate_dictionary(spec, None if every else requested, revision)
    if revision is not None:
        raise SourceError(f"--dictionary-revision {revision} is for Hub dictionaries, but {spec!r} is a local path")
    if single:
        if requested is None or every:
            return [DictionarySource(held[0].path, None)]
        if len(requested) > 1:
            raise SourceError(f"dictionary {spec} is one dictionary; it cannot serve hookpoints {requested}")
        return [DictionarySource(held[0].path, requested[0])]
    names = [h.hookpoint for h in held if h.hookpoint]
    unnamed = [str(h.path) for h in held if not h.hookpoint]
    if requested is None:
        if len(held) > 1:
            raise SourceError(
                f"dictionary {spec} has several hookpoints, pick one with --hookpoint, several with --hookpoints "
                f"A,B or every one with --hookpoints all: {_listed(sorted(names))}"
            )
        chosen = held
    elif every:
        if unnamed:
            raise SourceError(
                f"dictionary {spec}: {_listed(unnamed)} name no hookpoint (no hook_name in cfg.json, or a Gemma "
                "Scope SAE that is not of the residual stream); give those folders one at a time with --hookpoint"
            )
        chosen = sorted(held, key=lambda h: natural_key(h.hookpoint or ""))
    else:
        unknown = [hp for hp in requested if hp not in names]
        if unknown:
            raise SourceError(f"dictionary {spec} has no hookpoint {_listed(unknown)}; it has {_listed(sorted(names))}")
        chosen = [h for hp in dict.fromkeys(requested) for h in held if h.hookpoint == hp]
    twice = sorted({h.hookpoint for h in chosen if h.hookpoint and names.count(h.hookpoint) > 1})
    if twice:
        folders = [str(h.path) for h in chosen if h.hookpoint in twice]
        raise SourceError(
            f"dictionary {spec}: several dictionaries read {', '.join(twice)} ({_listed(folders)}); a run holds one "
            "dictionary per hookpoint: give one of them as --dictionary"
        )
    return [DictionarySource(h.path, h.hookpoint) for h in chosen]


def _hub_dictionary_spec(spec: str) -> bool:
    parts = spec.strip("/").split("/")
    return len(parts) >= 2 and looks_like_repo_id("/".join(parts[:2])) and not spec.startswith(("/", ".", "~"))


def _dictionary_folders(files: Sequence[str]) -> dict[str, str]:
    """Folder -> format of every dictionary in a file list ("" is the root); a folder with a cfg.json
    but no weights is "incomplete", so that choosing it says which file is missing."""
    present = set(files)
    folders: dict[str, str] = {}
    for f in files:
        parent, name = f.rsplit("/", 1) if "/" in f else ("", f)
        prefix = f"{parent}/" if parent else ""
        if name == GEMMA_SCOPE_FILE:
            folders[parent] = "gemma_scope"
        elif name == "cfg.json":
            if f"{prefix}sae.safetensors" in present:
                folders[parent] = "sparsify"
            elif f"{prefix}sae_weights.safetensors" in present:
                folders[parent] = "saelens"
            else:
                folders.setdefault(parent, "incomplete")
    return folders


def _listed(items: Sequence[str], limit: int = 12) -> str:
    shown = ", ".join(items[:limit])
    return shown + (f", ... ({len(items)} in all)" if len(items) > limit else "")


def _select_folders(snapshot: Snapshot, folder: str, hookpoints: list[str]) -> list[tuple[str, str | None, str]]:
    """(folder, hookpoint for the loader, format) for each requested hookpoint, or one-line errors."""
    folders = _dictionary_folders(snapshot.files)
    where = snapshot.pinned(folder) + (" (local Hub cache)" if snapshot.cached else "")
    every = hookpoints == [ALL]
    if every:
        hookpoints = []
    if folder in folders:  # the folder is one dictionary: --hookpoint names where it reads, if anything
        if len(hookpoints) > 1:
            raise SourceError(f"dictionary {where} is one dictionary; it cannot serve hookpoints {hookpoints}")
        return [(folder, hookpoints[0] if hookpoints else None, _complete(snapshot, folder, folders[folder]))]
    prefix = f"{folder}/" if folder else ""
    # its subfolders named by hookpoint, as in a sparsify run (Gemma Scope's are not hookpoints)
    children = {
        f[len(prefix) :]: fmt
        for f, fmt in folders.items()
        if f.startswith(prefix) and "/" not in f[len(prefix) :] and fmt != "gemma_scope"
    }
    if children:
        names = sorted(children)
        if every:
            hookpoints = sorted(names, key=natural_key)
        elif not hookpoints:
            if len(names) > 1:
                raise SourceError(f"dictionary {where} has several hookpoints, pick one with --hookpoint: {names}")
            hookpoints = names
        unknown = [hp for hp in hookpoints if hp not in children]
        if unknown:
            raise SourceError(f"dictionary {where} has no hookpoint {_listed(unknown)}; it has {_listed(names)}")
        return [(prefix + hp, hp, _complete(snapshot, prefix + hp, children[hp])) for hp in hookpoints]
    deeper = sorted(f for f in folders if f.startswith(prefix))
    if deeper:
        example = f"{snapshot.repo_id}/{deeper[0]}"
        raise SourceError(
            f"dictionary {where} holds no dictionary itself; dictionaries are in {_listed(deeper)}: "
            f"name one, e.g. --dictionary {example}"
        )
    if folder and not any(f.startswith(prefix) for f in snapshot.files):
        raise SourceError(f"dictionary {snapshot.pinned()} has no folder {folder!r}")
    raise SourceError(
        f"dictionary {where} holds no dictionary: no sparsify cfg.json + sae.safetensors, SAELens "
        f"cfg.json + sae_weights.safetensors or Gemma Scope {GEMMA_SCOPE_FILE}"
    )


def _complete(snapshot: Snapshot, folder: str, fmt: str) -> str:
    if fmt == "incomplete":
        cfg = f"{folder}/cfg.json" if folder else "cfg.json"
        raise SourceError(
            f"dictionary {snapshot.pinned()}: {cfg} has no weights beside it (sae.safetensors for sparsify, "
            "sae_weights.safetensors for SAELens)"
        )
    return fmt


def _folder_files(snapshot: Snapshot, folder: str, fmt: str) -> list[str]:
    required, optional = _DICTIONARY_FILES[fmt]
    prefix = f"{folder}/" if folder else ""
    files = [prefix + f for f in required] + [prefix + f for f in optional if prefix + f in snapshot.files]
    if fmt == "sparsify" and folder:  # the run's config.json above the hookpoint folder: its ctx_len
        run_config = f"{folder.rsplit('/', 1)[0]}/config.json" if "/" in folder else "config.json"
        files += [run_config] if run_config in snapshot.files else []
    return files


def _gemma_scope_hookpoint(snapshot: Snapshot, folder: str, hookpoint: str | None) -> str:
    found = hookpoint or gemma_scope_hookpoint(f"{snapshot.repo_id}/{folder}")
    if found is None:
        raise SourceError(
            f"cannot tell which hookpoint {snapshot.repo_id}/{folder} reads (only Gemma Scope residual-stream "
            "SAEs, gemma-scope-*-res/layer_N/..., are recognised by their path): pass --hookpoint"
        )
    return found


# ---------------------------------------------------------------------------------- SAELens releases


@dataclass(frozen=True)
class SAELensRelease:
    """One release of sae-lens's directory, as its `pretrained_saes.yaml` describes it."""

    name: str
    repo_id: str
    conversion: str | None
    saes: dict[str, str]  # SAE id -> folder in the repo
    overrides: dict[str, Any]


def _saelens_directory_file() -> Path:
    """The directory of releases inside the installed sae-lens, found without importing sae-lens
    (importing it takes seconds; the file is all we read)."""
    import importlib.util

    spec = importlib.util.find_spec("sae_lens")
    if spec is None or not spec.submodule_search_locations:
        raise SourceError(
            "saelens:RELEASE/SAE_ID is looked up in sae-lens's directory of releases, and sae-lens is not "
            "installed: pip install 'autointerp[saelens]' (or pip install sae-lens)"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / "pretrained_saes.yaml"
    if not path.is_file():
        raise SourceError(f"the installed sae-lens has no directory of releases at {path}")
    return path


@cache
def _read_saelens_directory(path: Path) -> dict[str, SAELensRelease]:
    import yaml

    with path.open() as f:
        data = yaml.load(f, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    return {
        name: SAELensRelease(
            name=name,
            repo_id=entry["repo_id"],
            conversion=entry.get("conversion_func"),
            saes={str(sae["id"]): str(sae["path"]) for sae in entry.get("saes", [])},
            overrides=dict(entry.get("config_overrides") or {}),
        )
        for name, entry in data.items()
    }


def saelens_directory() -> dict[str, SAELensRelease]:
    """sae-lens's releases by name (read once per process)."""
    return _read_saelens_directory(_saelens_directory_file())


def saelens_release(spec: str) -> tuple[SAELensRelease, str]:
    """(release, folder in its repo) of `saelens:RELEASE/SAE_ID`."""
    import difflib

    body = spec.removeprefix(SAELENS_PREFIX)
    release_name, _, sae_id = body.partition("/")
    if not release_name or not sae_id:
        raise SourceError(
            f"expected saelens:RELEASE/SAE_ID, e.g. saelens:gpt2-small-res-jb/blocks.8.hook_resid_pre, got {spec!r}"
        )
    directory = saelens_directory()
    release = directory.get(release_name)
    if release is None:
        close = difflib.get_close_matches(release_name, list(directory), n=5)
        hint = f"; close: {', '.join(close)}" if close else ""
        raise SourceError(f"sae-lens has no release {release_name!r}{hint}")
    if release.conversion not in _SAELENS_FORMATS:
        raise SourceError(
            f"sae-lens release {release_name!r} is stored in a format sae-lens converts with "
            f"{release.conversion!r}, which autointerp does not read (it reads SAELens folders, sparsify "
            "folders and Gemma Scope params.npz)"
        )
    if sae_id not in release.saes:
        close = difflib.get_close_matches(sae_id, list(release.saes), n=5) or list(release.saes)[:5]
        raise SourceError(
            f"sae-lens release {release_name!r} has no SAE {sae_id!r}; it has {len(release.saes)}, "
            f"e.g. {', '.join(close)}"
        )
    return release, release.saes[sae_id]


def _saelens_source(spec: str, hookpoints: list[str], revision: str | None) -> DictionarySource:
    if len(hookpoints) > 1:
        raise SourceError(f"{spec} is one SAE; it cannot serve hookpoints {hookpoints}")
    release, folder = saelens_release(spec)
    fmt = _SAELENS_FORMATS[release.conversion]
    what = f"dictionary {spec}"

    def choose(snapshot: Snapshot) -> Snapshot:
        if _dictionary_folders(snapshot.files).get(folder) != fmt:
            needs = ", ".join(f"{folder}/{f}" for f in _DICTIONARY_FILES[fmt][0])
            raise SourceError(f"{what}: {snapshot.pinned()} has no {needs}")
        return snapshot

    snapshot = _choose(release.repo_id, revision, what, choose, named_by_user=False)
    root = snapshot.fetch(_folder_files(snapshot, folder, fmt), what)
    hookpoint = hookpoints[0] if hookpoints else None
    if fmt == "gemma_scope":
        hookpoint = _gemma_scope_hookpoint(snapshot, folder, hookpoint)
    overrides = {k: v for k, v in release.overrides.items() if k in _SAELENS_OVERRIDES}
    return DictionarySource(root / folder, hookpoint, snapshot.pinned(folder), overrides)
