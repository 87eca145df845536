"""Settings declare their defaults, checks and options once: the dataclasses check themselves, the CLI's
options and `--help` are generated from them, and importing the config costs no torch."""

from __future__ import annotations

import dataclasses
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from autointerp.cli import build_parser, config_from_args, help_text, shown_default
from autointerp.config import FROZEN, RunConfig, load_config, merge
from autointerp.errors import AutointerpError, ConfigError
from autointerp.option_table import config_from_options, options
from autointerp.scorers.classify import ClassifierSettings
from autointerp.scorers.intervention import InterventionSettings
from autointerp.scorers.registry import check_config, settings_sections
from autointerp.scorers.simulation import SimulationSettings
from autointerp.settings import CacheSettings, ExplainerSettings, SamplingSettings

ROOT = Path(__file__).resolve().parents[2]

# every option of the stage commands before the options were generated, by command: none may disappear
OPTIONS_BEFORE = {
    "cache": """model model-revision dictionary dictionary-revision hookpoint corpus text-column n-tokens neurons-k
        dtype device batch-rows seed""",
    "explain": """latents max-latents n-train n-test n-negatives min-examples train-type negatives n-train-negatives
        similar-model judge explainer judge-url judge-timeout api-key-env no-logprobs prompt-logprobs no-cache
        prices response-cache concurrency judge-concurrency show-activations token-counts best-of best-of-scorer
        explainer-style""",
    "score": """latents max-latents n-train n-test n-negatives min-examples train-type negatives n-train-negatives
        similar-model judge explainer judge-url judge-timeout api-key-env no-logprobs prompt-logprobs no-cache
        prices response-cache concurrency judge-concurrency scorers embedding-model judge-mode batch-size
        fuzz-negatives kl-target intervention-prompts controls explanations explanations-format explanations-layer""",
}
OPTIONS_BEFORE["run"] = " ".join(
    o for c in ("cache", "explain", "score") for o in OPTIONS_BEFORE[c].split() if not o.startswith("explanations")
)


def _run_python(code: str) -> str:
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    return out.stdout.strip()


def test_the_config_and_the_package_import_no_torch():
    code = (
        "import sys, tempfile\n"
        "import autointerp.config\n"
        "light = 'torch' not in sys.modules\n"
        "import autointerp\n"
        "run = autointerp.Run(tempfile.mkdtemp(), judge='smollm2', n_test=5, no_cache=True)\n"
        "print(light, 'torch' not in sys.modules, run.requested.sampling.n_test)"
    )
    assert _run_python(code) == "True True 5"


def test_every_option_users_had_is_still_there(capsys):
    for command, names in OPTIONS_BEFORE.items():
        with pytest.raises(SystemExit):
            build_parser().parse_args([command, "--help"])
        text = capsys.readouterr().out
        flags = set(re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*", text))
        missing = {"--" + n for n in names.split()} - flags
        assert not missing, (command, missing)


def test_help_shows_each_default_as_the_field_has_it(capsys, monkeypatch):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["run", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "(default: 100,000)" in text and "(default: qwen2.5-coder-1.5b)" in text and "(default: 300)" in text
    assert "300 news articles" in text and "299" not in text
    for spec in options().values():
        assert spec.field.metadata["help"], f"{spec.flag} has no help"
        default = shown_default(spec)
        if default is not None and "run" in spec.option.placement.commands:
            assert f"(default: {default})" in " ".join(help_text(spec).split())
    # the default shown is read from the field: change the field, and the help follows
    spec = options()["n_test"]
    monkeypatch.setattr(type(spec), "default", property(lambda self: 77))
    assert "(default: 77)" in help_text(spec)


def test_options_set_their_fields_and_no_field_is_named_twice():
    dotted = [spec.dotted for spec in options().values()]
    assert len(dotted) == len(set(dotted))
    args = build_parser().parse_args(
        ["run", "--out", "x", "--seed", "3", "--no-cache", "--judge-mode", "json", "--max-latents", "all"]
    )
    config, explicit = config_from_args(args)
    assert (config.cache.seed, config.sampling.seed) == (3, 3)  # one --seed fixes every draw
    assert config.response_cache is False and config.max_latents is None
    assert ClassifierSettings.of(config).mode == "json"
    assert explicit == {"cache.seed", "sampling.seed", "response_cache", "scoring.classifier.mode", "max_latents"}
    # options with no field behind them are gone: every option sets a field that exists (a scorer's, in
    # the class that owns its section)
    sections = settings_sections()
    for spec in options().values():
        head, _, rest = spec.dotted.partition(".")
        if head == "scoring":
            section, _, name = rest.partition(".")
            assert spec.owner is sections[section] and name in {f.name for f in dataclasses.fields(spec.owner)}
            continue
        obj = RunConfig()
        for part in spec.dotted.split("."):
            obj = getattr(obj, part)


def test_the_frozen_fields_are_the_ones_that_define_the_folder(capsys):
    assert FROZEN == (
        "model",
        "model_revision",
        "dictionary",
        "dictionary_revision",
        "hookpoint",
        "hookpoints",
        "corpus",
        "text_column",
        "corpus_config",
        "corpus_split",
        "corpus_revision",
        "corpus_shuffle_seed",
        "corpus_shuffle_buffer",
        "n_tokens",
        "neurons_k",
        "dtype",
        "cache",
        "sampling",
    )
    with pytest.raises(SystemExit):
        build_parser().parse_args(["run", "--help"])
    text = capsys.readouterr().out
    fixed = [title for title in re.findall(r"^(\S.*):$", text, re.M) if "fixed for a run folder" in title]
    assert fixed == ["what to cache (fixed for a run folder)", "examples (fixed for a run folder)"]
    stored = RunConfig(n_tokens=20_000)
    with pytest.raises(ConfigError, match="n_tokens: run has 20000, requested 100000"):
        merge(stored, RunConfig(), {"n_tokens"})
    assert merge(stored, RunConfig(judge="smollm2"), {"judge"}).n_tokens == 20_000


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda: SamplingSettings(negatives="hardest"), "--negatives must be one of 'random'"),
        (lambda: SamplingSettings(n_test="5"), "--n-test must be an integer, not '5'"),
        (lambda: CacheSettings(ctx_len=100, window_len=32), "must be a multiple of the window length"),
        (lambda: CacheSettings(batch_rows=0), "--batch-rows must be at least 1"),
        (lambda: ExplainerSettings(best_of=0), "--best-of must be at least 1"),
        (lambda: ExplainerSettings(style="fancy"), "--explainer-style must be one of"),
        (
            lambda: ClassifierSettings(mode="xml"),
            "--judge-mode must be one of 'auto', 'logprobs', 'text', 'slots', 'json'",
        ),
        (lambda: SimulationSettings(mode="text"), "--simulation-mode must be one of 'auto', 'logprobs', 'json'"),
        (lambda: InterventionSettings(kl_target=0), "--kl-target must be positive"),
        (lambda: InterventionSettings(method="push"), "method must be one of"),
        (lambda: RunConfig(n_tokens=0), "--n-tokens must be at least 1"),
        (lambda: RunConfig(judge_timeout=-1.0), "--judge-timeout must be positive"),
        (lambda: RunConfig(latents="3,4"), "--latents must be a list of integers or strings or None"),
        (lambda: RunConfig(dtype="int8"), "--dtype must be one of"),
        (
            lambda: RunConfig(
                explain=ExplainerSettings(style="contrastive"), sampling=SamplingSettings(n_train_negatives=0)
            ),
            "--n-train-negatives must be at least 1",
        ),
    ],
)
def test_settings_check_themselves_when_made(make, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        make()


def test_validate_checks_again_what_was_assigned_later_and_the_scorer_names():
    config = RunConfig()
    config.sampling.n_train_negatives = 0
    config.explain.style = "contrastive"
    with pytest.raises(ConfigError, match="--n-train-negatives"):
        config.validate()
    config = RunConfig()
    config.judge_concurrency = 0
    with pytest.raises(ConfigError, match="--judge-concurrency must be at least 1"):
        config.validate()
    with pytest.raises(ConfigError, match="unknown scorer"):
        check_config(RunConfig(scorers=["detection", "nope"]))
    assert RunConfig().validate() == RunConfig()


def test_the_registry_checks_each_scorers_settings_and_writes_them_out_in_full():
    config = RunConfig(scoring={"classifier": {"mode": "xml"}})  # plain values: the config cannot tell
    with pytest.raises(ConfigError, match="--judge-mode must be one of"):
        check_config(config)
    with pytest.raises(ConfigError, match=r"unknown setting scoring.classifier.mdoe; did you mean mode\?"):
        check_config(RunConfig(scoring={"classifier": {"mdoe": "json"}}))
    with pytest.raises(ConfigError, match="no settings section 'clasifier' .did you mean classifier"):
        check_config(RunConfig(scoring={"clasifier": {}}))
    config = check_config(RunConfig(scoring={"fuzzing": {"negatives": "misplaced"}}))
    assert set(config.scoring) == set(settings_sections())
    assert config.scoring["fuzzing"] == {"negatives": "misplaced"}
    assert config.scoring["classifier"] == dataclasses.asdict(ClassifierSettings())


def test_a_scorer_section_is_given_whole_as_an_object_or_by_its_options():
    config, explicit = config_from_options(
        {"classifier": ClassifierSettings(mode="json", batch_size=3), "judge_mode": "slots", "kl_target": 0.25}
    )
    assert (ClassifierSettings.of(config).mode, ClassifierSettings.of(config).batch_size) == ("slots", 3)
    assert InterventionSettings.of(config).kl_target == 0.25
    assert {"scoring.classifier.mode", "scoring.classifier.batch_size", "scoring.intervention.kl_target"} <= explicit
    with pytest.raises(ConfigError, match="classifier must be a ClassifierSettings"):
        config_from_options({"classifier": SimulationSettings()})


def test_a_config_json_written_before_scorers_owned_their_settings_still_loads(tmp_path):
    """The keys of older config.json files (classifier and intervention at the top, fuzz_negatives and
    embedding_model as run fields) read into the sections of the scorers that own them now."""
    old = json.loads((ROOT / "tests" / "fixtures" / "config_before_scoring_sections.json").read_text())
    assert {"classifier", "intervention", "fuzz_negatives", "embedding_model"} <= set(old["config"])
    (tmp_path / "config.json").write_text(json.dumps(old))
    config, resolved = load_config(tmp_path / "config.json")
    assert resolved["num_latents"] == old["resolved"]["num_latents"]
    assert ClassifierSettings.of(config).mode == "slots" and ClassifierSettings.of(config).batch_size == 4
    assert InterventionSettings.of(config).kl_target == 0.25
    from autointerp.scorers.embedding import EmbeddingSettings
    from autointerp.scorers.fuzzing import FuzzingSettings

    assert FuzzingSettings.of(config).negatives == "misplaced"
    assert EmbeddingSettings.of(config).model == "/models/e5"
    check_config(config)  # and it passes today's checks
    # written again, it has the new form, and reads back the same
    assert "classifier" not in config.to_dict() and RunConfig.from_dict(config.to_dict()) == config


def test_unknown_options_are_named_with_the_closest_ones():
    with pytest.raises(ConfigError, match="unknown setting 'n_tset'; did you mean n_test"):
        config_from_options({"n_tset": 5})
    config, explicit = config_from_options({"sampling": SamplingSettings(n_test=7), "n_train": 3})
    assert (config.sampling.n_test, config.sampling.n_train) == (7, 3)
    assert explicit == {"sampling", "sampling.n_train"}


def test_a_config_json_round_trips_and_a_damaged_one_is_a_config_error(tmp_path):
    from autointerp.config import save_config

    config = RunConfig(judge="smollm2", sampling=SamplingSettings(n_test=5), latents=[1, 2])
    save_config(tmp_path / "config.json", config, {"n_tokens": 10})
    loaded, resolved = load_config(tmp_path / "config.json")
    assert loaded == config and resolved == {"n_tokens": 10}
    data = json.loads((tmp_path / "config.json").read_text())
    data["config"]["sampling"]["n_test"] = "many"
    (tmp_path / "config.json").write_text(json.dumps(data))
    with pytest.raises(ConfigError, match="unreadable run config .*--n-test must be an integer"):
        load_config(tmp_path / "config.json")


def test_every_settings_field_says_what_it_is():
    for cls in (
        RunConfig,
        CacheSettings,
        SamplingSettings,
        ExplainerSettings,
        ClassifierSettings,
        SimulationSettings,
        InterventionSettings,
    ):
        for f in dataclasses.fields(cls):
            nested = isinstance(f.default_factory, type) and dataclasses.is_dataclass(f.default_factory)
            assert nested or f.metadata.get("help"), f"{cls.__name__}.{f.name} has no help"


def test_every_error_class_is_an_autointerp_error_or_internal():
    """Errors a user can act on derive from AutointerpError (the CLI catches that base only); the few
    others are caught inside the run and recorded, or (the service's) turned into an HTTP answer, never
    shown as a command's error."""
    import importlib
    import inspect

    internal = {"NotEnoughExamples", "ExplanationFailed"}
    http_answers = {"ApiError", "BadName", "NotFound", "RequestError", "IdempotencyConflict", "QueueFull"}
    found = {}
    for path in sorted((ROOT / "autointerp").rglob("*.py")):
        name = ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
        mod = importlib.import_module(name)
        for name, cls in inspect.getmembers(mod, inspect.isclass):
            if cls.__module__ == mod.__name__ and issubclass(cls, Exception):
                found[name] = cls
    assert {"ConfigError", "CorpusError", "CacheError", "JudgeError", "PublishError", "ReportError"} <= set(found)
    wrong = [
        n
        for n, cls in found.items()
        if n not in internal | http_answers and not n.startswith("_") and not issubclass(cls, AutointerpError)
    ]
    assert not wrong
    assert http_answers <= set(found)  # the exceptions named here still exist
