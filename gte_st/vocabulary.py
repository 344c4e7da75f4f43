"""What a model's vocabulary cannot read, and teaching a WordPiece model the tokens it lacks.

**The [UNK] guard.** An English WordPiece vocabulary (BERT, MiniLM, the offline all-MiniLM-L6-v2) reads most of a
Chinese, Russian or Arabic text as ``[UNK]``: the model then embeds runs of one and the same token, and every such
text looks alike. :func:`unknown_token_shares` measures the share of ``[UNK]`` among the tokens of a sample of texts
(:func:`gte_st.encoding.unknown_token_share`, the counting tokenizer of the encode path: milliseconds);
:func:`warn_unknown_tokens` (``gte-st eval``, ``index``, ``dedup``, ``cluster``) warns once per input above
:data:`UNKNOWN_TOKEN_WARNING_SHARE`, and :func:`check_unknown_tokens` (``gte-st train``) also refuses to train above
:data:`UNKNOWN_TOKEN_ERROR_SHARE` unless allowed.

**The vocabulary extension.** :func:`unknown_pieces` finds the pieces a WordPiece vocabulary lacks for the words of
some texts -- the words it maps to ``[UNK]``, split the way the tokenizer's own normaliser and pre-tokeniser split
them: a Chinese/Japanese/Korean ideograph is a word of its own (BERT's pre-tokeniser isolates each one), so the
pieces are single characters; a word of another script needs each missing character as a word-initial piece and as
a ``##`` continuation piece, after which WordPiece can spell every such word. :func:`extend_vocabulary` adds pieces
to the tokenizer's WordPiece vocabulary (``tokenizer.json``: they are ordinary vocabulary entries, so stock
``SentenceTransformer`` / transformers / TEI read them as single tokens), grows the input embeddings and initialises
the new rows (:data:`INIT_METHODS`); :func:`new_rows_only` lets the new rows learn at a rate of their own.
"""

from __future__ import annotations

import json
import logging
import tempfile
import unicodedata
import weakref
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from gte_st.encoding import unknown_token_share

logger = logging.getLogger(__name__)

# Above this share of [UNK] tokens a warning names the input: English text on an English vocabulary stays far below
# (a stray emoji or symbol), while one word in twenty unreadable already blurs what the text says.
UNKNOWN_TOKEN_WARNING_SHARE = 0.05
# Above this share training stops (unless --allow_unknown_tokens): more than half of what the model would learn from
# is one and the same token, so training teaches it to embed [UNK] runs rather than the text.
UNKNOWN_TOKEN_ERROR_SHARE = 0.5
# Texts per column measured: enough for a share within about a percentage point, in milliseconds.
SAMPLE_SIZE = 2000

# How the embedding row of a new token starts (``--extend_vocab_init``), unless the token has a decomposition:
# "unk": the [UNK] row, so the extended model embeds every text exactly as the base model did and training moves the
#   new rows apart from there; "mean": the mean of the existing rows; "random": a draw from a normal distribution
#   with the existing rows' per-dimension mean and standard deviation, so each new token is told apart from the first
#   step. A token whose NFKC form the old vocabulary spells without [UNK] (full-width "，" is ",", "ａ" is "a")
#   starts from the mean of the rows of those pieces, whatever the method.
INIT_METHODS = ("unk", "mean", "random")

# The embedding rows extend_vocabulary added to a model in this process, as [first, end) (successive extensions
# append, so they form one range).
_NEW_ROWS: weakref.WeakKeyDictionary[torch.nn.Module, tuple[int, int]] = weakref.WeakKeyDictionary()


def _tokenizer_of(model_or_tokenizer: Any) -> Any:
    """The (Hugging Face) tokenizer of a SentenceTransformer, or the tokenizer itself."""
    tokenizer = getattr(model_or_tokenizer, "tokenizer", None)
    return tokenizer if tokenizer is not None else model_or_tokenizer


def _sample(texts: Sequence[str], size: int) -> list[str]:
    """Up to ``size`` texts spread evenly over ``texts`` (deterministic; a file's sections all count)."""
    texts = [t for t in texts if isinstance(t, str)]
    if len(texts) <= size:
        return texts
    step = len(texts) / size
    return [texts[int(i * step)] for i in range(size)]


def unknown_token_shares(
    model_or_tokenizer: Any, columns: Mapping[str, Sequence[str]], sample_size: int = SAMPLE_SIZE
) -> dict[str, float]:
    """The share of ``[UNK]`` among the tokens of each column's texts (a sample of ``sample_size`` texts each).
    Columns the tokenizer cannot measure (no unknown token, a slow tokenizer, no tokens) are left out."""
    tokenizer = _tokenizer_of(model_or_tokenizer)
    shares: dict[str, float] = {}
    for name, texts in columns.items():
        share = unknown_token_share(tokenizer, _sample(texts, sample_size))
        if share is not None:
            shares[name] = share
    return shares


def unknown_token_message(shares: Mapping[str, float], where: str) -> str:
    """One line: how much of ``where`` (per column) is ``[UNK]``, and what to do about it."""
    worst = sorted(shares.items(), key=lambda item: -item[1])
    columns = ", ".join(f"{name} {100 * share:.0f}%" for name, share in worst)
    return (
        f"{where}: {100 * worst[0][1]:.0f}% of the tokens are [UNK] ({columns}): the model's vocabulary lacks "
        "this text's characters or words, so it cannot read them; use a base model whose vocabulary covers the "
        "language (e.g. gte-multilingual-base, made loadable with `gte-st convert`), or teach this one the missing "
        "tokens with `gte-st train --extend_vocab auto` (see docs/chinese.md)"
    )


# The inputs already warned about, per tokenizer (a new or extended tokenizer warns again).
_WARNED: weakref.WeakKeyDictionary[Any, set[tuple[str, int]]] = weakref.WeakKeyDictionary()


def _warn_once(tokenizer: Any, shares: Mapping[str, float], where: str) -> None:
    warned = _WARNED.setdefault(tokenizer, set())
    if shares and max(shares.values()) > UNKNOWN_TOKEN_WARNING_SHARE and (where, len(tokenizer)) not in warned:
        warned.add((where, len(tokenizer)))
        logger.warning(unknown_token_message(shares, where))


def warn_unknown_tokens(model: Any, texts: Sequence[str] | Mapping[str, Sequence[str]], where: str) -> float | None:
    """Log one warning when more than :data:`UNKNOWN_TOKEN_WARNING_SHARE` of the tokens of ``texts`` (a sample; a
    mapping of column name to texts, or one list) are ``[UNK]`` for ``model`` (a SentenceTransformer, a tokenizer,
    or a model directory whose tokenizer is read); ``where`` names the input (file). Warns once per input and
    tokenizer. Returns the largest share, or ``None`` when it cannot be measured."""
    tokenizer = _load_tokenizer(model) if isinstance(model, (str, Path)) else _tokenizer_of(model)
    if tokenizer is None:
        return None
    shares = unknown_token_shares(tokenizer, texts if isinstance(texts, Mapping) else {"texts": texts})
    _warn_once(tokenizer, shares, where)
    return max(shares.values()) if shares else None


def check_unknown_tokens(
    model: Any, columns: Mapping[str, Sequence[str]], where: str, *, allow: bool = False
) -> dict[str, float]:
    """The training guard: warn as :func:`warn_unknown_tokens` does, and raise ``ValueError`` (one line, naming
    ``where`` and the option that overrides it) when a column's share exceeds :data:`UNKNOWN_TOKEN_ERROR_SHARE` and
    ``allow`` is false. Returns the shares per column."""
    tokenizer = _tokenizer_of(model)
    shares = unknown_token_shares(tokenizer, columns)
    if shares and max(shares.values()) > UNKNOWN_TOKEN_ERROR_SHARE and not allow:
        raise ValueError(
            unknown_token_message(shares, where)
            + f". Training stops above {100 * UNKNOWN_TOKEN_ERROR_SHARE:.0f}%; pass --allow_unknown_tokens to train "
            "anyway"
        )
    _warn_once(tokenizer, shares, where)
    return shares


def _load_tokenizer(path: str | Path) -> Any:
    """The tokenizer of a model directory (its first module's folder for a sentence-transformers layout), or None
    when there is none to read (a Hub id offline, a directory without tokenizer files)."""
    from transformers import AutoTokenizer

    folder = Path(path).expanduser()
    if not folder.is_dir():
        return None
    modules = folder / "modules.json"
    if modules.is_file():
        try:
            first = json.loads(modules.read_text(encoding="utf-8"))[0].get("path", "")
        except (ValueError, IndexError, AttributeError):
            first = ""
        folder = folder / first
    try:
        return AutoTokenizer.from_pretrained(str(folder))
    except (OSError, ValueError):
        return None


# --------------------------------------------------------------------------------------------------------------
# The vocabulary extension


def _wordpiece_state(tokenizer: Any) -> dict[str, Any]:
    """The ``tokenizer.json`` state of a fast WordPiece tokenizer; ``ValueError`` for any other kind."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        raise ValueError(f"--extend_vocab needs a fast (Rust) tokenizer; {type(tokenizer).__name__} is not one")
    state = json.loads(backend.to_str())
    if state["model"]["type"] != "WordPiece":
        raise ValueError(
            f"--extend_vocab extends WordPiece vocabularies (BERT, MiniLM, GTE); this tokenizer is "
            f"{state['model']['type']}: a BPE or Unigram vocabulary of a multilingual model rarely lacks a script"
        )
    return state


def unknown_pieces(tokenizer: Any, texts: Iterable[str]) -> Counter[str]:
    """The WordPiece pieces ``tokenizer`` lacks for the words of ``texts`` that it maps to ``[UNK]``, with how often
    each is needed (once per occurrence of a word that needs it).

    Words are what the tokenizer's own normaliser and pre-tokeniser make of each text. A word maps to ``[UNK]`` when
    WordPiece cannot spell it from its vocabulary; the pieces that spell it are its first character (word-initial)
    and the ``##`` continuation form of each further character, of which the missing ones are counted. A Chinese,
    Japanese or Korean ideograph is a word of its own, so for such text the pieces are the characters. Words longer
    than WordPiece's ``max_input_chars_per_word`` stay [UNK] whatever the vocabulary and are skipped."""
    state = _wordpiece_state(tokenizer)
    backend = tokenizer.backend_tokenizer
    vocab = state["model"]["vocab"]
    prefix = state["model"]["continuing_subword_prefix"]
    longest = state["model"]["max_input_chars_per_word"]
    unk = state["model"]["unk_token"]
    special = {token["content"] for token in state["added_tokens"]}
    normalizer, pre_tokenizer = backend.normalizer, backend.pre_tokenizer
    words: Counter[str] = Counter()
    for text, count in Counter(t for t in texts if isinstance(t, str)).items():
        normalized = normalizer.normalize_str(text) if normalizer is not None else text
        pieces = pre_tokenizer.pre_tokenize_str(normalized) if pre_tokenizer is not None else []
        words.update({word: count for word, _ in pieces} if pre_tokenizer is not None else Counter(normalized.split()))
    missing: Counter[str] = Counter()
    for word, count in words.items():
        if word in special or len(word) > longest:
            continue
        if all(token.value != unk for token in backend.model.tokenize(word)):
            continue
        for i, char in enumerate(word):
            piece = char if i == 0 else prefix + char
            if piece not in vocab:
                missing[piece] += count
    return missing


def read_token_file(path: str | Path, tokenizer: Any) -> list[str]:
    """The tokens of a ``--extend_vocab FILE``: one per line (blank lines and ``# `` comments skipped), normalised as
    the tokenizer normalises text (an uncased vocabulary holds lower-case tokens); a ``##`` prefix marks a
    continuation piece. A line that normalises to more than one word is an error naming the line."""
    state = _wordpiece_state(tokenizer)
    prefix = state["model"]["continuing_subword_prefix"]
    backend = tokenizer.backend_tokenizer
    file = Path(path).expanduser()
    if not file.is_file():
        raise FileNotFoundError(
            f"--extend_vocab {path}: file not found (give a file of tokens, one per line, or auto)"
        )
    try:
        lines = file.read_text(encoding="utf-8-sig").splitlines()
    except UnicodeDecodeError as exc:
        raise ValueError(f"--extend_vocab {path}: not UTF-8 text ({exc.reason})") from None
    tokens: list[str] = []
    for number, line in enumerate(lines, start=1):
        token = line.strip()
        if not token or line.startswith("# "):
            continue
        continuation = token.startswith(prefix) and len(token) > len(prefix)
        body = token[len(prefix) :] if continuation else token
        normalized = backend.normalizer.normalize_str(body).strip() if backend.normalizer is not None else body
        if not normalized or any(c.isspace() for c in normalized):
            raise ValueError(
                f"--extend_vocab {path}:{number}: {token!r} is not one token (it normalises to {normalized!r}); "
                "give one word or character per line"
            )
        tokens.append(prefix + normalized if continuation else normalized)
    return list(dict.fromkeys(tokens))


@dataclass
class VocabularyExtension:
    """What :func:`extend_vocabulary` did: the tokens added (ids ``first_id`` onwards), the first new embedding
    row, how the rows were initialised, and which tokens started from a decomposition."""

    tokens: list[str]
    first_id: int
    init: str
    decomposed: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "added": len(self.tokens),
            "first_id": self.first_id,
            "init": self.init,
            "decomposed": len(self.decomposed),
            "already_known": len(self.skipped),
            "tokens_head": self.tokens[:50],
        }


def _input_embeddings(model: Any) -> torch.nn.Embedding:
    transformer = model[0]
    auto_model = getattr(transformer, "auto_model", None) or getattr(transformer, "model", None)
    if auto_model is None or not hasattr(auto_model, "get_input_embeddings"):
        raise ValueError(f"--extend_vocab needs a transformers first module, got {type(transformer).__name__}")
    return auto_model


def _decomposition_ids(tokenizer: Any, token: str, prefix: str) -> list[int] | None:
    """Ids of the pieces the old vocabulary spells the NFKC form of ``token`` with, when it needs no [UNK]."""
    continuation = token.startswith(prefix) and len(token) > len(prefix)
    body = token[len(prefix) :] if continuation else token
    folded = unicodedata.normalize("NFKC", body)
    if folded == body or not folded.strip():
        return None
    ids = tokenizer.backend_tokenizer.encode(folded, add_special_tokens=False).ids
    if not ids or tokenizer.unk_token_id in ids:
        return None
    if continuation:  # the continuation form of the first piece, when the vocabulary has it
        first = tokenizer.convert_ids_to_tokens(ids[0])
        cont = tokenizer.backend_tokenizer.token_to_id(prefix + first)
        if cont is not None:
            ids = [cont, *ids[1:]]
    return ids


def extend_vocabulary(model: Any, tokens: Sequence[str], init: str = "random", seed: int = 0) -> VocabularyExtension:
    """Add ``tokens`` to the WordPiece vocabulary of ``model``'s tokenizer (as ordinary vocabulary entries, ids after
    the last existing one), grow the input embeddings to match and initialise the new rows (:data:`INIT_METHODS`;
    ``seed`` for ``"random"``). Tokens already in the vocabulary are skipped. The model's tokenizer is replaced by
    the extended one (loaded back from its saved files, so what is trained is what a saved model loads with)."""
    if init not in INIT_METHODS:
        raise ValueError(f"--extend_vocab_init must be one of {list(INIT_METHODS)}, got {init!r}")
    from transformers import AutoTokenizer

    tokenizer = _tokenizer_of(model)
    state = _wordpiece_state(tokenizer)
    vocab: dict[str, int] = state["model"]["vocab"]
    prefix = state["model"]["continuing_subword_prefix"]
    known = set(vocab) | {token["content"] for token in state["added_tokens"]}
    new = [t for t in dict.fromkeys(tokens) if t not in known]
    skipped = [t for t in dict.fromkeys(tokens) if t in known]
    ids = list(vocab.values()) + [token["id"] for token in state["added_tokens"]]
    first_id = max(ids) + 1
    auto_model = _input_embeddings(model)
    embeddings = auto_model.get_input_embeddings()
    old_rows = embeddings.weight.shape[0]
    extension = VocabularyExtension(tokens=new, first_id=first_id, init=init, skipped=skipped)
    if not new:
        return extension
    for offset, token in enumerate(new):
        vocab[token] = first_id + offset
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer.save_pretrained(tmp)
        (Path(tmp) / "tokenizer.json").write_text(json.dumps(state, ensure_ascii=False), encoding="utf-8")
        extended = AutoTokenizer.from_pretrained(tmp)
    # The tokenizer is the first module's processor (sentence-transformers 6) or its tokenizer attribute.
    transformer = model[0]
    if getattr(transformer, "processor", None) is tokenizer:
        transformer.processor = extended
    else:
        transformer.tokenizer = extended

    rows = max(old_rows, first_id + len(new))
    known_rows = min(old_rows, first_id)
    old = embeddings.weight.detach()[:known_rows].float()
    auto_model.resize_token_embeddings(rows, mean_resizing=False)
    weight = auto_model.get_input_embeddings().weight
    with torch.no_grad():
        if init == "unk":
            fill = old[tokenizer.unk_token_id].expand(len(new), -1).clone()
        elif init == "mean":
            fill = old.mean(dim=0).expand(len(new), -1).clone()
        else:
            generator = torch.Generator().manual_seed(seed)
            noise = torch.randn(len(new), old.shape[1], generator=generator)
            fill = old.mean(dim=0) + noise * old.std(dim=0)
        for offset, token in enumerate(new):
            pieces = _decomposition_ids(tokenizer, token, prefix)
            if pieces is not None:
                fill[offset] = old[pieces].mean(dim=0)
                extension.decomposed.append(token)
        weight[first_id : first_id + len(new)] = fill.to(weight.dtype)
    first, _ = _NEW_ROWS.get(model, (first_id, first_id))
    _NEW_ROWS[model] = (min(first, first_id), first_id + len(new))
    logger.info(
        f"vocabulary extended by {len(new)} tokens (ids {first_id}-{first_id + len(new) - 1}, init {init}, "
        f"{len(extension.decomposed)} from a decomposition): {' '.join(new[:30])}{' ...' if len(new) > 30 else ''}"
    )
    return extension


def new_token_rows(model: Any) -> tuple[torch.nn.Parameter, int, int] | None:
    """(input-embedding matrix, first new row, number of new rows) of a model :func:`extend_vocabulary` extended in
    this process, else None."""
    if model not in _NEW_ROWS:
        return None
    first, end = _NEW_ROWS[model]
    return _input_embeddings(model).get_input_embeddings().weight, first, end - first


def new_rows_only(grad: torch.Tensor, first_new: int, count: int) -> torch.Tensor:
    """``grad`` (of the input-embedding matrix) with every row but the new ones (``first_new`` onwards, ``count`` of
    them) zeroed: a gradient hook with which an optimizer step at the new tokens' learning rate moves only those
    rows. The rows from before the extension keep the base model's embeddings, which the other texts (English,
    digits, punctuation) rely on.

    A matrix cannot hold two learning rates in one Adam group, and scaling the old rows' gradient down instead would
    not slow them: Adam divides the gradient by its own running scale. With a zero gradient from the first step an
    Adam row does not move (its moments stay zero), as long as its group has no weight decay."""
    kept = torch.zeros_like(grad)
    kept[first_new : first_new + count] = grad[first_new : first_new + count]
    return kept


__all__ = [
    "INIT_METHODS",
    "SAMPLE_SIZE",
    "UNKNOWN_TOKEN_ERROR_SHARE",
    "UNKNOWN_TOKEN_WARNING_SHARE",
    "VocabularyExtension",
    "check_unknown_tokens",
    "extend_vocabulary",
    "new_rows_only",
    "new_token_rows",
    "read_token_file",
    "unknown_pieces",
    "unknown_token_message",
    "unknown_token_shares",
    "warn_unknown_tokens",
]
