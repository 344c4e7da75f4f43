"""gte_st.vocabulary: the [UNK] guard (measured, warned once, training stopped) and the vocabulary extension
(pieces found, rows initialised, trained at their own rate, saved in a layout stock sentence-transformers loads), on
a tiny BERT whose WordPiece vocabulary is English (built from STS-B train) and real Chinese text (STS-B-zh)."""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from sentence_transformers import SentenceTransformer

import gte_st
from gte_st.cli import main as cli_main
from gte_st.encoding import encode, unknown_token_share
from gte_st.evaluation.readers import read_sts
from gte_st.vocabulary import (
    UNKNOWN_TOKEN_ERROR_SHARE,
    check_unknown_tokens,
    extend_vocabulary,
    read_token_file,
    unknown_pieces,
    warn_unknown_tokens,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")

EMBEDDING = "embeddings.word_embeddings.weight"


@pytest.fixture(scope="module")
def zh_pairs(shared_data):
    """The first 48 STS-B-zh train pairs (sentence1, sentence2, score)."""
    data = read_sts(shared_data / "zh_pairs" / "stsb_zh" / "STS-B.train.data")
    return list(zip(data.sentences1, data.sentences2, data.scores))[:48]


@pytest.fixture(scope="module")
def zh_texts(zh_pairs) -> list[str]:
    return [text for a, b, _ in zh_pairs for text in (a, b)]


@pytest.fixture
def fresh_model(tiny_bert_dir):
    """A tiny GTE model of its own (the extension changes the model in place)."""
    return gte_st.build_model(str(tiny_bert_dir), max_seq_length=64)


def _write_scored(path: Path, pairs) -> Path:
    path.write_text(
        "".join(
            json.dumps({"sentence1": a, "sentence2": b, "score": s}, ensure_ascii=False) + "\n" for a, b, s in pairs
        ),
        encoding="utf8",
    )
    return path


# ------------------------------------------------------------------------------------------------- the guard


def test_unknown_token_share_counts_unk_among_the_tokens(tiny_model, zh_texts):
    tokenizer = tiny_model.tokenizer
    assert unknown_token_share(tokenizer, ["a man is playing a guitar."]) == 0.0
    assert unknown_token_share(tokenizer, zh_texts) > 0.9  # each ideograph is a token of its own, nearly all [UNK]
    assert unknown_token_share(tokenizer, ["a man 吃饭"]) == pytest.approx(0.5)  # a, man, [UNK], [UNK]
    assert unknown_token_share(tokenizer, []) is None


def test_warning_names_the_input_the_share_and_the_remedies_once(tiny_model, zh_texts, caplog):
    caplog.set_level(logging.WARNING, logger="gte_st.vocabulary")
    share = warn_unknown_tokens(tiny_model, {"sentence1": zh_texts, "sentence2": ["a man"]}, "zh/test.tsv")
    assert share > 0.9
    (record,) = caplog.records
    message = record.getMessage()
    assert message.startswith(f"zh/test.tsv: {100 * share:.0f}% of the tokens are [UNK] (sentence1 ")
    assert "sentence2 0%" in message and "gte-multilingual-base" in message and "--extend_vocab auto" in message
    warn_unknown_tokens(tiny_model, {"sentence1": zh_texts}, "zh/test.tsv")
    assert len(caplog.records) == 1, "warned twice for the same input"
    assert warn_unknown_tokens(tiny_model, ["a man is playing a guitar."], "en.txt") == 0.0
    assert len(caplog.records) == 1


def test_training_guard_stops_above_the_limit_unless_allowed(tiny_model, zh_texts):
    english = ["a man is playing a guitar.", "a woman is slicing an onion."]
    with pytest.raises(
        ValueError, match=r"^data.jsonl: .* \(anchor (9\d|100)%, positive 0%\).*--allow_unknown_tokens"
    ):
        check_unknown_tokens(tiny_model, {"anchor": zh_texts, "positive": english}, "data.jsonl")
    shares = check_unknown_tokens(tiny_model, {"anchor": zh_texts, "positive": english}, "data.jsonl", allow=True)
    assert shares["anchor"] > UNKNOWN_TOKEN_ERROR_SHARE and shares["positive"] == 0.0
    assert check_unknown_tokens(tiny_model, {"anchor": english}, "en.jsonl") == {"anchor": 0.0}


# ------------------------------------------------------------------------------------- the extension, in memory


def test_unknown_pieces_are_ideographs_or_initial_and_continuation_characters(tiny_model):
    counts = unknown_pieces(tiny_model.tokenizer, ["我爱北京", "我 жук", "a man is playing.", "我爱北京"])
    assert counts["我"] == 3 and counts["爱"] == 2 and counts["京"] == 2
    assert counts["ж"] == 1 and counts["##у"] == 1 and counts["##к"] == 1  # the Cyrillic word, spelt letter by letter
    assert not {"a", "man", "is", "playing", ".", "##ж"} & set(counts)


def test_extension_adds_single_tokens_and_unk_init_keeps_every_embedding(fresh_model, zh_texts):
    before = encode(fresh_model, zh_texts[:8], precision="fp32")
    old_size = len(fresh_model.tokenizer)
    pieces = unknown_pieces(fresh_model.tokenizer, zh_texts)
    extension = extend_vocabulary(fresh_model, sorted(pieces), init="unk")
    assert extension.first_id == old_size and len(extension.tokens) == len(pieces)
    assert len(fresh_model.tokenizer) == old_size + len(pieces)
    assert fresh_model[0].auto_model.get_input_embeddings().weight.shape[0] == old_size + len(pieces)
    assert not any(c.isascii() for c in zh_texts[0])
    assert fresh_model.tokenizer.tokenize(zh_texts[0]) == list(zh_texts[0])
    assert unknown_token_share(fresh_model.tokenizer, zh_texts) == 0.0
    # every new token starts as [UNK] did: the extended model embeds every text exactly as the base model did
    np.testing.assert_allclose(encode(fresh_model, zh_texts[:8], precision="fp32"), before, atol=1e-6)
    again = extend_vocabulary(fresh_model, ["一", "龍"])  # known tokens are skipped
    assert again.skipped == ["一"] and again.tokens == ["龍"]


def test_mean_random_and_decomposition_initialisation(tiny_bert_dir):
    rows = {}
    for init in ("mean", "random"):
        model = gte_st.build_model(str(tiny_bert_dir))
        old = model[0].auto_model.get_input_embeddings().weight.detach().clone()
        extension = extend_vocabulary(model, ["龍", "鳳", "，", "ｂ"], init=init, seed=3)
        weight = model[0].auto_model.get_input_embeddings().weight.detach()
        assert extension.decomposed == ["，", "ｂ"]  # NFKC: "," and "b", both in the English vocabulary
        comma, b = (model.tokenizer.convert_tokens_to_ids(t) for t in (",", "b"))
        torch.testing.assert_close(weight[extension.first_id + 2], old[comma])
        torch.testing.assert_close(weight[extension.first_id + 3], old[b])
        rows[init] = weight[extension.first_id : extension.first_id + 2]
        torch.testing.assert_close(weight[: len(old)], old)  # the existing rows are untouched
    torch.testing.assert_close(rows["mean"], old.mean(0).expand(2, -1))
    assert not torch.allclose(rows["random"][0], rows["random"][1])  # each new token is told apart
    assert abs(rows["random"].std().item() - old.std().item()) < 0.5 * old.std().item()


def test_token_file_is_normalised_like_the_text(tmp_path, tiny_model):
    path = tmp_path / "tokens.txt"
    path.write_text("# characters to add\n我\n\n##Ж\nHello\n", encoding="utf8")
    assert read_token_file(path, tiny_model.tokenizer) == ["我", "##ж", "hello"]
    path.write_text("我\n两 个\n", encoding="utf8")
    with pytest.raises(ValueError, match=r"tokens.txt:2: '两 个' is not one token"):
        read_token_file(path, tiny_model.tokenizer)


def test_the_extended_model_loads_with_stock_sentence_transformers(fresh_model, zh_texts, tmp_path):
    old_size = len(fresh_model.tokenizer)
    extend_vocabulary(fresh_model, sorted(unknown_pieces(fresh_model.tokenizer, zh_texts)), init="random")
    fresh_model.save(str(tmp_path / "model"))
    loaded = SentenceTransformer(str(tmp_path / "model"), device="cpu")
    assert loaded.tokenizer.tokenize("一个男人") == ["一", "个", "男", "人"]
    np.testing.assert_allclose(loaded.encode(zh_texts[:6]), fresh_model.encode(zh_texts[:6]), atol=1e-6)
    # ordinary WordPiece entries after the old ones (not "added tokens", which every reader would split out first)
    saved = json.loads((tmp_path / "model" / "tokenizer.json").read_text(encoding="utf8"))
    assert saved["model"]["vocab"]["男"] >= old_size and len(saved["model"]["vocab"]) == len(loaded.tokenizer)
    assert "男" not in {token["content"] for token in saved["added_tokens"]}


def test_an_older_sentence_transformers_reads_the_new_tokens(fresh_model, zh_texts, tmp_path):
    """sentence-transformers 5.7 on transformers 4.57 (the consumers' environment) tokenises the new characters as
    single tokens and gives the same embeddings."""
    python = os.environ.get("GTE_ST_CONSUMERS_PYTHON")
    if not python:
        pytest.skip("no consumers' environment: run scripts/setup_consumers_env.sh and set GTE_ST_CONSUMERS_PYTHON")
    extend_vocabulary(fresh_model, sorted(unknown_pieces(fresh_model.tokenizer, zh_texts)), init="random")
    fresh_model.save(str(tmp_path / "model"))
    texts = zh_texts[:4]
    done = subprocess.run(
        [python, str(Path(__file__).with_name("consumers_check.py")), "st-torch", str(tmp_path / "model"), "-",
         str(tmp_path / "out-"), *texts],
        capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"},
        timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    tokens = json.loads(done.stdout.strip().splitlines()[-1])
    assert tokens == [fresh_model.tokenizer.tokenize(text) for text in texts]
    assert "[UNK]" not in sum(tokens, [])
    np.testing.assert_allclose(np.load(tmp_path / "out-torch.npy"), fresh_model.encode(texts), atol=1e-5)


# --------------------------------------------------------------------------------------------- through training


def _train(argv: list[str]) -> int:
    return cli_main(["train", *argv])


def test_train_stops_on_chinese_for_an_english_vocabulary_unless_allowed(tiny_bert_dir, zh_pairs, tmp_path, capsys):
    data = _write_scored(tmp_path / "zh.jsonl", zh_pairs)
    out = tmp_path / "out"
    common = ["--base_model", str(tiny_bert_dir), "--data", str(data), "--loss", "cosent", "--precision", "fp32",
              "--per_device_train_batch_size", "8", "--max_steps", "2", "--output_dir", str(out)]  # fmt: skip
    assert _train(common) == 1
    (line,) = [line for line in capsys.readouterr().err.splitlines() if "error:" in line]
    assert re.match(rf"gte-st train: error: stage train: {re.escape(str(data))}: (9\d|100)% .*\[UNK\] \(anchor", line)
    assert "--allow_unknown_tokens" in line and "--extend_vocab auto" in line
    assert not out.exists()
    assert _train([*common, "--allow_unknown_tokens"]) == 0
    assert (out / "model.safetensors").is_file()


def test_train_extend_vocab_trains_the_new_rows_at_their_own_rate(tiny_bert_dir, zh_pairs, tmp_path):
    """``--extend_vocab auto``: the characters seen at least N times become tokens of the saved model; with
    ``--new_token_learning_rate`` only the new rows of the embedding matrix move, without it the old ones do too."""
    data = _write_scored(tmp_path / "zh.jsonl", zh_pairs)
    texts = [t for a, b, _ in zh_pairs for t in (a, b)]
    base = gte_st.build_model(str(tiny_bert_dir))
    counts = unknown_pieces(base.tokenizer, texts)
    expected = sorted((t for t, n in counts.items() if n >= 4), key=lambda t: (-counts[t], t))
    initial = load_file(Path(tiny_bert_dir) / "model.safetensors")[EMBEDDING]
    extend_vocabulary(base, expected, init="random", seed=7)
    initial_new = base[0].auto_model.get_input_embeddings().weight.detach()[len(initial) :]

    common = ["--base_model", str(tiny_bert_dir), "--data", str(data), "--loss", "cosent", "--precision", "fp32",
              "--per_device_train_batch_size", "8", "--max_steps", "3", "--save_steps", "100", "--seed", "7",
              "--learning_rate", "1e-3", "--extend_vocab", "auto", "--extend_vocab_min_count", "4"]  # fmt: skip
    out = tmp_path / "own-rate"
    assert _train([*common, "--new_token_learning_rate", "1e-2", "--output_dir", str(out)]) == 0
    model = SentenceTransformer(str(out), device="cpu")
    assert model.tokenizer.tokenize(expected[0] + expected[1]) == expected[:2]
    summary = json.loads((out / "training_summary.json").read_text())
    (added,) = summary["vocabulary_extension"]
    assert (added["added"], added["first_id"], added["init"]) == (len(expected), len(initial), "random")
    trained = load_file(out / "model.safetensors")[EMBEDDING]
    assert trained.shape[0] == len(initial) + len(expected)
    torch.testing.assert_close(trained[: len(initial)], initial, rtol=0, atol=0)  # old rows kept as they were
    assert (trained[len(initial) :] - initial_new).abs().amax(dim=1).gt(1e-3).float().mean() > 0.5  # new rows learnt

    out = tmp_path / "one-rate"
    assert _train([*common, "--output_dir", str(out)]) == 0
    assert not torch.equal(load_file(out / "model.safetensors")[EMBEDDING][: len(initial)], initial)


def test_learning_rate_zero_trains_only_the_new_rows(tiny_bert_dir, zh_pairs, tmp_path):
    """``--learning_rate 0 --new_token_learning_rate X``: the model learns the new tokens and nothing else, so it
    embeds every text without a new token exactly as the base model does."""
    data = _write_scored(tmp_path / "zh.jsonl", zh_pairs)
    out = tmp_path / "rows-only"
    assert _train(["--base_model", str(tiny_bert_dir), "--data", str(data), "--loss", "cosent", "--precision", "fp32",
                   "--per_device_train_batch_size", "8", "--max_steps", "3", "--learning_rate", "0",
                   "--new_token_learning_rate", "1e-2", "--extend_vocab", "auto", "--output_dir", str(out)]) == 0  # fmt: skip
    base, trained = load_file(Path(tiny_bert_dir) / "model.safetensors"), load_file(out / "model.safetensors")
    for name, tensor in base.items():
        kept = trained[name][: len(tensor)] if name == EMBEDDING else trained[name]
        torch.testing.assert_close(kept, tensor, rtol=0, atol=0, msg=name)
    english = ["a man is playing a guitar.", "a woman is slicing an onion."]
    base_model = gte_st.build_model(str(tiny_bert_dir))
    np.testing.assert_allclose(SentenceTransformer(str(out), device="cpu").encode(english), base_model.encode(english),
                               atol=1e-6)  # fmt: skip


def test_vocabulary_options_are_checked_before_loading(tiny_bert_dir, tmp_path, capsys):
    data = tmp_path / "en.jsonl"
    data.write_text('{"anchor": "a man", "positive": "a woman"}\n' * 8)
    common = ["--base_model", str(tiny_bert_dir), "--data", str(data), "--per_device_train_batch_size", "4",
              "--max_steps", "1", "--output_dir", str(tmp_path / "out")]  # fmt: skip
    for flags, message in [
        (["--extend_vocab", str(tmp_path / "missing.txt")], "--extend_vocab " + str(tmp_path / "missing.txt")),
        (["--extend_vocab", "auto", "--extend_vocab_min_count", "0"], "--extend_vocab_min_count must be >= 1"),
        (["--new_token_learning_rate", "1e-3"], "--new_token_learning_rate needs new tokens"),
    ]:
        assert _train([*common, *flags]) == 1, flags
        assert message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


# ------------------------------------------------------------------------------------------ through the commands


def test_eval_index_dedup_and_cluster_warn_about_unknown_tokens(tiny_gte_dir, zh_texts, shared_data, tmp_path, caplog):
    caplog.set_level(logging.WARNING, logger="gte_st.vocabulary")
    corpus = tmp_path / "zh.txt"
    corpus.write_text("\n".join(zh_texts[:12]) + "\n", encoding="utf8")
    stsb_zh = shared_data / "zh_pairs" / "stsb_zh" / "STS-B.test.data"
    runs = {
        str(stsb_zh): ["eval", str(tiny_gte_dir), "--task", "sts", "--data", str(stsb_zh), "--max-samples", "20"],
        "index": ["index", str(corpus), "--model", str(tiny_gte_dir), "--out", str(tmp_path / "index"),
                  "--no-progress"],
        "dedup": ["dedup", str(corpus), "--model", str(tiny_gte_dir), "--no-progress"],
        "cluster": ["cluster", str(corpus), "--model", str(tiny_gte_dir), "--k", "2", "--no-progress"],
    }  # fmt: skip
    for name, argv in runs.items():
        caplog.clear()
        assert cli_main(argv) == 0, name
        warnings = [r.getMessage() for r in caplog.records if "[UNK]" in r.getMessage()]
        where = name if name == str(stsb_zh) else str(corpus)
        assert len(warnings) == 1 and warnings[0].startswith(f"{where}: "), (name, warnings)
        assert int(warnings[0][len(where) + 2 :].split("%")[0]) >= 90, warnings
