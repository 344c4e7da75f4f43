"""Classification: logistic regression on frozen embeddings; accuracy and macro-F1."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from gte_st.encoding import encode
from gte_st.evaluation.embedding import ModelOrLoader, resolve_model
from gte_st.evaluation.readers import read_labelled_texts
from gte_st.evaluation.result import EvalResult, dataset_name
from gte_st.evaluation.sampling import stratified_subsample
from gte_st.vocabulary import warn_unknown_tokens


def evaluate_classification(
    model: ModelOrLoader,
    path: str | Path,
    *,
    split: str | None = None,
    train_path: str | Path | None = None,
    train_split: str = "train",
    n_folds: int = 5,
    batch_size: int = 64,
    precision: str = "fp32",
    compile: bool = False,
    max_samples: int | None = None,
    seed: int = 42,
    dataset: str | None = None,
) -> EvalResult:
    """Accuracy (main score) and macro-F1 of a logistic regression (scikit-learn, ``max_iter=1000``) trained on the
    embeddings of labelled texts.

    Three protocols, picked from what the data offers:

    * ``train_path`` given: fit on it (its ``train_split`` rows if it has a ``split`` column), test on ``path``;
    * ``path`` has a ``split`` column holding ``train_split`` and ``split``: fit on the one, test on the other;
    * otherwise: stratified ``n_folds``-fold cross-validation over ``path`` (e.g. Banking77, of which only the
      train file is at hand); metrics are the mean over folds.

    Args:
        path: csv/tsv with a header naming a text and a label column (``text,category`` for Banking77), or jsonl.
        max_samples: Randomly keep at most N texts (per file) before encoding (seeded).
        compile: Encode with a ``torch.compile``'d copy of the model (:func:`gte_st.encoding.encode`; torch models
            only): about a minute to compile once, then faster on CPU.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import accuracy_score, f1_score
    from sklearn.model_selection import StratifiedKFold

    def fit_predict(x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray) -> np.ndarray:
        clf = LogisticRegression(max_iter=1000, random_state=seed)
        return clf.fit(x_train, y_train).predict(x_test)

    test_split = split or "test"
    if train_path is not None:
        train = read_labelled_texts(train_path, train_split)
        test = read_labelled_texts(path, test_split)
        protocol = f"fit on {Path(train_path).name}"
    else:
        full = read_labelled_texts(path)
        has_splits = full.splits is not None and {train_split, test_split} <= set(full.splits)
        train = read_labelled_texts(path, train_split) if has_splits else None
        test = read_labelled_texts(path, test_split) if has_splits else full
        protocol = f"fit on split {train_split}" if has_splits else f"{n_folds}-fold stratified cross-validation"

    test_texts, y_test = stratified_subsample(test, max_samples, seed)
    if train is None:
        _, counts = np.unique(y_test, return_counts=True)
        folds = min(n_folds, int(counts.min()))
        if folds < 2:
            raise ValueError(f"{path}: every label needs at least 2 texts for cross-validation")
    model = resolve_model(model)  # after the data is read and checked
    warn_unknown_tokens(model, {"text": test_texts}, str(path))
    x_test = encode(model, test_texts, batch_size=batch_size, precision=precision, compile=compile)
    if train is not None:
        train_texts, y_train = stratified_subsample(train, max_samples, seed)
        x_train = encode(model, train_texts, batch_size=batch_size, precision=precision, compile=compile)
        pred = fit_predict(x_train, y_train, x_test)
        accuracy, f1 = accuracy_score(y_test, pred), f1_score(y_test, pred, average="macro")
        split_name = test_split
    else:
        accs, f1s = [], []
        for train_idx, test_idx in StratifiedKFold(folds, shuffle=True, random_state=seed).split(x_test, y_test):
            pred = fit_predict(x_test[train_idx], y_test[train_idx], x_test[test_idx])
            accs.append(accuracy_score(y_test[test_idx], pred))
            f1s.append(f1_score(y_test[test_idx], pred, average="macro"))
        accuracy, f1 = float(np.mean(accs)), float(np.mean(f1s))
        protocol = f"{folds}-fold stratified cross-validation"
        split_name = split or f"cv{folds}"
    return EvalResult(
        task_type="Classification",
        dataset=dataset or dataset_name(path),
        split=split_name,
        metrics={"accuracy": accuracy, "f1": f1},
        main_score="accuracy",
        details={
            "texts": len(test_texts),
            "labels": len(set(y_test.tolist())),
            "protocol": protocol,
            "encode_precision": precision,
            "encode_compile": compile,
        },
    )
