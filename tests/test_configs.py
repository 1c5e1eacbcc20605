"""Every shipped preset validates, says in its header how to run it, and the accelerate configs parse."""

from pathlib import Path

import pytest
import yaml

from csdistill.config import MODES, load_config

CONFIGS = Path(__file__).resolve().parent.parent / "configs"
PRESETS = sorted(CONFIGS.glob("*.yaml"))
ACCELERATE = sorted((CONFIGS / "accelerate").glob("*.yaml"))


def test_a_tiny_preset_per_mode_and_the_paper_presets_exist():
    names = {p.name for p in PRESETS}
    assert {f"tiny_{mode}.yaml" for mode in MODES} <= names
    assert {"paper_gpt2_dolly_kd.yaml", "paper_gpt2_dolly_imitkd.yaml", "paper_gemma_gsm8k_ts.yaml",
            "paper_qwen_chat_paired.yaml"} <= names
    assert {p.name for p in ACCELERATE} >= {"cpu_2proc.yaml", "ddp_multi_gpu.yaml", "fsdp.yaml",
                                            "deepspeed_zero3.yaml", "multi_node.yaml"}


@pytest.mark.parametrize("path", PRESETS, ids=lambda p: p.name)
def test_preset_validates_and_starts_with_its_command(path):
    lines = path.read_text().splitlines()
    header = "\n".join(line for line in lines[:next(i for i, x in enumerate(lines) if not x.startswith("#"))])
    assert lines[0].startswith("#"), f"{path.name}: the first line must be a comment"
    assert "csdistill train --config configs/" + path.name in header or "cli train --config configs/" + path.name in header
    cfg = load_config(path)
    if path.name.startswith("tiny_"):
        assert cfg.train.mode == path.stem.removeprefix("tiny_")
        assert cfg.model.name_or_path.startswith("preset:") and cfg.train.max_steps <= 20


def test_paper_presets_match_method_md():
    kd = load_config(CONFIGS / "paper_gpt2_dolly_kd.yaml")
    assert (kd.model.name_or_path, kd.train.mode, kd.loss.name, kd.loss.weighting) == ("gpt2", "kd", "csd", "SS")
    assert (kd.train.lr, kd.train.batch_size, kd.train.epochs, kd.train.weight_decay) == (1e-4, 8, 20, 0.01)
    assert (kd.train.scheduler, kd.train.grad_clip, kd.loss.scale) == ("cosine", 1.0, 0.5)
    assert (kd.data.max_prompt_length, kd.data.max_length) == (256, 512)
    imit = load_config(CONFIGS / "paper_gpt2_dolly_imitkd.yaml")
    assert (imit.train.mode, imit.train.buffer_size, imit.train.lm_coef, imit.data.lm_file != "") == ("imitkd", 1000, 1.0, True)
    assert (imit.generation.temperature, imit.generation.top_p, imit.generation.max_new_tokens) == (1.0, 1.0, 256)
    gemma = load_config(CONFIGS / "paper_gemma_gsm8k_ts.yaml")
    assert (gemma.loss.weighting, gemma.train.lr, gemma.train.batch_size * gemma.train.grad_accum) == ("TS", 1e-5, 8)
    assert gemma.data.max_train_examples == 1000
    qwen = load_config(CONFIGS / "paper_qwen_chat_paired.yaml")
    assert (qwen.train.mode, qwen.model.lora.enabled, qwen.model.lora.r, qwen.model.lora.alpha) == ("paired", True, 16, 128)
    assert (qwen.train.lr, qwen.train.epochs) == (5e-5, 1)


@pytest.mark.parametrize("path", ACCELERATE, ids=lambda p: p.name)
def test_accelerate_config_parses_with_accelerate(path):
    from accelerate.commands.config.config_args import ClusterConfig

    text = path.read_text()
    assert text.startswith("#") and "accelerate launch --config_file configs/accelerate/" + path.name in text
    data = yaml.safe_load(text)
    for key in ("compute_environment", "distributed_type", "num_processes", "num_machines", "mixed_precision"):
        assert key in data, f"{path.name} lacks {key}"
    config = ClusterConfig.from_yaml_file(str(path))  # accelerate's own loader: unknown keys/enum values fail
    assert config.num_processes >= 2
    if path.name == "deepspeed_zero3.yaml":
        assert data["deepspeed_config"]["zero_stage"] == 3 and "teacher" in text
    if path.name == "multi_node.yaml":
        assert data["num_machines"] >= 2 and data["main_process_ip"]
