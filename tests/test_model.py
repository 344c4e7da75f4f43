from __future__ import annotations

import json
import logging
import subprocess
import sys
import textwrap
import warnings

import numpy as np
import pytest
from sentence_transformers import SentenceTransformer

import gte_st
from gte_st import GTEMeanPooling, GTEModel

SENTENCES = ["A man is playing a flute.", "A plane is taking off.", "Two dogs run through a field.", "x"]

# Runs in a fresh interpreter where `import gte_st` fails, as on a machine without gte-st installed.
LOAD_WITHOUT_GTE_ST = textwrap.dedent(
    """
    import sys, json, numpy as np

    class BlockGteSt:
        def find_spec(self, name, path=None, target=None):
            if name == "gte_st" or name.startswith("gte_st."):
                raise ImportError("gte_st is blocked in this interpreter")
            return None

    sys.meta_path.insert(0, BlockGteSt())
    try:
        import gte_st  # noqa: F401
        raise SystemExit("gte_st should not be importable here")
    except ImportError:
        pass
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(sys.argv[1])
    sentences = json.loads(sys.argv[2])
    np.save(sys.argv[3], model.encode(sentences, convert_to_numpy=True, batch_size=2))
    print(json.dumps([type(m).__name__ for m in model]))
    """
)


def load_in_clean_interpreter(model_dir, out_file) -> list[str]:
    result = subprocess.run(
        [sys.executable, "-c", LOAD_WITHOUT_GTE_ST, str(model_dir), json.dumps(SENTENCES), str(out_file)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_build_model_from_plain_encoder(tiny_bert_dir):
    model = gte_st.build_model(str(tiny_bert_dir), max_seq_length=64)
    assert isinstance(model, GTEModel)
    assert [type(m).__name__ for m in model] == ["Transformer", "GTEMeanPooling"]
    assert model.max_seq_length == 64
    embeddings = model.encode(SENTENCES)
    assert embeddings.shape == (4, 32)
    np.testing.assert_allclose(np.linalg.norm(embeddings, axis=1), 1.0, atol=1e-5)


def test_build_model_keeps_transformer_and_tokenizer_of_st_model(minilm_dir):
    stock = SentenceTransformer(str(minilm_dir))
    model = gte_st.build_model(str(minilm_dir))
    assert isinstance(model[1], GTEMeanPooling)
    assert model.tokenizer.get_vocab() == stock.tokenizer.get_vocab()
    assert model.max_seq_length == stock.max_seq_length
    # all-MiniLM-L6-v2 is mean pooling + Normalize already: same embeddings
    np.testing.assert_allclose(model.encode(SENTENCES), stock.encode(SENTENCES), atol=1e-6)


def test_build_model_rejects_bad_max_seq_length(tiny_bert_dir):
    with pytest.raises(ValueError, match="max_seq_length"):
        gte_st.build_model(str(tiny_bert_dir), max_seq_length=0)


def test_default_base_model_is_the_offline_minilm(minilm_dir):
    assert gte_st.default_base_model() == str(minilm_dir)


def test_saved_layout_is_stock_and_readable_by_classic_consumers(tiny_bert_dir, tmp_path):
    model = gte_st.build_model(str(tiny_bert_dir), max_seq_length=48)
    model.save(str(tmp_path / "m"))
    modules = json.loads((tmp_path / "m" / "modules.json").read_text())
    # the import paths every sentence-transformers release resolves (6.x maps them to its new modules)
    assert [m["type"] for m in modules] == [
        "sentence_transformers.models.Transformer",
        "sentence_transformers.models.Pooling",
        "sentence_transformers.models.Normalize",
    ]
    # the classic schema: sentence-transformers 3.0-5.3 call Pooling(**config) and Transformer(**config), so only
    # keys their __init__ takes (5.4+ renames word_embedding_dimension and drops the flags, silently)
    pooling_config = json.loads((tmp_path / "m" / "1_Pooling" / "config.json").read_text())
    assert pooling_config == {
        "word_embedding_dimension": 32,
        "pooling_mode_cls_token": False,  # TEI's PoolConfig requires the first four flags
        "pooling_mode_max_tokens": False,
        "pooling_mode_mean_tokens": True,
        "pooling_mode_mean_sqrt_len_tokens": False,
        "pooling_mode_weightedmean_tokens": False,
        "pooling_mode_lasttoken": False,
        "include_prompt": True,
        "pooling_mode": "mean",
    }
    # TEI's STConfig requires max_seq_length; 6.x's transformer_task / modality_config are what it infers anyway
    st_config = json.loads((tmp_path / "m" / "sentence_bert_config.json").read_text())
    assert st_config == {"max_seq_length": 48, "do_lower_case": False}
    # the serving length in every file a client reads it from
    tokenizer_config = json.loads((tmp_path / "m" / "tokenizer_config.json").read_text())
    assert tokenizer_config["model_max_length"] == 48
    # the in-memory model is untouched by saving
    assert isinstance(model[1], GTEMeanPooling) and len(model) == 2


def test_saved_model_loads_back_without_deprecation_warnings(tiny_bert_dir, tmp_path, caplog):
    model = gte_st.build_model(str(tiny_bert_dir), max_seq_length=48)
    model.save(str(tmp_path / "m"))
    caplog.clear()
    with warnings.catch_warnings(), caplog.at_level(logging.WARNING):
        warnings.simplefilter("error", FutureWarning)
        warnings.simplefilter("error", DeprecationWarning)
        reloaded = SentenceTransformer(str(tmp_path / "m"))
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == []
    # what 6.x infers from the classic configs is what it wrote
    assert (reloaded[0].transformer_task, reloaded[0].module_output_name) == ("feature-extraction", "token_embeddings")
    assert reloaded[0].modality_config == model[0].modality_config
    assert reloaded.max_seq_length == 48
    assert [type(m).__name__ for m in reloaded] == ["Transformer", "Pooling", "Normalize"]
    assert reloaded[1].pooling_mode == "mean"
    np.testing.assert_allclose(reloaded.encode(SENTENCES), model.encode(SENTENCES), atol=1e-6)
    # saving a model loaded from disk (stock modules, no GTEMeanPooling) keeps the portable configs
    GTEModel(str(tmp_path / "m")).save(str(tmp_path / "again"))
    again = json.loads((tmp_path / "again" / "1_Pooling" / "config.json").read_text())
    assert again["pooling_mode_mean_tokens"] is True


@pytest.mark.parametrize("modes", [("cls", "mean"), ("mean", "cls")])
def test_concatenated_poolings_save_in_the_classic_schema_when_they_can(modes, tiny_bert_dir, tmp_path, caplog):
    """Several pooling modes concatenate in the classic flags' order (cls, max, mean, ...) in sentence-transformers
    < 5.4: that order is written as flags alone, any other keeps a ``pooling_mode`` list, loadable by 5.4+ only."""
    from sentence_transformers.sentence_transformer.modules import Pooling

    transformer = SentenceTransformer(str(tiny_bert_dir))[0]
    model = GTEModel(modules=[transformer, Pooling(32, pooling_mode=modes)])
    with caplog.at_level(logging.WARNING):
        model.save(str(tmp_path / "m"))
    config = json.loads((tmp_path / "m" / "1_Pooling" / "config.json").read_text())
    assert config["pooling_mode_cls_token"] and config["pooling_mode_mean_tokens"]
    classic = modes == ("cls", "mean")
    assert config.get("pooling_mode") == (None if classic else list(modes))
    assert any("5.4+ only" in r.getMessage() for r in caplog.records) != classic
    reloaded = SentenceTransformer(str(tmp_path / "m"))
    assert reloaded[1].pooling_mode == modes
    np.testing.assert_allclose(reloaded.encode(SENTENCES), model.encode(SENTENCES), atol=1e-6)


def test_unnormalized_model_saves_without_normalize(tiny_bert_dir, tmp_path):
    model = gte_st.build_model(str(tiny_bert_dir), normalize=False)
    model.save(str(tmp_path / "m"))
    modules = json.loads((tmp_path / "m" / "modules.json").read_text())
    assert [m["path"] for m in modules] == ["", "1_Pooling"]
    reloaded = SentenceTransformer(str(tmp_path / "m"))
    np.testing.assert_allclose(reloaded.encode(SENTENCES), model.encode(SENTENCES), atol=1e-6)


@pytest.mark.parametrize("which", ["tiny", "minilm"])
def test_portable_load_without_gte_st(which, tiny_bert_dir, minilm_dir, tmp_path):
    model = gte_st.build_model(str(tiny_bert_dir if which == "tiny" else minilm_dir))
    model.save(str(tmp_path / "model"))
    expected = model.encode(SENTENCES, batch_size=2)
    module_names = load_in_clean_interpreter(tmp_path / "model", tmp_path / "emb.npy")
    assert module_names == ["Transformer", "Pooling", "Normalize"]
    got = np.load(tmp_path / "emb.npy")
    assert np.abs(got - expected).max() <= 1e-6
