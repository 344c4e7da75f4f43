from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from conftest import stsb_rows
from datasets import Dataset
from sentence_transformers import SentenceTransformer, SentenceTransformerTrainer, SentenceTransformerTrainingArguments

import gte_st
from gte_st.losses import (
    CachedLoss,
    NormalizedMSELoss,
    ScoreDistillationConfig,
    SelfDistillationConfig,
    SelfDistillationLoss,
    UniformityConfig,
)
from gte_st.losses.self_distillation import TEACHER_CONTEXT
from gte_st.training.loss import build_loss

TESTS_DIR = Path(__file__).resolve().parent


def compose(model, mini_batch_size=None, **options):
    """NormalizedMSELoss with the flat ``--loss_kwargs`` options, composed as the training pipeline composes it
    (terms wrap the core; CachedLoss wraps them when ``mini_batch_size`` is set)."""
    return build_loss(model, "mse", mini_batch_size=mini_batch_size, **options)


def reference_loss(q, d, negs, margin, weight, symmetric, texts=None):
    """The loss written out literally, one pair at a time, in float64."""
    q, d = F.normalize(q.double(), dim=-1), F.normalize(d.double(), dim=-1)
    negs = [F.normalize(n.double(), dim=-1) for n in negs]
    batch = q.size(0)
    positive = sum(((q[i] - d[i]) ** 2).sum() for i in range(batch)) / batch
    candidates = [(d[j], ("d", 0, j)) for j in range(batch)]
    candidates += [(n[j], ("n", k, j)) for k, n in enumerate(negs) for j in range(batch)]

    def text(kind, column, row):
        if texts is None:
            return (kind, column, row)
        return texts[0][row] if kind == "q" else texts[2 + column if kind == "n" else 1][row]

    def hinge_mean(rows, vectors, candidates_of):
        terms = []
        for i in rows:
            own = {text("q", 0, i), text("d", 0, i)}
            for vector, key in candidates_of(i):
                if key == ("d", 0, i) or key == ("q", 0, i) or text(*key) in own:
                    continue
                terms.append(torch.relu(vectors[i] @ vector - margin) ** 2)
        return sum(terms) / len(terms)

    negative = hinge_mean(range(batch), q, lambda i: candidates)
    if symmetric:
        backward = hinge_mean(range(batch), d, lambda i: [(q[j], ("q", 0, j)) for j in range(batch)])
        negative = (negative + backward) / 2
    return positive + weight * negative


@pytest.mark.parametrize(
    "num_negatives,symmetric,margin,weight", [(0, False, 0.1, 1.0), (2, False, 0.0, 0.5), (1, True, 0.3, 2.0)]
)
def test_loss_matches_formula(num_negatives, symmetric, margin, weight):
    torch.manual_seed(0)
    # correlated embeddings so that many cosines exceed the margin
    base = torch.randn(6, 16)
    q, d = base + 0.3 * torch.randn(6, 16), base + 0.3 * torch.randn(6, 16)
    negs = [base.roll(k + 1, 0) + 0.5 * torch.randn(6, 16) for k in range(num_negatives)]
    loss = NormalizedMSELoss(
        None,
        weighting="mean",
        negative_penalty="squared_hinge",
        margin=margin,
        negative_weight=weight,
        symmetric=symmetric,
    )
    value = loss.compute_loss_from_embeddings([q, d, *negs])
    expected = reference_loss(q, d, negs, margin, weight, symmetric)
    assert value.item() == pytest.approx(expected.item(), abs=1e-6)


def test_duplicate_texts_are_never_negatives_of_each_other():
    torch.manual_seed(1)
    q, d, n = torch.randn(5, 8), torch.randn(5, 8), torch.randn(5, 8)
    texts = [["a0", "a1", "a2", "a3", "a0"], ["p0", "p1", "p0", "a1", "p4"], ["n0", "p1", "n2", "n3", "n4"]]
    fingerprints = [torch.tensor([hash(t) for t in column]) for column in texts]
    loss = NormalizedMSELoss(
        None, weighting="mean", negative_penalty="squared_hinge", margin=-1.0, negative_weight=1.0, symmetric=True
    )
    value = loss.compute_loss_from_embeddings([q, d, n], context={"fingerprints": fingerprints})
    expected = reference_loss(q, d, [n], -1.0, 1.0, True, texts=texts)
    assert value.item() == pytest.approx(expected.item(), abs=1e-6)
    without_masking = loss.compute_loss_from_embeddings([q, d, n])
    assert without_masking.item() != pytest.approx(value.item(), abs=1e-4)


def test_bad_input_errors():
    loss = NormalizedMSELoss(None)
    with pytest.raises(ValueError, match="at least 2"):
        loss.compute_loss_from_embeddings([torch.randn(1, 4), torch.randn(1, 4)])
    with pytest.raises(ValueError, match="positive column"):
        loss.compute_loss_from_embeddings([torch.randn(3, 4), torch.full((3, 4), float("nan"))])
    with pytest.raises(ValueError, match="negative_1 column"):
        loss.compute_loss_from_embeddings([torch.randn(3, 4), torch.randn(3, 4), torch.full((3, 4), float("inf"))])
    with pytest.raises(ValueError, match="margin"):
        NormalizedMSELoss(None, margin=1.5)
    with pytest.raises(ValueError, match="negative_weight"):
        NormalizedMSELoss(None, negative_weight=-1)
    for bad in ({"weighting": "max"}, {"negative_penalty": "cube"}, {"temperature": 0.0}, {"positive_margin": 1.5}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            NormalizedMSELoss(None, **bad)
    for config, bad in ((SelfDistillationConfig, {"distillation_target": "logits"}),
                        (SelfDistillationConfig, {"distillation_weight": -0.1}),
                        (UniformityConfig, {"uniformity_t": -1.0}), (UniformityConfig, {"uniformity_weight": -1.0}),
                        (ScoreDistillationConfig, {"score_distillation_weight": -1.0})):  # fmt: skip
        with pytest.raises(ValueError, match=next(iter(bad))):
            config(**bad).validate()
    # a term checks its options when built, too; self-distillation needs the teacher's embeddings (batch context)
    with pytest.raises(ValueError, match="distillation_target"):
        SelfDistillationLoss(None, NormalizedMSELoss(None), distillation_target="logits", teacher=torch.nn.Identity())
    distilled = SelfDistillationLoss(None, NormalizedMSELoss(None), teacher=torch.nn.Identity())
    with pytest.raises(ValueError, match="teacher"):
        distilled.compute_loss_from_embeddings([torch.randn(3, 4)] * 2)


def test_bad_columns_through_the_model(tiny_bert_dir):
    model = gte_st.build_model(str(tiny_bert_dir))
    for loss in (NormalizedMSELoss(model), CachedLoss(model, NormalizedMSELoss(model), mini_batch_size=2)):
        with pytest.raises(ValueError, match="1 column"):
            loss([model.preprocess(["a", "b"])], None)
        with pytest.raises(ValueError, match="anchor=3, positive=2"):
            loss([model.preprocess(["a", "b", "c"]), model.preprocess(["d", "e"])], None)


def features(model, columns):
    return [model.preprocess(column) for column in columns]


def gradients(model) -> torch.Tensor:
    return torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])


@pytest.mark.parametrize("symmetric", [False, True])
def test_cached_loss_equals_uncached(tiny_bert_dir, symmetric):
    model = gte_st.build_model(str(tiny_bert_dir))
    model.eval()  # no dropout: both losses see the same embeddings
    rows = stsb_rows("train")[:13]
    columns = [[r[1] for r in rows], [r[2] for r in rows], [r[2] for r in rows[5:] + rows[:5]]]
    columns[0][7] = columns[0][2]  # a duplicate anchor text
    results = []
    for loss in (
        # margin 0: every in-batch pair with a positive cosine contributes, the strictest comparison
        NormalizedMSELoss(
            model,
            weighting="mean",
            negative_penalty="squared_hinge",
            margin=0.0,
            negative_weight=1.0,
            symmetric=symmetric,
        ),
        CachedLoss(
            model,
            NormalizedMSELoss(
                model,
                weighting="mean",
                negative_penalty="squared_hinge",
                margin=0.0,
                negative_weight=1.0,
                symmetric=symmetric,
            ),
            mini_batch_size=4,
        ),
    ):
        model.zero_grad()
        value = loss(features(model, columns), None)
        value.backward()
        results.append((value.detach(), gradients(model)))
    (loss_a, grad_a), (loss_b, grad_b) = results
    torch.testing.assert_close(loss_b, loss_a, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(grad_b, grad_a, atol=1e-5, rtol=1e-4)


def test_gradient_steps_raise_positive_and_lower_negative_cosine(minilm_dir):
    """A few SGD steps on real STS-B pairs (score >= 4) increase positive cosine and decrease in-batch cosine."""
    torch.manual_seed(0)
    model = gte_st.build_model(str(minilm_dir), max_seq_length=32)
    rows = [r for r in stsb_rows("train") if r[0] >= 4.0][:12]
    anchors, positives = [r[1] for r in rows], [r[2] for r in rows]

    def cosines() -> tuple[float, float]:
        with torch.no_grad():
            a = model.encode(anchors, convert_to_tensor=True)
            p = model.encode(positives, convert_to_tensor=True)
        sim = a @ p.T
        off_diagonal = sim[~torch.eye(len(rows), dtype=torch.bool)]
        return sim.diagonal().mean().item(), off_diagonal.mean().item()

    pos_before, neg_before = cosines()
    loss = NormalizedMSELoss(model)  # the defaults
    optimizer = torch.optim.AdamW(model.parameters(), lr=5e-5)
    model.train()
    for _ in range(3):
        optimizer.zero_grad()
        loss(features(model, [anchors, positives]), None).backward()
        optimizer.step()
    pos_after, neg_after = cosines()
    assert pos_after > pos_before
    assert neg_after < neg_before


@pytest.mark.parametrize("loss_name", ["NormalizedMSELoss", "CachedLoss"])
def test_trainer_smoke(loss_name, tiny_bert_dir, tmp_path):
    model = gte_st.build_model(str(tiny_bert_dir))
    rows = stsb_rows("train")[:24]
    dataset = Dataset.from_dict(
        {
            "anchor": [r[1] for r in rows],
            "positive": [r[2] for r in rows],
            "negative": [r[2] for r in rows[1:] + rows[:1]],
        }
    )
    loss = (
        NormalizedMSELoss(model)
        if loss_name == "NormalizedMSELoss"
        else CachedLoss(model, NormalizedMSELoss(model), mini_batch_size=3)
    )
    args = SentenceTransformerTrainingArguments(
        output_dir=str(tmp_path / "out"),
        per_device_train_batch_size=8,
        max_steps=3,
        learning_rate=1e-3,
        report_to=[],
        save_strategy="no",
        logging_steps=1,
        use_cpu=True,
    )
    before = [p.detach().clone() for p in model.parameters()]
    trainer = SentenceTransformerTrainer(model=model, args=args, train_dataset=dataset, loss=loss)
    result = trainer.train()
    assert torch.isfinite(torch.tensor(result.training_loss))
    assert any(not torch.equal(b, p) for b, p in zip(before, model.parameters()))
    model.save(str(tmp_path / "final"))
    reloaded = SentenceTransformer(str(tmp_path / "final"))
    texts = [r[1] for r in rows[:4]]
    torch.testing.assert_close(
        torch.from_numpy(reloaded.encode(texts)), torch.from_numpy(model.encode(texts)), atol=1e-6, rtol=0
    )


def test_config_and_citation(tiny_bert_dir):
    import dataclasses
    import inspect

    from gte_st.training.loss import LOSS_PIECES, describe_loss

    model = gte_st.build_model(str(tiny_bert_dir))
    plain = NormalizedMSELoss(model, margin=0.2, weighting="infonce")
    cached = CachedLoss(model, plain, mini_batch_size=7, mini_batch_num_tokens=99)
    assert cached.get_config_dict() == {"loss": "NormalizedMSELoss", "mini_batch_size": 7, "mini_batch_num_tokens": 99}
    config = plain.get_config_dict()
    assert config["margin"] == 0.2 and config["weighting"] == "infonce" and config["negative_weight"] == 2.0
    # complete, and one set of defaults: every option of a constructor is a field of its config object, with the
    # same default (the model, the wrapped loss, frozen models and the progress bar are not options)
    classes = [NormalizedMSELoss, CachedLoss, *(piece.cls for piece in LOSS_PIECES.values())]
    for cls in classes:
        config_class = {CachedLoss: gte_st.losses.CachedConfig}.get(cls) or cls.config_class
        parameters = {
            name: p.default
            for name, p in inspect.signature(cls.__init__).parameters.items()
            if name not in ("self", "model", "loss", "teacher", "guide", "show_progress_bar")
        }
        defaults = {f.name: f.default for f in dataclasses.fields(config_class) if f.name not in ("teacher", "guide")}
        assert parameters == defaults, cls
    composed = compose(model, mini_batch_size=4, uniformity_weight=0.5, distillation_weight=2.0)
    described = describe_loss(composed)
    assert described["name"] == "CachedLoss(SelfDistillationLoss(UniformityLoss(NormalizedMSELoss)))"
    assert described["config"]["uniformity_weight"] == 0.5 and described["config"]["distillation_weight"] == 2.0
    assert described["config"]["teacher"] == "frozen copy of the initial model"
    assert described["config"]["mini_batch_size"] == 4 and described["config"]["margin"] == -1.0
    json.dumps(described)
    citation = composed.citation
    assert "2308.03281" in citation and "2101.06983" in citation and "2005.10242" in citation


@pytest.mark.distributed
def test_gather_across_two_processes_equals_one_process(tiny_bert_dir, tmp_path):
    """Two CPU processes (gloo) under accelerate launch: with gathering, the rank-averaged loss and gradients equal those of
    one process holding the concatenated batch, for the plain and the cached loss (a duplicate text spans ranks)."""
    # accelerate 1.15's `--cpu --num_processes 2` starts a single process unless MPI is used; `--multi_gpu` starts
    # torchrun, and ACCELERATE_USE_CPU makes every process a CPU (gloo) rank: DistributedType.MULTI_CPU.
    # The checkout under test first (not an installed gte_st elsewhere), then the tests' helpers.
    path = os.pathsep.join([str(TESTS_DIR.parent), str(TESTS_DIR)])
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": path, "ACCELERATE_USE_CPU": "true"}
    command = [
        sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
        "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "29517",
        str(TESTS_DIR / "distributed_loss_check.py"), str(tiny_bert_dir), str(tmp_path / "result.json"),
    ]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, env=env)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    report = json.loads((tmp_path / "result.json").read_text())
    for name, entry in report.items():
        assert entry["loss_gap"] < 1e-5, (name, entry)
        assert entry["grad_gap"] < 1e-5, (name, entry)
        assert entry["loss_gap_without_gather"] > 1e-4, (name, entry)  # the check can fail


def test_symmetric_direction_matters_only_with_hard_negatives():
    """With pairs only, {cos(q_i, d_j)} and {cos(d_i, q_j)} over i != j are the same set of pairs, so the mean over
    them -- unlike a per-row softmax -- is the same in both directions; hard negatives make them differ."""
    torch.manual_seed(3)
    q, d, n = torch.randn(5, 8), torch.randn(5, 8), torch.randn(5, 8)

    def value(symmetric: bool, *columns: torch.Tensor) -> float:
        loss = NormalizedMSELoss(
            None,
            weighting="mean",
            negative_penalty="squared_hinge",
            margin=0.0,
            negative_weight=1.0,
            symmetric=symmetric,
        )
        return loss.compute_loss_from_embeddings(list(columns)).item()

    assert value(True, q, d) == pytest.approx(value(False, q, d), abs=1e-6)
    assert value(True, q, d, n) != pytest.approx(value(False, q, d, n), abs=1e-4)


def reference_options_loss(q, d, negs, *, margin=0.3, weight=1.0, symmetric=False, weighting="mean", tau=0.05,
                           penalty="squared_hinge", positive_margin=1.0, uniformity=0.0, t=2.0):  # fmt: skip
    """Every option written out literally, one anchor at a time, in float64 (no duplicate texts)."""
    q, d = F.normalize(q.double(), dim=-1), F.normalize(d.double(), dim=-1)
    negs = [F.normalize(n.double(), dim=-1) for n in negs]
    batch = q.size(0)
    candidates = [d[j] for j in range(batch)] + [n[j] for n in negs for j in range(batch)]

    def phi(s):
        hinge = torch.relu(s - margin)
        return hinge**2 if penalty == "squared_hinge" else hinge

    def direction(vectors, pool, i):
        """(1 - p_i), the per-row weighted negative penalty and the list of plain penalties for row i."""
        own = vectors[i] @ (d[i] if pool is candidates else q[i])
        others = [c for j, c in enumerate(pool) if j != i]
        s = torch.stack([vectors[i] @ c for c in others])
        p = torch.softmax(torch.cat([own.view(1), s]) / tau, dim=0)[0]
        w = torch.softmax(s / tau, dim=0)
        fade = 1 - p if weighting == "infonce" else torch.tensor(1.0, dtype=torch.float64)
        return fade, fade * (w * phi(s)).sum(), list(phi(s)), s

    directions = [[direction(q, candidates, i) for i in range(batch)]]
    if symmetric:
        directions.append([direction(d, [q[j] for j in range(batch)], i) for i in range(batch)])
    total = 0.0
    for i in range(batch):
        distance = ((q[i] - d[i]) ** 2).sum()
        distance = torch.relu(distance - (2 - 2 * positive_margin))
        fade = sum(rows[i][0] for rows in directions) / len(directions)
        total = total + fade * distance / batch
    negative = 0.0
    for rows in directions:
        if weighting == "mean":
            flat = [x for row in rows for x in row[2]]
            negative = negative + sum(flat) / len(flat)
        else:
            negative = negative + sum(row[1] for row in rows) / batch
    total = total + weight * negative / len(directions)
    if uniformity:
        u = sum(torch.log(torch.exp(-t * (2 - 2 * row[3])).mean()) for row in directions[0]) / batch
        total = total + uniformity * u
    return total


@pytest.mark.parametrize(
    "options",
    [
        {"weighting": "hardness", "tau": 0.1},
        {"weighting": "hardness", "tau": 0.05, "symmetric": True, "penalty": "hinge", "margin": 0.0},
        {"weighting": "infonce", "tau": 0.1, "weight": 2.0},
        {"weighting": "infonce", "tau": 0.05, "symmetric": True, "margin": -1.0, "penalty": "hinge"},
        {"positive_margin": 0.6, "weight": 3.0, "margin": 0.1},
        {"uniformity": 0.5, "t": 3.0, "weight": 0.0},
        {"weighting": "infonce", "positive_margin": 0.8, "uniformity": 0.1, "weight": 4.0},
    ],
)
@pytest.mark.parametrize("num_negatives", [0, 2])
def test_options_match_formula(options, num_negatives):
    torch.manual_seed(0)
    base = torch.randn(6, 16)
    q, d = base + 0.3 * torch.randn(6, 16), base + 0.3 * torch.randn(6, 16)
    negs = [base.roll(k + 1, 0) + 0.5 * torch.randn(6, 16) for k in range(num_negatives)]
    names = {"weight": "negative_weight", "tau": "temperature", "penalty": "negative_penalty",
             "uniformity": "uniformity_weight", "t": "uniformity_t"}  # fmt: skip
    defaults = {"margin": 0.3, "weight": 1.0, "weighting": "mean", "penalty": "squared_hinge"}
    loss = compose(None, **{names.get(k, k): v for k, v in {**defaults, **options}.items()})
    value = loss.compute_loss_from_embeddings([q, d, *negs])
    assert value.item() == pytest.approx(reference_options_loss(q, d, negs, **options).item(), abs=1e-5)


@pytest.mark.parametrize("num_negatives", [0, 1])
def test_infonce_weighting_has_mnrl_gradient(num_negatives):
    """Detached InfoNCE weights, hinge penalty at margin -1, weight 2: the gradient is 2*tau times MNRL's."""
    from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss

    torch.manual_seed(2)
    tau = 0.05
    columns = [torch.randn(7, 12, requires_grad=True) for _ in range(2 + num_negatives)]
    ours = NormalizedMSELoss(
        None, weighting="infonce", temperature=tau, negative_penalty="hinge", margin=-1.0, negative_weight=2.0
    )
    ours_grads = torch.autograd.grad(ours.compute_loss_from_embeddings(columns), columns)
    mnrl = MultipleNegativesRankingLoss.__new__(MultipleNegativesRankingLoss)
    MultipleNegativesRankingLoss.__init__(mnrl, None, scale=1 / tau)
    mnrl_grads = torch.autograd.grad(mnrl.compute_loss_from_embeddings(columns, None), columns)
    for a, b in zip(ours_grads, mnrl_grads):
        torch.testing.assert_close(a, 2 * tau * b, atol=1e-6, rtol=1e-4)
    # the loss's defaults are exactly this setting
    defaults = NormalizedMSELoss(None)
    for a, b in zip(torch.autograd.grad(defaults.compute_loss_from_embeddings(columns), columns), ours_grads):
        torch.testing.assert_close(a, b)
    # the mean weighting does not have this property: the check can fail
    mean = NormalizedMSELoss(None, weighting="mean", negative_penalty="hinge", margin=-1.0, negative_weight=2.0)
    default_grads = torch.autograd.grad(mean.compute_loss_from_embeddings(columns), columns)
    assert not torch.allclose(default_grads[0], 2 * tau * mnrl_grads[0], atol=1e-4)


def test_distillation_matches_formula(tiny_bert_dir):
    torch.manual_seed(4)
    q, d, n = torch.randn(5, 8), torch.randn(5, 8), torch.randn(5, 8)
    tq, td, tn = torch.randn(5, 8), torch.randn(5, 8), torch.randn(5, 8)
    model = gte_st.build_model(str(tiny_bert_dir))
    nq, nd, nn_ = (F.normalize(x.double(), dim=-1) for x in (q, d, n))
    tq_, td_, tn_ = (F.normalize(x.double(), dim=-1) for x in (tq, td, tn))
    for target in ("similarities", "embeddings"):
        loss = compose(
            model, weighting="mean", negative_weight=0.0, distillation_weight=3.0, distillation_target=target
        )
        value = loss.compute_loss_from_embeddings([q, d, n], context={TEACHER_CONTEXT: [tq, td, tn]}).item()
        positive = ((nq - nd) ** 2).sum(dim=-1).mean()
        if target == "similarities":
            student = nq @ torch.cat([nd, nn_]).T
            teacher = tq_ @ torch.cat([td_, tn_]).T
            distill = ((student - teacher) ** 2).mean()
        else:
            distill = sum(((s - t) ** 2).sum() for s, t in ((nq, tq_), (nd, td_), (nn_, tn_))) / 15
        assert value == pytest.approx((positive + 3.0 * distill).item(), abs=1e-6)


def test_distillation_defaults_to_a_frozen_copy_of_the_initial_model(tiny_bert_dir):
    model = gte_st.build_model(str(tiny_bert_dir))
    loss = compose(model, distillation_weight=1.0)
    assert loss.teacher is not model and not any(p.requires_grad for p in loss.teacher.parameters())
    rows = stsb_rows("train")[:6]
    batch = features(model, [[r[1] for r in rows], [r[2] for r in rows]])
    model.eval()
    loss(batch, None).backward()
    assert all(p.grad is None for p in loss.teacher.parameters())
    assert loss.get_config_dict()["teacher"] == "frozen copy of the initial model"


OPTION_SETS = [
    {"margin": 0.0, "negative_weight": 1.0},
    {"weighting": "hardness", "temperature": 0.1, "margin": 0.0, "negative_weight": 4.0, "detach_weights": False},
    {"weighting": "infonce", "temperature": 0.1, "negative_penalty": "hinge", "margin": -1.0, "negative_weight": 2.0,
     "positive_margin": 0.9},
    {"uniformity_weight": 0.5, "distillation_weight": 5.0, "margin": 0.0},
    {"distillation_weight": 5.0, "distillation_target": "embeddings", "weighting": "infonce"},
    {"false_negative_margin": 0.05, "false_negative_strategy": "relative", "uniformity_weight": 0.5},
    {"false_negative_margin": 0.0, "guide": "initial", "margin": 0.0},
]  # fmt: skip


@pytest.mark.parametrize("symmetric", [False, True])
@pytest.mark.parametrize("options", OPTION_SETS)
def test_cached_loss_equals_uncached_for_every_option(tiny_bert_dir, symmetric, options):
    model = gte_st.build_model(str(tiny_bert_dir))
    model.eval()
    rows = stsb_rows("train")[:13]
    columns = [[r[1] for r in rows], [r[2] for r in rows], [r[2] for r in rows[5:] + rows[:5]]]
    columns[0][7] = columns[0][2]
    if options.get("guide") == "initial":  # a guide sharing the tokenizer: the initial model, frozen
        options = {**options, "guide": gte_st.build_model(str(tiny_bert_dir))}
    plain = compose(model, symmetric=symmetric, **options)
    teacher = getattr(plain, "teacher", None)
    extra = {} if teacher is None else {"teacher": teacher}
    cached = compose(model, symmetric=symmetric, mini_batch_size=4, **options, **extra)
    if teacher is not None or "guide" in options:  # away from the teacher / guide, so they judge differently
        with torch.no_grad():
            for p in model.parameters():
                p.add_(0.05 * torch.randn_like(p))
    assert_cached_equals_plain(model, plain, cached, columns)


def assert_cached_equals_plain(model, plain, cached, columns, labels=None) -> None:
    """The cached loss gives the uncached loss's value and parameter gradients on the same batch."""
    results = []
    for loss in (plain, cached):
        model.zero_grad()
        value = loss(features(model, columns), labels)
        value.backward()
        results.append((value.detach(), gradients(model)))
    (loss_a, grad_a), (loss_b, grad_b) = results
    torch.testing.assert_close(loss_b, loss_a, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(grad_b, grad_a, atol=1e-5, rtol=1e-4)


def test_score_distillation_matches_formula():
    """The teacher-score term: sigma * mean over rows and own columns of (cos(q_i, c_ij) - t_ij)^2."""
    torch.manual_seed(5)
    q, d, n1, n2 = (torch.randn(5, 8) for _ in range(4))
    scores = torch.rand(5, 3) * 2 - 1
    loss = compose(None, weighting="mean", negative_weight=0.0, score_distillation_weight=4.0)
    value = loss.compute_loss_from_embeddings([q, d, n1, n2], scores).item()
    nq, nd, nn1, nn2 = (F.normalize(x.double(), dim=-1) for x in (q, d, n1, n2))
    positive = ((nq - nd) ** 2).sum(dim=-1).mean()
    own = torch.stack([(nq * c).sum(dim=-1) for c in (nd, nn1, nn2)], dim=1)
    assert value == pytest.approx((positive + 4.0 * ((own - scores.double()) ** 2).mean()).item(), abs=1e-6)
    # without labels (a source without teacher scores) the term is absent; off, labels are ignored
    assert loss.compute_loss_from_embeddings([q, d, n1, n2]).item() == pytest.approx(positive.item(), abs=1e-6)
    off = NormalizedMSELoss(None, weighting="mean", negative_weight=0.0)
    assert off.compute_loss_from_embeddings([q, d, n1, n2], scores).item() == pytest.approx(positive.item(), abs=1e-6)
    with pytest.raises(ValueError, match=r"shape \(rows, 1 \+ negatives\) = \(5, 3\), got \(5, 2\)"):
        loss.compute_loss_from_embeddings([q, d, n1, n2], scores[:, :2])
    with pytest.raises(ValueError, match="NaN or inf"):
        loss.compute_loss_from_embeddings([q, d, n1, n2], scores.masked_fill(scores > 0.5, float("nan")))
    with pytest.raises(ValueError, match="score_distillation_weight must be >= 0"):
        compose(None, score_distillation_weight=-1.0)
    assert loss.get_config_dict()["score_distillation_weight"] == 4.0


def test_score_distillation_pulls_cosines_towards_the_teacher():
    """Gradient steps on the score term alone move each anchor's cosines to the teacher's scores."""
    torch.manual_seed(6)
    columns = [torch.randn(4, 8, requires_grad=True) for _ in range(3)]
    scores = torch.tensor([[0.9, 0.2], [0.1, 0.8], [0.5, 0.5], [0.7, -0.3]])
    loss = compose(None, weighting="mean", negative_weight=0.0, score_distillation_weight=100.0)
    optimizer = torch.optim.Adam(columns, lr=0.05)
    for _ in range(300):
        optimizer.zero_grad()
        loss.compute_loss_from_embeddings(columns, scores).backward()
        optimizer.step()
    q, d, n = (F.normalize(c.detach(), dim=-1) for c in columns)
    own = torch.stack([(q * d).sum(-1), (q * n).sum(-1)], dim=1)
    # the positive term also pulls q towards d, so only the negative column must match closely
    torch.testing.assert_close(own[:, 1], scores[:, 1], atol=0.05, rtol=0)


@pytest.mark.parametrize("symmetric", [False, True])
def test_cached_loss_equals_uncached_with_teacher_scores(tiny_bert_dir, symmetric):
    model = gte_st.build_model(str(tiny_bert_dir))
    model.eval()
    rows = stsb_rows("train")[:11]
    columns = [[r[1] for r in rows], [r[2] for r in rows], [r[2] for r in rows[3:] + rows[:3]]]
    scores = torch.linspace(-0.5, 0.9, 22).view(11, 2)
    options = {"score_distillation_weight": 20.0, "distillation_weight": 2.0}
    plain = compose(model, symmetric=symmetric, **options)
    (teacher,) = [piece.teacher for piece in plain.modules() if isinstance(piece, SelfDistillationLoss)]
    cached = compose(model, symmetric=symmetric, teacher=teacher, mini_batch_size=3, **options)
    with torch.no_grad():  # away from the teacher, so the distillation term has a gradient too
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    assert_cached_equals_plain(model, plain, cached, columns, scores)


def reference_filtered_loss(q, d, negs, judge, margin, strategy, weight=1.0):
    """Mean weighting, squared hinge at margin -1, written out in float64: row i's negatives are the other positives
    and every hard negative except those the judge's cosines put too close to its positive (absolute: above
    s_ii - m; relative: above s_ii - |s_ii| m)."""
    q, d = F.normalize(q.double(), dim=-1), F.normalize(d.double(), dim=-1)
    negs = [F.normalize(n.double(), dim=-1) for n in negs]
    jq, jd, *jn = [F.normalize(x.double(), dim=-1) for x in judge]
    batch = q.size(0)
    candidates = [(d[j], jd[j], j) for j in range(batch)] + [
        (n[j], judge_n[j], None) for n, judge_n in zip(negs, jn) for j in range(batch)
    ]
    positive = sum(((q[i] - d[i]) ** 2).sum() for i in range(batch)) / batch
    terms = []
    for i in range(batch):
        own = jq[i] @ jd[i]
        threshold = own - margin if strategy == "absolute" else own - own.abs() * margin
        for vector, judged, row in candidates:
            if row == i or jq[i] @ judged > threshold:
                continue
            terms.append((q[i] @ vector + 1.0) ** 2)
    return positive + weight * sum(terms) / len(terms)


@pytest.mark.parametrize("strategy,margin", [("absolute", 0.1), ("relative", 0.3), ("absolute", 0.5)])
@pytest.mark.parametrize("guided", [False, True])
def test_false_negative_filter_matches_formula(strategy, margin, guided):
    from gte_st.losses import FalseNegativeFilterLoss
    from gte_st.losses.false_negatives import GUIDE_CONTEXT

    torch.manual_seed(7)
    base = torch.randn(6, 16)
    q, d = base + 0.4 * torch.randn(6, 16), base + 0.4 * torch.randn(6, 16)
    negs = [base.roll(1, 0) + 0.6 * torch.randn(6, 16)]
    core = NormalizedMSELoss(
        None, weighting="mean", negative_penalty="squared_hinge", margin=-1.0, negative_weight=1.0
    )
    guide = [base + 0.5 * torch.randn(6, 16) for _ in range(3)] if guided else None
    loss = FalseNegativeFilterLoss(
        None, core, false_negative_margin=margin, false_negative_strategy=strategy,
        guide=torch.nn.Identity() if guided else None,
    )  # fmt: skip
    context = {GUIDE_CONTEXT: guide} if guided else {}
    value = loss.compute_loss_from_embeddings([q, d, *negs], context=context)
    expected = reference_filtered_loss(q, d, negs, guide or [q, d, *negs], margin, strategy)
    assert value.item() == pytest.approx(expected.item(), abs=1e-6)
    # the filter removed something: the unfiltered loss differs (so the check can fail)
    assert core.compute_loss_from_embeddings([q, d, *negs]).item() != pytest.approx(value.item(), abs=1e-4)


def test_false_negative_filter_needs_a_gte_loss_and_the_same_tokenizer(tiny_bert_dir, minilm_dir):
    from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss

    from gte_st.losses import FalseNegativeFilterConfig, FalseNegativeFilterLoss

    model = gte_st.build_model(str(tiny_bert_dir))
    with pytest.raises(ValueError, match="GISTEmbedLoss"):
        FalseNegativeFilterLoss(model, MultipleNegativesRankingLoss(model), false_negative_margin=0.1)
    with pytest.raises(ValueError, match="another tokenizer"):
        FalseNegativeFilterLoss(model, NormalizedMSELoss(model), guide=str(minilm_dir))
    for bad in ({"false_negative_strategy": "cosine"}, {"false_negative_margin": 3.0},
                {"false_negative_margin": 1.5, "false_negative_strategy": "relative"}):  # fmt: skip
        with pytest.raises(ValueError, match=next(iter(bad))):
            FalseNegativeFilterConfig(**bad).validate()


def test_matryoshka_loss_wraps_the_composition(tiny_bert_dir):
    """sentence-transformers' MatryoshkaLoss around gte-st's composition computes, per dimension, the composition
    on the truncated, re-normalised embeddings (same value, same gradients as writing the sum out)."""
    from sentence_transformers.sentence_transformer.losses import MatryoshkaLoss

    model = gte_st.build_model(str(tiny_bert_dir))
    model.eval()
    rows = stsb_rows("train")[:9]
    columns = [[r[1] for r in rows], [r[2] for r in rows], [r[2] for r in rows[4:] + rows[:4]]]
    options = {"false_negative_margin": 0.05, "false_negative_strategy": "relative", "uniformity_weight": 0.2,
               "symmetric": True}  # fmt: skip
    inner = compose(model, **options)
    wrapped = MatryoshkaLoss(model, inner, [32, 16, 8], matryoshka_weights=[1.0, 0.5, 2.0])
    model.zero_grad()
    value = wrapped(features(model, columns), None)
    value.backward()
    grads = gradients(model)

    model.zero_grad()
    batch = features(model, columns)
    context = inner.batch_context(batch)
    from sentence_transformers.base.losses.merged_forward import embed_columns

    full = embed_columns(model, batch)
    expected = sum(
        weight * inner.compute_loss_from_embeddings([F.normalize(e[:, :dim], dim=-1) for e in full], None, context)
        for dim, weight in ((32, 1.0), (16, 0.5), (8, 2.0))
    )
    expected.backward()
    torch.testing.assert_close(value.detach(), expected.detach(), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(grads, gradients(model), atol=1e-5, rtol=1e-4)


MATRYOSHKA_SETS = [
    {},
    {"distillation_weight": 5.0, "distillation_target": "embeddings"},
    {"false_negative_margin": 0.0, "uniformity_weight": 0.3},
]


@pytest.mark.parametrize("options", MATRYOSHKA_SETS)
def test_cached_matryoshka_equals_uncached(tiny_bert_dir, options):
    """MatryoshkaLoss around CachedLoss (its gradient-cache path) equals MatryoshkaLoss around the uncached loss."""
    from sentence_transformers.sentence_transformer.losses import MatryoshkaLoss

    model = gte_st.build_model(str(tiny_bert_dir))
    model.eval()
    rows = stsb_rows("train")[:11]
    columns = [[r[1] for r in rows], [r[2] for r in rows], [r[2] for r in rows[3:] + rows[:3]]]
    plain = compose(model, symmetric=True, **options)
    teachers = [piece.teacher for piece in plain.modules() if isinstance(piece, SelfDistillationLoss)]
    extra = {"teacher": teachers[0]} if teachers else {}
    cached = compose(model, symmetric=True, mini_batch_size=4, **options, **extra)
    if teachers:  # away from the teacher, so the distillation term has a gradient
        with torch.no_grad():
            for p in model.parameters():
                p.add_(0.05 * torch.randn_like(p))
    assert_cached_equals_plain(
        model, MatryoshkaLoss(model, plain, [32, 16, 8]), MatryoshkaLoss(model, cached, [32, 16, 8]), columns
    )


def test_frozen_model_runs_once_per_batch_under_matryoshka(tiny_bert_dir):
    """MatryoshkaLoss calls the wrapped loss once per dimension on the same batch: the frozen teacher embeds it once."""
    from sentence_transformers.sentence_transformer.losses import MatryoshkaLoss

    model = gte_st.build_model(str(tiny_bert_dir))
    loss = compose(model, distillation_weight=1.0)
    calls = []
    loss.teacher.register_forward_hook(lambda *args: calls.append(1))
    rows = stsb_rows("train")[:6]
    MatryoshkaLoss(model, loss, [32, 16, 8])(features(model, [[r[1] for r in rows], [r[2] for r in rows]]), None)
    assert len(calls) == 2  # anchors, then the positives: once each, not once per dimension
