"""The dictionary loader against the real libraries that write the checkpoints.

SAELens and sparsify are optional (the `test` extra installs them); their tests skip with a reason
when the library is missing. Every other test here is fast and uses hand-made files.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from helpers.tiny_subjects import gemma_scope_params, make_tiny_llama, write_sparsify_sae

from autointerp.subjects.attach import open_dictionary
from autointerp.subjects.dictionaries import (
    DEFAULT_DICTIONARY,
    DictionaryError,
    Encoder,
    load_dictionary,
    peek_num_latents,
)
from autointerp.subjects.hookpoints import HookpointError, capture, resolve

D_IN, D_SAE = 16, 24
ATOL = 1e-5


def _inputs(seed: int = 1) -> torch.Tensor:
    """[batch, seq, d_in] with an offset so b_dec and the normalisations matter."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn(3, 5, D_IN, generator=g) * 2 + 0.5


def _assert_same(ours: torch.Tensor, theirs: torch.Tensor) -> None:
    assert ours.shape == theirs.shape
    torch.testing.assert_close(ours, theirs.float(), atol=ATOL, rtol=0)
    assert (theirs > 0).any(), "degenerate test: no latent fires"
    assert (theirs == 0).any(), "degenerate test: every latent fires"


# ---------------------------------------------------------------- SAELens


@pytest.fixture(scope="module")
def sae_lens():
    return pytest.importorskip("sae_lens", reason="sae-lens is not installed (pip install -e '.[test]')")


def _randomize(sae, seed: int = 0) -> None:
    """Small random weights, non-trivial biases and thresholds, in place."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in sae.named_parameters():
            if name == "W_enc":
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)
            elif name == "W_dec":  # norms away from 1, so decoder-norm rescaling shows
                p.copy_(torch.randn(p.shape, generator=g) * (0.2 + torch.rand(p.shape[0], 1, generator=g)))
            elif name == "threshold":
                p.copy_(torch.rand(p.shape, generator=g) * 0.8)
            else:  # b_enc, b_dec, b_gate, b_mag, r_mag
                p.copy_(torch.randn(p.shape, generator=g) * 0.3)


def _metadata(sae_lens, hook_name: str):
    from sae_lens.saes.sae import SAEMetadata

    return SAEMetadata(model_name="tiny-llama", hook_name=hook_name)


def _saelens_sae(sae_lens, arch: str, hook_name: str = "blocks.1.hook_resid_post", **cfg):
    classes = {
        "standard": (sae_lens.StandardSAE, sae_lens.StandardSAEConfig),
        "topk": (sae_lens.TopKSAE, sae_lens.TopKSAEConfig),
        "jumprelu": (sae_lens.JumpReLUSAE, sae_lens.JumpReLUSAEConfig),
        "gated": (sae_lens.GatedSAE, sae_lens.GatedSAEConfig),
    }
    sae_cls, cfg_cls = classes[arch]
    if arch == "topk":
        cfg.setdefault("k", 4)
    sae = sae_cls(cfg_cls(d_in=D_IN, d_sae=D_SAE, metadata=_metadata(sae_lens, hook_name), **cfg))
    _randomize(sae)
    return sae.eval()


@pytest.mark.parametrize("arch", ["standard", "topk", "jumprelu", "gated"])
@pytest.mark.parametrize("apply_b_dec", [True, False])
def test_saelens_encode_matches(sae_lens, tmp_path, arch, apply_b_dec):
    sae = _saelens_sae(sae_lens, arch, apply_b_dec_to_input=apply_b_dec)
    sae.save_model(tmp_path / "sae")
    assert (tmp_path / "sae" / "sae_weights.safetensors").is_file()

    enc = load_dictionary(tmp_path / "sae")
    assert enc.format == "saelens"
    assert enc.kind == {"standard": "relu"}.get(arch, arch)
    assert (enc.d_in, enc.num_latents) == (D_IN, D_SAE)
    assert enc.hookpoint == "blocks.1.hook_resid_post" and enc.side == "output"
    assert (enc.pre_bias is not None) == apply_b_dec
    if arch == "topk":
        assert enc.k == 4
    x = _inputs()
    with torch.no_grad():
        theirs = sae.encode(x)
    _assert_same(enc.encode(x), theirs)
    # the decoder rows are the directions latents write
    torch.testing.assert_close(enc.decoder_direction(3), sae.W_dec[3].detach())


def test_saelens_apply_b_dec_changes_encoding(sae_lens, tmp_path):
    """Both settings of apply_b_dec_to_input are read, not defaulted: they encode differently."""
    encs = []
    for flag in (True, False):
        _saelens_sae(sae_lens, "standard", apply_b_dec_to_input=flag).save_model(tmp_path / str(flag))
        encs.append(load_dictionary(tmp_path / str(flag)))
    x = _inputs()
    assert not torch.allclose(encs[0].encode(x), encs[1].encode(x))


@pytest.mark.parametrize("rescale", [True, False])
def test_saelens_topk_rescale_by_decoder_norm(sae_lens, tmp_path, rescale):
    sae = _saelens_sae(sae_lens, "topk", rescale_acts_by_decoder_norm=rescale)
    sae.save_model(tmp_path / "sae")
    x = _inputs()
    with torch.no_grad():
        theirs = sae.encode(x)
    _assert_same(load_dictionary(tmp_path / "sae").encode(x), theirs)


@pytest.mark.parametrize("normalize", ["constant_norm_rescale", "layer_norm"])
def test_saelens_runtime_normalisation(sae_lens, tmp_path, normalize):
    sae = _saelens_sae(sae_lens, "standard", normalize_activations=normalize)
    sae.save_model(tmp_path / "sae")
    enc = load_dictionary(tmp_path / "sae")
    assert enc.normalize == normalize
    x = _inputs()
    with torch.no_grad():
        theirs = sae.encode(x)
    _assert_same(enc.encode(x), theirs)


def test_saelens_expected_average_only_in(sae_lens, tmp_path):
    """An unfolded training checkpoint: the factor lives in activation_scaler.json beside it, and
    encoding must equal both SAELens on scaled inputs and the SAE with the factor folded in."""
    from sae_lens.training.activation_scaler import ActivationScaler

    sae = _saelens_sae(sae_lens, "topk", normalize_activations="expected_average_only_in")
    sae.save_model(tmp_path / "sae")
    with pytest.raises(DictionaryError, match="activation_scaler.json"):
        load_dictionary(tmp_path / "sae")
    scaler = ActivationScaler(scaling_factor=2.5)
    scaler.save(str(tmp_path / "sae" / "activation_scaler.json"))
    enc = load_dictionary(tmp_path / "sae")
    x = _inputs()
    with torch.no_grad():
        theirs = sae.encode(scaler.scale(x))
        sae.fold_activation_norm_scaling_factor(2.5)
        folded = sae.encode(x)
    _assert_same(enc.encode(x), theirs)
    _assert_same(enc.encode(x), folded)


def test_saelens_covariance_whitening(sae_lens, tmp_path):
    from sae_lens.training.activation_scaler import ActivationScaler, ActivationWhitening

    g = torch.Generator().manual_seed(3)
    matrix = torch.eye(D_IN) + 0.1 * torch.randn(D_IN, D_IN, generator=g)
    whitening = ActivationWhitening(
        mean=torch.randn(D_IN, generator=g), matrix=matrix, inverse_matrix=torch.linalg.inv(matrix)
    )
    sae = _saelens_sae(sae_lens, "jumprelu", normalize_activations="covariance_whitening")
    sae.save_model(tmp_path / "sae")
    with pytest.raises(DictionaryError, match="activation_whitening.safetensors"):
        load_dictionary(tmp_path / "sae")
    scaler = ActivationScaler(whitening=whitening)
    scaler.save(str(tmp_path / "sae" / "activation_scaler.json"))
    enc = load_dictionary(tmp_path / "sae")
    x = _inputs()
    with torch.no_grad():
        theirs = sae.encode(scaler.scale(x))
        sae.fold_activation_whitening(whitening.mean, whitening.matrix, whitening.inverse_matrix)
        folded = sae.encode(x)
    _assert_same(enc.encode(x), theirs)
    _assert_same(enc.encode(x), folded)


@pytest.mark.parametrize("arch", ["topk", "batchtopk"])
def test_saelens_training_checkpoints(sae_lens, tmp_path, arch):
    """What SAELens's trainer writes mid-run (`save_model` of the training SAE: BatchTopK with its
    `topk_threshold`, TopK with unfolded decoder norms) encodes like the inference SAE it becomes."""
    cls, cfg_cls = {
        "topk": (sae_lens.TopKTrainingSAE, sae_lens.TopKTrainingSAEConfig),
        "batchtopk": (sae_lens.BatchTopKTrainingSAE, sae_lens.BatchTopKTrainingSAEConfig),
    }[arch]
    sae = cls(cfg_cls(d_in=D_IN, d_sae=D_SAE, k=4, metadata=_metadata(sae_lens, "blocks.0.hook_resid_post")))
    _randomize(sae)
    if arch == "batchtopk":
        sae.topk_threshold = torch.tensor(0.4, dtype=torch.double)
    sae.save_model(tmp_path / "checkpoint")
    sae.save_inference_model(tmp_path / "final")
    assert json.loads((tmp_path / "checkpoint" / "cfg.json").read_text())["architecture"] == arch
    inference = sae_lens.SAE.load_from_disk(tmp_path / "final").eval()
    x = _inputs()
    with torch.no_grad():
        theirs = inference.encode(x)
    for folder in ("checkpoint", "final"):
        enc = load_dictionary(tmp_path / folder)
        assert enc.kind == ("jumprelu" if arch == "batchtopk" else "topk")
        _assert_same(enc.encode(x), theirs)


def test_saelens_hook_name_from_metadata(sae_lens, tmp_path):
    _saelens_sae(sae_lens, "standard", hook_name="blocks.1.hook_resid_pre").save_model(tmp_path / "sae")
    cfg = json.loads((tmp_path / "sae" / "cfg.json").read_text())
    assert cfg["metadata"]["hook_name"] == "blocks.1.hook_resid_pre"  # where SAELens 6 keeps it
    enc = load_dictionary(tmp_path / "sae")
    assert enc.hookpoint == "blocks.1.hook_resid_pre" and enc.side == "input"
    # an explicit --hookpoint wins over the metadata
    assert load_dictionary(tmp_path / "sae", "blocks.0.hook_resid_post").hookpoint == "blocks.0.hook_resid_post"


def test_saelens_open_dictionary_reads_the_hook_it_names(sae_lens, tmp_path):
    """A resid_pre SAE must read the *input* of the block, not be forced to its output."""
    model = make_tiny_llama(layers=3)
    _saelens_sae(sae_lens, "standard", hook_name="blocks.1.hook_resid_pre").save_model(tmp_path / "sae")
    enc, hp = open_dictionary(model, str(tmp_path / "sae"))
    assert (hp.module_path, hp.side) == ("layers.1", "input")
    ids = torch.randint(0, 96, (2, 6), generator=torch.Generator().manual_seed(0))
    hidden = model(ids, output_hidden_states=True).hidden_states
    torch.testing.assert_close(capture(model, hp, ids), hidden[1])


def test_saelens_pre6_config(tmp_path):
    """Pre-6 configs: hook_point, activation_fn_str/activation_fn_kwargs, boolean normalisation,
    apply_b_dec_to_input defaulting to True as in SAELens."""
    from safetensors.torch import save_file

    g = torch.Generator().manual_seed(0)
    folder = tmp_path / "old"
    folder.mkdir()
    (folder / "cfg.json").write_text(
        json.dumps(
            {
                "d_in": D_IN,
                "d_sae": D_SAE,
                "hook_point": "blocks.0.hook_resid_post",
                "activation_fn_str": "topk",
                "activation_fn_kwargs": {"k": 3},
                "normalize_activations": False,
            }
        )
    )
    save_file(
        {
            "W_enc": torch.randn(D_IN, D_SAE, generator=g),
            "W_dec": torch.randn(D_SAE, D_IN, generator=g),
            "b_enc": torch.randn(D_SAE, generator=g),
            "b_dec": torch.randn(D_IN, generator=g),
        },
        str(folder / "sae_weights.safetensors"),
    )
    enc = load_dictionary(folder)
    assert peek_num_latents(folder) == enc.num_latents == D_SAE  # from the header alone
    assert (enc.kind, enc.k, enc.hookpoint, enc.normalize) == ("topk", 3, "blocks.0.hook_resid_post", "none")
    assert enc.pre_bias is not None
    assert int((enc.encode(_inputs()) > 0).sum(-1).max()) <= 3


# ---------------------------------------------------------------- sparsify


@pytest.fixture(scope="module")
def sparsify():
    return pytest.importorskip("sparsify", reason="eai-sparsify is not installed (pip install -e '.[test]')")


def _sparse_coder(sparsify, *, transcode: bool = False, activation: str = "topk", k: int = 4, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    cfg = sparsify.SparseCoderConfig(activation=activation, num_latents=D_SAE, k=k, transcode=transcode)
    coder = sparsify.SparseCoder(D_IN, cfg)
    with torch.no_grad():
        coder.encoder.weight.copy_(torch.randn(D_SAE, D_IN, generator=g) * 0.5)
        coder.encoder.bias.copy_(torch.randn(D_SAE, generator=g) * 0.3)
        coder.W_dec.copy_(torch.randn(D_SAE, D_IN, generator=g))
        coder.b_dec.copy_(torch.randn(D_IN, generator=g) * 0.3)
    return coder


def _sparsify_dense(coder, x: torch.Tensor) -> torch.Tensor:
    """sparsify's encode (top-k values and indices, for [N, d_in] inputs) scattered into dense latents."""
    with torch.no_grad():
        top_acts, top_indices, _ = coder.encode(x.reshape(-1, x.shape[-1]))
    dense = torch.zeros(top_acts.shape[0], coder.num_latents).scatter_(-1, top_indices, top_acts.float())
    return dense.reshape(*x.shape[:-1], -1)


@pytest.mark.parametrize("activation", ["topk", "groupmax"])
def test_sparsify_encode_matches(sparsify, tmp_path, activation):
    coder = _sparse_coder(sparsify, activation=activation)
    coder.save_to_disk(tmp_path / "run" / "layers.1")
    enc = load_dictionary(tmp_path / "run")  # a run folder with one hookpoint
    assert (enc.format, enc.kind, enc.k, enc.hookpoint, enc.side) == ("sparsify", activation, 4, "layers.1", "output")
    assert (enc.d_in, enc.num_latents) == (D_IN, D_SAE)
    x = _inputs()
    theirs = _sparsify_dense(coder, x)
    _assert_same(enc.encode(x), theirs)
    assert int((enc.encode(x) > 0).sum(-1).max()) <= 4
    # sparsify's own decode of its top-k equals ours from the dense latents
    with torch.no_grad():
        top_acts, top_indices, _ = coder.encode(x.reshape(-1, D_IN))
        recon = coder.decode(top_acts, top_indices)
    ours = enc.encode(x).reshape(-1, D_SAE) @ enc.W_dec + enc.b_dec
    torch.testing.assert_close(ours, recon, atol=1e-4, rtol=0)


def test_sparsify_transcoder(sparsify, tmp_path):
    coder = _sparse_coder(sparsify, transcode=True, seed=1)
    coder.save_to_disk(tmp_path / "run" / "layers.0.mlp")
    # a second hookpoint in the run: the name must be picked
    _sparse_coder(sparsify, seed=2).save_to_disk(tmp_path / "run" / "layers.1")
    enc = load_dictionary(tmp_path / "run", "layers.0.mlp")
    assert enc.side == "input" and enc.pre_bias is None
    x = _inputs()
    _assert_same(enc.encode(x), _sparsify_dense(coder, x))
    # on the model, a transcoder reads the MLP's input (the post-attention norm's output)
    _, hp = open_dictionary(make_tiny_llama(), str(tmp_path / "run"), "layers.0.mlp")
    assert (hp.module_path, hp.side) == ("layers.0.mlp", "input")


def test_sparsify_roundtrip_with_its_loader(sparsify, tmp_path):
    """Our test writer (helpers/tiny_subjects.py) produces files sparsify itself loads, with the same encoding."""
    folder = write_sparsify_sae(tmp_path / "sae" / "layers.1")
    coder = sparsify.SparseCoder.load_from_disk(folder)
    x = _inputs()
    _assert_same(load_dictionary(folder).encode(x), _sparsify_dense(coder, x))


# ---------------------------------------------------------------- errors (hand-made files)


def test_missing_weights_names_file(tmp_path):
    folder = write_sparsify_sae(tmp_path / "run" / "layers.1")
    (folder / "sae.safetensors").unlink()
    with pytest.raises(DictionaryError, match=rf"missing dictionary weights: {folder / 'sae.safetensors'}"):
        load_dictionary(tmp_path / "run")
    with pytest.raises(DictionaryError, match=r"sae\.safetensors"):  # the hookpoint folder itself
        load_dictionary(folder)


def test_missing_saelens_weights_names_file(tmp_path):
    (tmp_path / "cfg.json").write_text(json.dumps({"d_in": 2, "d_sae": 3}))
    with pytest.raises(DictionaryError, match=r"sae_weights\.safetensors"):
        load_dictionary(tmp_path)


def test_truncated_weights_names_file(tmp_path):
    folder = write_sparsify_sae(tmp_path / "layers.1")
    weights = folder / "sae.safetensors"
    weights.write_bytes(weights.read_bytes()[:200])
    with pytest.raises(DictionaryError, match=rf"corrupt dictionary weights {weights}"):
        load_dictionary(folder)


def test_garbage_weights_names_file(tmp_path):
    folder = write_sparsify_sae(tmp_path / "layers.1")
    (folder / "sae.safetensors").write_bytes(b"not a safetensors file at all")
    with pytest.raises(DictionaryError, match=r"corrupt dictionary weights .*sae\.safetensors"):
        load_dictionary(folder)


def test_cfg_not_json_names_file(tmp_path):
    folder = write_sparsify_sae(tmp_path / "layers.1")
    (folder / "cfg.json").write_text("{not json")
    with pytest.raises(DictionaryError, match=rf"corrupt dictionary config {folder / 'cfg.json'}"):
        load_dictionary(folder)


def test_saelens_cfg_not_json_names_file(tmp_path):
    from safetensors.torch import save_file

    (tmp_path / "cfg.json").write_text("[1, 2")
    save_file({"W_enc": torch.zeros(2, 3)}, str(tmp_path / "sae_weights.safetensors"))
    with pytest.raises(DictionaryError, match=r"corrupt dictionary config .*cfg\.json"):
        load_dictionary(tmp_path)


def test_cfg_d_in_disagrees_with_weights(tmp_path):
    folder = write_sparsify_sae(tmp_path / "layers.1", d_in=16)
    cfg = json.loads((folder / "cfg.json").read_text())
    (folder / "cfg.json").write_text(json.dumps({**cfg, "d_in": 12}))
    with pytest.raises(DictionaryError) as e:
        load_dictionary(folder)
    assert "16" in str(e.value) and "12" in str(e.value) and "sae.safetensors" in str(e.value)


def test_two_hookpoints_need_a_choice(tmp_path):
    write_sparsify_sae(tmp_path / "run" / "layers.0")
    write_sparsify_sae(tmp_path / "run" / "layers.1")
    with pytest.raises(DictionaryError, match=r"--hookpoint.*\['layers\.0', 'layers\.1'\]"):
        load_dictionary(tmp_path / "run")
    assert load_dictionary(tmp_path / "run", "layers.0").hookpoint == "layers.0"


def test_unknown_hookpoint_lists_available(tmp_path):
    write_sparsify_sae(tmp_path / "run" / "layers.0")
    write_sparsify_sae(tmp_path / "run" / "layers.1")
    with pytest.raises(DictionaryError, match=r"no hookpoint 'layers\.7'.*\['layers\.0', 'layers\.1'\]"):
        load_dictionary(tmp_path / "run", "layers.7")


def test_open_dictionary_width_mismatch(tiny_llama, tmp_path):
    write_sparsify_sae(tmp_path / "run" / "layers.1", d_in=12)
    with pytest.raises(DictionaryError) as e:
        open_dictionary(tiny_llama, str(tmp_path / "run"))
    assert "d_in=12" in str(e.value) and "width 16" in str(e.value)


def test_open_dictionary_fits(tiny_llama, tiny_sae):
    enc, hp = open_dictionary(tiny_llama, str(tiny_sae.parent))
    assert (enc.d_in, hp.module_path, hp.side) == (16, "layers.1", "output")


# ---------------------------------------------------------------- hookpoints


def test_wrong_hookpoint_lists_valid_names(tiny_llama):
    with pytest.raises(HookpointError) as e:
        resolve(tiny_llama, "layers.99")
    msg = str(e.value)
    assert "layers.99" in msg and "layers.0" in msg and "layers.1" in msg and "hook_resid_post" in msg


def test_wrong_hookpoint_reported_before_the_dictionary_is_read(tiny_llama, tmp_path):
    with pytest.raises(HookpointError, match="valid hookpoints"):
        open_dictionary(tiny_llama, str(tmp_path / "missing"), "layers.99")


@pytest.mark.parametrize(
    "name, module_path, side",
    [
        ("blocks.1.hook_resid_post", "layers.1", "output"),
        ("blocks.1.hook_resid_pre", "layers.1", "input"),
        ("blocks.0.mlp.hook_post", "layers.0.mlp.down_proj", "input"),
        ("blocks.0.hook_mlp_out", "layers.0.mlp", "output"),
        ("blocks.0.hook_attn_out", "layers.0.self_attn", "output"),
        ("blocks.0.hook_resid_mid", "layers.0.post_attention_layernorm", "input"),
        ("blocks.0.hook_mlp_in", "layers.0.post_attention_layernorm", "input"),  # before ln2, as in TL
        ("layers.1", "layers.1", "output"),
        ("model.layers.1.mlp", "layers.1.mlp", "output"),
    ],
)
def test_transformerlens_names(tiny_llama, name, module_path, side):
    hp = resolve(tiny_llama, name)
    assert (hp.module_path, hp.side) == (module_path, side)


def test_capture_matches_hidden_states():
    model = make_tiny_llama(layers=3)
    ids = torch.randint(0, 96, (2, 9), generator=torch.Generator().manual_seed(0))
    hidden = model(ids, output_hidden_states=True).hidden_states
    torch.testing.assert_close(capture(model, resolve(model, "blocks.1.hook_resid_pre"), ids), hidden[1])
    torch.testing.assert_close(capture(model, resolve(model, "layers.1"), ids), hidden[2])
    torch.testing.assert_close(capture(model, resolve(model, "blocks.1.hook_resid_post"), ids), hidden[2])
    # HF's last hidden_states entry has the final norm applied; the hookpoint is the block's output
    last = capture(model, resolve(model, "layers.2"), ids)
    torch.testing.assert_close(model.model.norm(last), hidden[3])


def test_capture_on_the_two_layer_fixture(tiny_llama):
    ids = torch.randint(0, 96, (2, 9), generator=torch.Generator().manual_seed(1))
    hidden = tiny_llama(ids, output_hidden_states=True).hidden_states
    torch.testing.assert_close(capture(tiny_llama, resolve(tiny_llama, "blocks.1.hook_resid_pre"), ids), hidden[1])
    layer1 = capture(tiny_llama, resolve(tiny_llama, "layers.1"), ids)
    torch.testing.assert_close(tiny_llama.model.norm(layer1), hidden[2])


def test_capture_mlp_in_and_mid():
    """hook_resid_mid / hook_mlp_in are the residual before the MLP's norm; the MLP reads its output."""
    model = make_tiny_llama(layers=2)
    ids = torch.randint(0, 96, (1, 7), generator=torch.Generator().manual_seed(2))
    mid = capture(model, resolve(model, "blocks.0.hook_mlp_in"), ids)
    mlp_input = capture(model, resolve(model, "layers.0.mlp", side="input"), ids)
    torch.testing.assert_close(model.model.layers[0].post_attention_layernorm(mid), mlp_input)
    torch.testing.assert_close(capture(model, resolve(model, "blocks.0.hook_resid_mid"), ids), mid)


# ---------------------------------------------------------------- neurons


def test_neurons_dictionary(tiny_llama):
    enc, hp = open_dictionary(tiny_llama, "neurons", "layers.1", neurons_k=4)
    mlp = tiny_llama.model.layers[1].mlp
    assert isinstance(enc, Encoder) and enc.format == "neurons"
    assert (hp.module_path, hp.side) == ("layers.1.mlp.down_proj", "input")
    assert enc.d_in == enc.num_latents == tiny_llama.config.intermediate_size == 32
    torch.testing.assert_close(enc.decoder_direction(5), mlp.down_proj.weight[:, 5].float())
    ids = torch.randint(0, 96, (2, 8), generator=torch.Generator().manual_seed(0))
    acts = capture(tiny_llama, hp, ids)
    with torch.inference_mode():  # the neurons are act(gate) * up of the MLP's input
        mlp_in = capture(tiny_llama, resolve(tiny_llama, "layers.1.mlp", side="input"), ids)
        torch.testing.assert_close(acts, mlp.act_fn(mlp.gate_proj(mlp_in)) * mlp.up_proj(mlp_in))
    latents = enc.encode(acts)
    assert latents.shape == (2, 8, 32)
    assert int((latents > 0).sum(-1).max()) <= 4
    assert (latents >= 0).all()
    # the kept values are the neurons' own (positive) activations
    kept = latents > 0
    torch.testing.assert_close(latents[kept], acts[kept])


def test_neurons_via_tl_name(tiny_llama):
    _, hp = open_dictionary(tiny_llama, "neurons", "blocks.0.mlp.hook_post")
    assert hp.module_path == "layers.0.mlp.down_proj"
    with pytest.raises(DictionaryError, match="--hookpoint"):
        open_dictionary(tiny_llama, "neurons")


def test_default_paths_are_not_neurons():
    with pytest.raises(DictionaryError, match="open_dictionary"):
        load_dictionary("neurons")


def test_not_a_dictionary(tmp_path):
    with pytest.raises(DictionaryError, match="not found"):
        load_dictionary(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DictionaryError, match="is not a dictionary"):
        load_dictionary(tmp_path / "empty")


def test_saelens_unknown_architecture(tmp_path):
    from safetensors.torch import save_file

    (tmp_path / "cfg.json").write_text(
        json.dumps(
            {"d_in": 2, "d_sae": 3, "architecture": "transcoder", "metadata": {"hook_name": "blocks.0.hook_resid_post"}}
        )
    )
    save_file(
        {"W_enc": torch.zeros(2, 3), "W_dec": torch.zeros(3, 2), "b_dec": torch.zeros(2), "b_enc": torch.zeros(3)},
        str(tmp_path / "sae_weights.safetensors"),
    )
    with pytest.raises(DictionaryError, match="'transcoder' is not supported"):
        load_dictionary(tmp_path)


# ---------------------------------------------------------------- decoding (what steering uses)


@pytest.mark.parametrize(
    "arch,normalize",
    [
        ("standard", "none"),
        ("gated", "none"),
        ("topk", "none"),
        ("standard", "constant_norm_rescale"),
        ("jumprelu", "layer_norm"),
    ],
)
def test_saelens_decode_matches(sae_lens, tmp_path, arch, normalize):
    """decode(encode(x), x) is SAELens's reconstruction, run-time normalisation undone as SAELens does."""
    sae = _saelens_sae(sae_lens, arch, normalize_activations=normalize)
    sae.save_model(tmp_path / "sae")
    enc = load_dictionary(tmp_path / "sae")
    x = _inputs()
    with torch.no_grad():
        theirs = sae.decode(sae.encode(x))
    torch.testing.assert_close(enc.decode(enc.encode(x), x), theirs.float(), atol=ATOL, rtol=0)


def test_saelens_decode_of_unfolded_checkpoints_is_in_model_units(sae_lens, tmp_path):
    """An unfolded scaling factor or whitening: the reconstruction equals the folded SAE's, in the model's units."""
    from sae_lens.training.activation_scaler import ActivationScaler, ActivationWhitening

    g = torch.Generator().manual_seed(3)
    matrix = torch.eye(D_IN) + 0.1 * torch.randn(D_IN, D_IN, generator=g)
    whitening = ActivationWhitening(
        mean=torch.randn(D_IN, generator=g), matrix=matrix, inverse_matrix=torch.linalg.inv(matrix)
    )
    cases = {
        "expected_average_only_in": ActivationScaler(scaling_factor=2.5),
        "covariance_whitening": ActivationScaler(whitening=whitening),
    }
    x = _inputs()
    for normalize, scaler in cases.items():
        sae = _saelens_sae(sae_lens, "standard", normalize_activations=normalize)
        sae.save_model(tmp_path / normalize)
        scaler.save(str(tmp_path / normalize / "activation_scaler.json"))
        enc = load_dictionary(tmp_path / normalize)
        with torch.no_grad():
            if normalize == "covariance_whitening":
                sae.fold_activation_whitening(whitening.mean, whitening.matrix, whitening.inverse_matrix)
            else:
                sae.fold_activation_norm_scaling_factor(2.5)
            folded = sae.decode(sae.encode(x))
        torch.testing.assert_close(enc.decode(enc.encode(x), x), folded.float(), atol=1e-4, rtol=1e-4)


def test_neurons_decode_is_the_identity_and_transcoders_say_so(tiny_llama, tmp_path):
    enc = open_dictionary(tiny_llama, "neurons", "layers.1")[0]
    z = torch.relu(torch.randn(3, enc.d_in))
    torch.testing.assert_close(enc.decode(z, z), z)
    assert not enc.transcoder
    tc = load_dictionary(write_sparsify_sae(tmp_path / "tc" / "layers.1.mlp", transcode=True))
    assert tc.transcoder and tc.side == "input"


def test_gemma_scope_npz_encodes_as_jumprelu_and_reads_its_hookpoint_from_the_path(tmp_path):
    params = gemma_scope_params()
    folder = tmp_path / "gemma-scope-2b-pt-res" / "layer_1" / "width_16k" / "average_l0_5"
    folder.mkdir(parents=True)
    np.savez(folder / "params.npz", **params)
    encoder = load_dictionary(folder)
    assert (encoder.format, encoder.kind, encoder.hookpoint, encoder.num_latents) == (
        "gemma_scope",
        "jumprelu",
        "layers.1",
        24,
    )

    x = np.random.default_rng(1).normal(size=(7, 16)).astype(np.float32)
    pre = x @ params["W_enc"] + params["b_enc"]  # Gemma Scope's encoder: no b_dec subtracted first
    expected = np.where(pre > params["threshold"], np.maximum(pre, 0), 0)
    got = encoder.encode(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
    assert 0 < (got > 0).mean() < 1
    np.testing.assert_allclose(
        encoder.decode(torch.from_numpy(got), torch.from_numpy(x)).numpy(),
        got @ params["W_dec"] + params["b_dec"],
        rtol=1e-5,
        atol=1e-5,
    )
    assert load_dictionary(folder / "params.npz", "layers.0").hookpoint == "layers.0"  # the user's name wins


def test_gemma_scope_npz_refuses_pickles_and_names_bad_files(tmp_path):
    mlp = tmp_path / "gemma-scope-2b-pt-mlp" / "layer_3"
    mlp.mkdir(parents=True)
    np.savez(mlp / "params.npz", **gemma_scope_params())
    with pytest.raises(DictionaryError, match="cannot tell which hookpoint .*pass --hookpoint"):
        load_dictionary(mlp)
    pickled = tmp_path / "pickled"
    pickled.mkdir()
    np.savez(pickled / "params.npz", **gemma_scope_params(), extra=np.array([{"a": 1}], dtype=object))
    with pytest.raises(DictionaryError, match="only pickle can read; refused"):
        load_dictionary(pickled, "layers.1")
    missing = tmp_path / "missing"
    missing.mkdir()
    np.savez(missing / "params.npz", **{k: v for k, v in gemma_scope_params().items() if k != "threshold"})
    with pytest.raises(DictionaryError, match=r"params.npz lacks tensor\(s\) \['threshold'\]"):
        load_dictionary(missing, "layers.1")


def test_the_number_of_latents_is_read_from_the_header_alone(tmp_path):
    run = tmp_path / "run"
    write_sparsify_sae(run / "layers.1", num_latents=40)
    write_sparsify_sae(run / "layers.2", num_latents=48)
    assert peek_num_latents(run / "layers.1") == 40 and peek_num_latents(run, "layers.2") == 48
    assert peek_num_latents(run) is None  # two hookpoints and none named: the loader says which exist
    assert peek_num_latents("default") == load_dictionary(DEFAULT_DICTIONARY, "layers.3").num_latents == 4608
    assert peek_num_latents("neurons") is None and peek_num_latents(tmp_path / "nope") is None
    (run / "layers.1" / "sae.safetensors").write_bytes(b"\x00garbage")
    assert peek_num_latents(run / "layers.1") is None  # a broken file is the loader's to report
