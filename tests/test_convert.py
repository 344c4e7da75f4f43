"""gte_st.convert / gte-st convert / gte_st.load: original remote-code GTE checkpoints -> native ``gte``.

The checkpoints are tiny, written in the original layout by ``conftest.build_tiny_gte_original`` (config fields and
weight names of Alibaba-NLP/new-impl). The reference is transformers' own ``GteModel`` loading the *same original
files* through its load-time renaming (``conversion_mapping.py``), with a config written here by hand.
"""

from __future__ import annotations

import json
import re
import shutil
import sys

import numpy as np
import pytest
import torch
from conftest import HUB_TOKEN, build_tiny_gte_original
from safetensors.torch import load_file, save_file
from sentence_transformers import SentenceTransformer
from transformers import AutoModel, GteConfig, GteModel

import gte_st
from gte_st.commands import convert as convert_command
from gte_st.convert import ConversionError, convert_checkpoint

SENTENCES = ["A man is playing a flute.", "A plane is taking off.", "Two dogs run through a field.", "x"]


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread(one_torch_thread):
    """Tiny models on a busy shared CPU: this module runs on one torch thread (see conftest)."""


def reference_model(src, *, type_vocab_size: int, rope_theta: float) -> GteModel:
    """transformers' GteModel on the original files, with the native config spelled out by hand."""
    original = json.loads((src / "config.json").read_text())
    config = GteConfig(
        vocab_size=original["vocab_size"],
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=128,
        type_vocab_size=type_vocab_size,
        pad_token_id=0,
        rope_parameters={"rope_type": "default", "rope_theta": rope_theta},
    )
    return GteModel.from_pretrained(src, config=config).eval()


def hidden_states(model, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, model.config.vocab_size, (3, 40), generator=generator)
    mask = torch.ones_like(ids)
    mask[1, 25:] = 0
    mask[2, 7:] = 0
    with torch.no_grad():
        return model(input_ids=ids, attention_mask=mask).last_hidden_state * mask.unsqueeze(-1)


def test_converted_checkpoint_matches_transformers_gte_on_the_original_files(tiny_gte_original_dir, tmp_path):
    out = convert_checkpoint(tiny_gte_original_dir, tmp_path / "native")
    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == "gte" and config["architectures"] == ["GteModel"]
    assert "auto_map" not in config and config["rope_parameters"]["rope_theta"] == 500000.0
    assert not list(out.glob("*.py"))  # the remote code is not carried over
    converted = AutoModel.from_pretrained(out).eval()
    reference = reference_model(tiny_gte_original_dir, type_vocab_size=0, rope_theta=500000.0)
    assert type(converted) is GteModel
    assert (hidden_states(converted) - hidden_states(reference)).abs().max() <= 1e-6


def test_pooling_and_normalisation_are_kept_and_load_without_remote_code(tiny_gte_original_dir, tmp_path):
    src = tmp_path / "src"
    build_tiny_gte_original(src, type_vocab_size=2, pooling="cls", normalize=True)
    out = convert_checkpoint(src, tmp_path / "native")
    assert "trust_remote_code" not in json.dumps(json.loads((out / "sentence_bert_config.json").read_text()))
    model = SentenceTransformer(str(out), device="cpu")
    assert [type(m).__name__ for m in model] == ["Transformer", "Pooling", "Normalize"]
    assert model[1].pooling_mode == "cls" and model.max_seq_length == 128
    reference = reference_model(src, type_vocab_size=2, rope_theta=500000.0)
    batch = model.tokenize(SENTENCES)
    with torch.no_grad():
        cls = reference(**batch).last_hidden_state[:, 0]
    expected = torch.nn.functional.normalize(cls, dim=-1).numpy()
    assert np.abs(model.encode(SENTENCES, convert_to_numpy=True) - expected).max() <= 1e-6


def test_ntk_rope_scaling_is_converted_exactly(tmp_path):
    """gte-large-en-v1.5 style: rope_scaling {"type": "ntk", "factor": 2}. The original NTKScalingRotaryEmbedding
    uses, at every position, inv_freq = 1 / (theta * s) ** (2i / d) / s ** (2 / d); the reference is transformers'
    GteModel on the same files with exactly those frequencies put into its rotary embedding."""
    theta, factor = 160000.0, 2.0
    src = build_tiny_gte_original(tmp_path / "src", type_vocab_size=2, rope_theta=theta, rope_scaling={
        "type": "ntk", "factor": factor})  # fmt: skip
    converted = AutoModel.from_pretrained(convert_checkpoint(src, tmp_path / "native")).eval()
    dim = 16
    ntk = 1.0 / ((theta * factor) ** (torch.arange(0, dim, 2).float() / dim)) / factor ** (2 / dim)
    torch.testing.assert_close(converted.rotary_emb.inv_freq, ntk, rtol=0, atol=0)
    reference = reference_model(src, type_vocab_size=2, rope_theta=theta)
    unscaled = hidden_states(reference)
    reference.rotary_emb.inv_freq = ntk.clone()
    scaled = hidden_states(reference)
    assert (hidden_states(converted) - scaled).abs().max() <= 1e-6
    assert (unscaled - scaled).abs().max() > 1e-3  # the scaling is not a no-op at these lengths


def test_unpacked_qkv_and_task_head_prefix_convert_to_the_same_model(tiny_gte_original_dir, tmp_path):
    """pack_qkv=false checkpoints store q/k/v separately; MaskedLM/classification checkpoints prefix 'new.'."""
    packed = convert_checkpoint(tiny_gte_original_dir, tmp_path / "packed")
    src = tmp_path / "unpacked"
    shutil.copytree(tiny_gte_original_dir, src)
    tensors = load_file(str(src / "model.safetensors"))
    split = {}
    for key, tensor in tensors.items():
        if "qkv_proj" in key:
            for name, part in zip("qkv", tensor.chunk(3, dim=0), strict=True):
                split["new." + key.replace("qkv_proj", f"{name}_proj")] = part.contiguous()
        else:
            split["new." + key] = tensor
    split["lm_head.decoder.weight"] = torch.zeros(3, 3)  # a task head: left out
    save_file(split, str(src / "model.safetensors"))
    config = json.loads((src / "config.json").read_text())
    (src / "config.json").write_text(json.dumps({**config, "pack_qkv": False, "architectures": ["NewForMaskedLM"]}))
    unpacked = convert_checkpoint(src, tmp_path / "unpacked-native")
    a, b = load_file(str(packed / "model.safetensors")), load_file(str(unpacked / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"model_type": "bert", "auto_map": None}, "not an original GTE checkpoint"),
        ({"architectures": ["QwenModel"]}, "unknown architecture 'QwenModel'"),
        ({"layer_norm_type": "rms_norm"}, "config field 'layer_norm_type' = 'rms_norm'"),
        ({"position_embedding_type": "absolute"}, "config field 'position_embedding_type'"),
        ({"logn_attention_scale": True}, "config field 'logn_attention_scale'"),
        ({"rope_scaling": {"type": "yarn", "factor": 4.0}}, "config field 'rope_scaling'"),
        ({"rope_scaling": {"type": "ntk", "factor": 2.0, "mixed_b": 0.5}}, "mixed_b"),
        ({"sliding_window": 128}, "config field 'sliding_window' = 128 is not part of"),
        ({"hidden_size": 64}, "has shape (32,), the configuration expects (64,)"),
        ({"num_hidden_layers": 3}, "missing weight 'layers.2."),
        ({"num_hidden_layers": 1}, "unexpected weight 'layers.1."),
    ],
)
def test_clear_errors_name_the_field_or_weight(tiny_gte_original_dir, tmp_path, change, message):
    src = tmp_path / "src"
    shutil.copytree(tiny_gte_original_dir, src)
    config = json.loads((src / "config.json").read_text())
    (src / "config.json").write_text(json.dumps({**config, **change}))
    with pytest.raises(ConversionError, match=re.escape(message)):
        convert_checkpoint(src, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_unknown_weight_is_refused(tiny_gte_original_dir, tmp_path):
    src = tmp_path / "src"
    shutil.copytree(tiny_gte_original_dir, src)
    tensors = load_file(str(src / "model.safetensors"))
    save_file({**tensors, "encoder.layer.0.attention.rotary.weight": torch.zeros(2)}, str(src / "model.safetensors"))
    with pytest.raises(ConversionError, match="unexpected weight 'encoder.layer.0.attention.rotary.weight'"):
        convert_checkpoint(src, tmp_path / "out")


def test_cli_convert_writes_a_loadable_directory_and_refuses_to_overwrite(tiny_gte_original_dir, tmp_path, capsys):
    out = tmp_path / "cli-native"
    assert convert_command.main([str(tiny_gte_original_dir), str(out)]) == 0
    assert str(out) in capsys.readouterr().out
    assert SentenceTransformer(str(out), device="cpu")[1].pooling_mode == "cls"
    with pytest.raises(FileExistsError, match="--overwrite"):
        convert_command.main([str(tiny_gte_original_dir), str(out)])
    assert convert_command.main([str(tiny_gte_original_dir), str(out), "--overwrite"]) == 0


def test_cli_reports_an_unmappable_field_in_one_line(tiny_gte_original_dir, tmp_path, capsys):
    from gte_st.cli import main as cli_main

    src = tmp_path / "src"
    shutil.copytree(tiny_gte_original_dir, src)
    config = json.loads((src / "config.json").read_text())
    (src / "config.json").write_text(json.dumps({**config, "layer_norm_type": "rms_norm"}))
    assert cli_main(["convert", str(src), str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("gte-st convert: error: config field 'layer_norm_type' = 'rms_norm'") and "\n" not in err
    assert cli_main(["convert", str(tmp_path / "nowhere"), str(tmp_path / "out")]) == 1
    assert "nowhere is not a checkpoint directory" in capsys.readouterr().err


def test_conversion_never_imports_the_remote_code(tiny_gte_original_dir, tmp_path):
    """The fixture's modeling.py / configuration.py raise on import; nothing named like them gets imported."""
    before = set(sys.modules)
    gte_st.load(str(tiny_gte_original_dir), device="cpu")
    assert not {m for m in set(sys.modules) - before if m.split(".")[-1] in ("modeling", "configuration")}


def test_load_converts_a_local_original_checkpoint_once(tiny_gte_original_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("GTE_ST_CACHE", str(tmp_path / "cache"))
    first = gte_st.load(str(tiny_gte_original_dir), device="cpu")
    assert type(first) is SentenceTransformer and first[1].pooling_mode == "cls"
    entries = list((tmp_path / "cache" / "local").iterdir())
    assert len(entries) == 1
    stamp = (entries[0] / "model.safetensors").stat().st_mtime_ns
    second = gte_st.load(str(tiny_gte_original_dir), device="cpu")
    assert (entries[0] / "model.safetensors").stat().st_mtime_ns == stamp  # reused, not converted again
    np.testing.assert_array_equal(first.encode(SENTENCES), second.encode(SENTENCES))


def test_load_passes_any_other_model_through(tiny_gte_native_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("GTE_ST_CACHE", str(tmp_path / "cache"))
    model = gte_st.load(str(tiny_gte_native_dir), device="cpu")
    stock = SentenceTransformer(str(tiny_gte_native_dir), device="cpu")
    np.testing.assert_array_equal(model.encode(SENTENCES), stock.encode(SENTENCES))
    assert not (tmp_path / "cache").exists()
    with pytest.raises(ValueError, match="never runs remote code"):
        gte_st.load(str(tiny_gte_native_dir), trust_remote_code=True)


def test_load_from_the_hub_converts_once_and_works_offline(hub, hub_env, tiny_gte_original_dir, monkeypatch):
    from huggingface_hub import HfApi, constants

    api = HfApi(endpoint=hub.endpoint, token=HUB_TOKEN)
    api.create_repo("alibaba/gte-tiny-v1.5")
    api.upload_folder(folder_path=str(tiny_gte_original_dir), repo_id="alibaba/gte-tiny-v1.5")
    head = hub.head("alibaba/gte-tiny-v1.5")

    model = gte_st.load("alibaba/gte-tiny-v1.5", device="cpu")
    entry = hub_env.parent / "hf-home" / "gte_st" / "converted" / "alibaba--gte-tiny-v1.5" / head
    assert type(model) is SentenceTransformer and model[1].pooling_mode == "cls"
    assert json.loads((entry / "config.json").read_text())["model_type"] == "gte"
    downloaded = [path for method, path in hub.requests if method == "GET" and "/resolve/" in path]
    assert not any(path.endswith(".py") for path in downloaded)  # the remote code is never fetched
    expected = model.encode(SENTENCES)
    np.testing.assert_allclose(
        expected, SentenceTransformer(str(convert_checkpoint(tiny_gte_original_dir, hub_env.parent / "direct"))).encode(
            SENTENCES), atol=1e-6)  # fmt: skip

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    requests = len(hub.requests)
    np.testing.assert_array_equal(gte_st.load("alibaba/gte-tiny-v1.5", device="cpu").encode(SENTENCES), expected)
    shutil.rmtree(hub_env)  # even without the Hugging Face cache, the converted copy is found
    np.testing.assert_array_equal(gte_st.load("alibaba/gte-tiny-v1.5", device="cpu").encode(SENTENCES), expected)
    assert len(hub.requests) == requests  # nothing went to the network
    with pytest.raises(FileNotFoundError, match="HF_HUB_OFFLINE"):
        gte_st.load("alibaba/never-loaded")


def test_load_from_the_hub_passes_native_models_through(hub, hub_env, tiny_gte_dir):
    from huggingface_hub import HfApi

    api = HfApi(endpoint=hub.endpoint, token=HUB_TOKEN)
    api.create_repo("me/gte-bert-tiny")
    api.upload_folder(folder_path=str(tiny_gte_dir), repo_id="me/gte-bert-tiny")
    model = gte_st.load("me/gte-bert-tiny", device="cpu")
    np.testing.assert_array_equal(model.encode(SENTENCES), SentenceTransformer(str(tiny_gte_dir)).encode(SENTENCES))
    assert not (hub_env.parent / "hf-home" / "gte_st" / "converted" / "me--gte-bert-tiny").exists()
