"""gte_st.encoding.encode: same embeddings as stock encode in fp32, bf16 parity, order, prompts, no side effects."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch
from conftest import stsb_rows

from gte_st.encoding import _batches, _token_lengths, cpu_supports_bf16, encode, resolve_precision


@pytest.fixture(scope="module")
def sentences() -> list[str]:
    rows = stsb_rows("dev")[:48]
    return [s for _, a, b in rows for s in (a, b)]


def test_fp32_matches_stock_encode(tiny_model, sentences):
    ours = encode(tiny_model, sentences, batch_size=16, precision="fp32")
    stock = tiny_model.encode(sentences, batch_size=16, normalize_embeddings=True, convert_to_numpy=True)
    assert ours.dtype == np.float32 and ours.shape == stock.shape
    np.testing.assert_allclose(ours, stock, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(ours, axis=1), 1.0, atol=1e-5)


def test_order_is_preserved_whatever_the_lengths(tiny_model, sentences):
    texts = sorted(sentences, key=len)  # ascending: encode sorts descending internally
    full = encode(tiny_model, texts, batch_size=8, precision="fp32")
    singles = np.stack([encode(tiny_model, [t], precision="fp32")[0] for t in texts[::10]])
    np.testing.assert_allclose(full[::10], singles, atol=1e-5)


def test_bf16_parity_and_model_left_untouched(minilm, sentences):
    before = {name: p.detach().clone() for name, p in minilm.named_parameters()}
    fp32 = encode(minilm, sentences, precision="fp32")
    bf16 = encode(minilm, sentences, precision="bf16")
    autocast = encode(minilm, sentences, precision="bf16-autocast")
    assert (fp32 * bf16).sum(1).min() >= 0.999
    assert (fp32 * autocast).sum(1).min() >= 0.999
    assert not np.allclose(fp32, bf16, atol=1e-6)  # bf16 really ran
    for name, p in minilm.named_parameters():
        assert p.dtype == torch.float32
        assert torch.equal(p, before[name]), name


def test_prompt_is_prepended_like_stock_encode(tiny_model, sentences):
    ours = encode(tiny_model, sentences[:10], prompt="query: ", precision="fp32")
    stock = tiny_model.encode(sentences[:10], prompt="query: ", normalize_embeddings=True)
    np.testing.assert_allclose(ours, stock, atol=1e-5)
    tiny_model.prompts = {"query": "query: "}
    try:
        np.testing.assert_allclose(
            encode(tiny_model, sentences[:10], prompt_name="query", precision="fp32"), ours, atol=1e-5
        )
        with pytest.raises(ValueError, match="prompt_name 'passage'"):
            encode(tiny_model, sentences[:2], prompt_name="passage")
    finally:
        tiny_model.prompts = {}


def test_precision_resolution_and_errors(tiny_model):
    cpu = torch.device("cpu")
    assert resolve_precision("auto", cpu) == ("bf16" if cpu_supports_bf16() else "fp32")
    assert resolve_precision("fp32", cpu) == "fp32"
    with pytest.raises(ValueError, match="precision must be"):
        resolve_precision("fp16", cpu)
    with pytest.raises(TypeError, match="list of texts"):
        encode(tiny_model, "one string")
    assert encode(tiny_model, []).shape[0] == 0


def test_batches_cover_every_row_once_and_grow_for_short_texts():
    lengths = np.array([300, 250, 120, 60] + [10] * 200)
    spans = _batches(lengths, batch_size=4, token_budget=4 * 128)
    covered = [i for start, end in spans for i in range(start, end)]
    assert covered == list(range(len(lengths)))
    assert spans[0] == (0, 4)
    assert max(end - start for start, end in spans) == 16  # capped at 4x batch_size


def test_token_lengths_ignore_the_padding_and_truncation_left_on_the_shared_tokenizer(tiny_model, sentences):
    tokenizer = tiny_model.tokenizer
    texts = [*sentences, " ".join(sentences)]  # one text beyond the model's max length
    max_length = tiny_model.max_seq_length
    expected = [
        len(ids)
        for ids in tokenizer(texts, add_special_tokens=False, truncation=True, max_length=max_length)["input_ids"]
    ]
    assert max(expected) == max_length
    tokenizer(texts[:2], padding="max_length", truncation=True, max_length=5)  # leaves this state on the backend
    state = (tokenizer.backend_tokenizer.padding, tokenizer.backend_tokenizer.truncation)
    assert _token_lengths(tiny_model, texts).tolist() == expected
    assert (tokenizer.backend_tokenizer.padding, tokenizer.backend_tokenizer.truncation) == state  # not touched


def test_token_lengths_see_tokens_added_to_the_tokenizer_after_a_first_count(tiny_gte_dir):
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(tiny_gte_dir), device="cpu")  # a private tokenizer: tokens are added to it
    text = "gtezzqxtoken gtezzqxtoken"
    before = _token_lengths(model, [text]).tolist()
    model.tokenizer.add_tokens(["gtezzqxtoken"])
    expected = len(model.tokenizer(text, add_special_tokens=False)["input_ids"])
    assert expected < before[0]  # the new token replaces several word pieces
    assert _token_lengths(model, [text]).tolist() == [expected]


@pytest.fixture(scope="module")
def exported_tiny(tiny_gte_dir, tmp_path_factory):
    """The tiny GTE model with its ONNX graph and (where openvino is installed) its OpenVINO IR."""
    import importlib.util
    import shutil

    pytest.importorskip("onnxruntime")
    from gte_st.export import export

    model_dir = tmp_path_factory.mktemp("encode-exported") / "m"
    shutil.copytree(tiny_gte_dir, model_dir)
    export(model_dir, "onnx", optimize=False)
    if importlib.util.find_spec("openvino") is not None:
        export(model_dir, "openvino")
    return model_dir


@pytest.mark.parametrize("backend", ["onnx", "openvino"])
def test_encode_runs_exported_artifacts_loaded_from_a_directory(backend, exported_tiny, sentences):
    from sentence_transformers import SentenceTransformer

    from gte_st.export import load_exported, load_model_dir

    if backend == "openvino":
        pytest.importorskip("openvino")
    texts = sorted(sentences, key=len)[:40]
    stock = SentenceTransformer(str(exported_tiny), device="cpu").encode(texts, normalize_embeddings=True)
    by_dir = encode(load_model_dir(exported_tiny, backend), texts, batch_size=8)
    assert by_dir.dtype == np.float32 and by_dir.shape == stock.shape
    # bf16 is OpenVINO's default on AMX CPUs; ONNX Runtime runs the fp32 graph
    assert (by_dir * stock).sum(1).min() > (0.999 if backend == "openvino" else 0.99999)
    loaded = load_exported(exported_tiny, backend=backend)
    np.testing.assert_allclose(encode(loaded, texts, batch_size=8), by_dir, atol=2e-3)
    file_name = "onnx/model.onnx" if backend == "onnx" else "openvino/openvino_model.xml"
    by_file = encode(load_model_dir(exported_tiny, file_name=file_name), texts, batch_size=8)
    np.testing.assert_allclose(by_file, by_dir, atol=1e-6)


def test_encode_takes_a_loaded_model_and_the_loader_checks_backends(exported_tiny):
    from gte_st.errors import UsageError
    from gte_st.export import load_model_dir

    with pytest.raises(TypeError, match="encode takes a loaded model"):
        encode(exported_tiny, ["a"])
    with pytest.raises(UsageError, match="'tensorrt' is not a known backend; choose one of torch, onnx, openvino"):
        load_model_dir(exported_tiny, "tensorrt")
    with pytest.raises(ValueError, match="not an exported artifact"):
        load_model_dir(exported_tiny, file_name="model.safetensors")
    torch_model = load_model_dir(exported_tiny)  # backend torch: the directory's own weights
    assert encode(torch_model, ["a man plays a guitar"], precision="fp32").shape[0] == 1


def test_compiled_encode_matches_eager_and_follows_weight_updates(tiny_model, exported_tiny, sentences):
    texts = sentences[:40]
    eager = encode(tiny_model, texts, batch_size=8, precision="fp32")
    compiled = encode(tiny_model, texts, batch_size=8, precision="fp32", compile=True)
    np.testing.assert_allclose(compiled, eager, atol=1e-4)
    params = list(tiny_model.parameters())
    saved = [p.detach().clone() for p in params]
    try:
        with torch.no_grad():
            for p in params:
                p.mul_(1.1)  # an in-place update, as an optimizer step makes: the compiled copy must not be stale
        updated = encode(tiny_model, texts[:8], precision="fp32")
        assert not np.allclose(updated, eager[:8], atol=1e-3)
        np.testing.assert_allclose(encode(tiny_model, texts[:8], precision="fp32", compile=True), updated, atol=1e-4)
    finally:
        with torch.no_grad():
            for p, value in zip(params, saved):
                p.copy_(value)
    from gte_st.export import load_model_dir

    with pytest.raises(ValueError, match="compile=True applies to torch models"):
        encode(load_model_dir(exported_tiny, "onnx"), ["a"], compile=True)


def test_bf16_copy_is_shared_by_threads_and_follows_weight_updates(tiny_model, sentences):
    texts = sentences[:32]
    fp32 = encode(tiny_model, texts, batch_size=8, precision="fp32")
    chunks = [texts[i::4] for i in range(4)]
    with ThreadPoolExecutor(4) as pool:  # concurrent calls share one cached bf16 copy; the model is not touched
        results = list(pool.map(lambda chunk: encode(tiny_model, chunk, batch_size=2, precision="bf16"), chunks * 2))
    for i, result in enumerate(results):
        assert (result * fp32[i % 4 :: 4]).sum(1).min() >= 0.999
    assert all(p.dtype == torch.float32 for p in tiny_model.parameters())
    params = list(tiny_model.parameters())
    saved = [p.detach().clone() for p in params]
    try:
        generator = torch.Generator().manual_seed(0)
        for p in params:
            p.grad = torch.randn(p.shape, generator=generator)
        # Fused AdamW (the Trainer's default) updates in place without bumping the version counters: the cached bf16
        # copy must not be stale all the same.
        torch.optim.AdamW(params, lr=0.05, fused=True).step()
        for p in params:
            p.grad = None
        updated = encode(tiny_model, texts, precision="fp32")
        assert (updated * fp32).sum(1).min() < 0.99
        assert (encode(tiny_model, texts, precision="bf16") * updated).sum(1).min() >= 0.999
    finally:
        with torch.no_grad():
            for p, value in zip(params, saved):
                p.copy_(value)


# ------------------------------------------------------------------ the characters the tokenizer sees (issue 26.21)


def _long_texts(sentences: list[str]) -> list[str]:
    words = " ".join(sentences)
    return [
        " ".join([words] * 40),  # ordinary text far beyond max_seq_length
        "lead " + " " * 200_000 + words,  # a run of spaces that makes no token: the first cut is too short
        "x" * 150_000 + " " + words,  # no space to cut at within the first caps
        "\n\t " * 30_000 + words * 3,  # whitespace of every kind before the words
        sentences[0],  # short: never cut
    ]


def test_capped_long_texts_embed_exactly_like_the_whole_texts(tiny_model, sentences):
    texts = _long_texts(sentences)
    ours = encode(tiny_model, texts, batch_size=2, precision="fp32")
    stock = tiny_model.encode(texts, batch_size=2, normalize_embeddings=True, convert_to_numpy=True)
    np.testing.assert_allclose(ours, stock, atol=1e-5)
    with_prompt = encode(tiny_model, texts, precision="fp32", prompt="query: ")
    stock = tiny_model.encode(texts, prompt="query: ", normalize_embeddings=True, convert_to_numpy=True)
    np.testing.assert_allclose(with_prompt, stock, atol=1e-5)


def test_a_huge_line_reaches_the_tokenizer_as_a_capped_prefix(tiny_model, sentences, monkeypatch):
    """A 20 MB line: the counting pass and the batches' ``preprocess`` see at most the cap, and the embedding is the
    one of the text's beginning."""
    import gte_st.encoding as encoding

    seen: list[int] = []

    class Recording:
        def __init__(self, backend):
            self.backend = backend

        def encode_batch_fast(self, texts, **kwargs):
            seen.extend(len(t) for t in texts)
            return self.backend.encode_batch_fast(texts, **kwargs)

    counting = encoding._counting_tokenizer
    monkeypatch.setattr(encoding, "_counting_tokenizer", lambda t: (Recording(counting(t)[0]), counting(t)[1]))
    preprocess = tiny_model.preprocess
    monkeypatch.setattr(
        tiny_model, "preprocess", lambda texts, **kw: seen.extend(map(len, texts)) or preprocess(texts, **kw)
    )

    huge = " ".join(sentences) * (20_000_000 // len(" ".join(sentences)))
    assert len(huge) > 19_000_000
    embedding = encode(tiny_model, [huge], precision="fp32")
    cap = encoding.CAP_FACTOR * tiny_model.max_seq_length * (counting(tiny_model.tokenizer)[1] + 1)
    assert len(seen) == 2 and max(seen) <= cap  # one count, one batch
    expected = tiny_model.encode([huge[:cap]], normalize_embeddings=True, convert_to_numpy=True)
    np.testing.assert_allclose(embedding, expected, atol=1e-5)


@pytest.fixture(scope="module")
def tokenizer_families() -> dict[str, object]:
    """A byte-level BPE (GPT-2, ModernBERT, Qwen), a Unigram with Metaspace (SentencePiece: XLM-R, T5) and a WordPiece
    (BERT) tokenizer, trained here on STS-B sentences."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers

    corpus = [a for _, a, _ in stsb_rows("train")[:3000]]
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.train_from_iterator(
        corpus, trainers.BpeTrainer(vocab_size=400, initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    )
    unigram = Tokenizer(models.Unigram())
    unigram.normalizer = normalizers.NFKC()
    unigram.pre_tokenizer = pre_tokenizers.Metaspace()
    unigram.train_from_iterator(
        corpus, trainers.UnigramTrainer(vocab_size=400, unk_token="<unk>", special_tokens=["<unk>"])
    )
    wordpiece = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    wordpiece.normalizer = normalizers.BertNormalizer(lowercase=True)
    wordpiece.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    wordpiece.train_from_iterator(corpus, trainers.WordPieceTrainer(vocab_size=400, special_tokens=["[UNK]"]))
    return {"byte-level-bpe": bpe, "unigram-metaspace": unigram, "wordpiece": wordpiece}


@pytest.mark.parametrize("family", ["byte-level-bpe", "unigram-metaspace", "wordpiece"])
def test_the_cut_keeps_the_first_tokens_of_every_tokenizer_family(tokenizer_families, family):
    from hypothesis import given, settings
    from hypothesis import strategies as st

    from gte_st.encoding import cap_texts

    tokenizer = tokenizer_families[family]
    words = [a for _, a, _ in stsb_rows("dev")[:200]]
    piece = st.sampled_from(words) | st.sampled_from([" " * 50, "\n\t ", "x" * 120, "中文字符", "e\u0301", "123456789",
                                                      "'s", " \u3000 ", "!!", "  "])  # fmt: skip
    text = st.lists(piece, max_size=400).map(" ".join)

    @settings(max_examples=60, deadline=None, database=None)
    @given(text=text, max_length=st.sampled_from([4, 16, 64]), cap=st.sampled_from([8, 40, 200]))
    def check(text, max_length, cap):
        (cut,), (count,) = cap_texts(tokenizer, [text], max_length, cap)
        whole = tokenizer.encode(text, add_special_tokens=False).ids[:max_length]
        assert text.startswith(cut)
        assert tokenizer.encode(cut, add_special_tokens=False).ids[:max_length] == whole
        assert count == len(whole)

    check()
