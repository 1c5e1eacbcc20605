"""vLLM `prompt_logprobs` responses -> the top-k cache: the documented layout (a checked-in fixture)
and a round trip against `csdistill teacher cache` on the same tiny teacher."""
import json
import math
from pathlib import Path

import pytest
import torch

from csdistill.cache.vllm import _rows, read_responses
from csdistill.cli import main
from csdistill.config import ConfigError, load_config
from csdistill.train import train
from csdistill.train.teacher_cache import TeacherCache
from test_train import kd_args, toy  # noqa: F401  (fixture)

FIXTURE = Path(__file__).parent / "fixtures" / "vllm_prompt_logprobs.jsonl"


def test_documented_layout_gives_the_rows():
    logprobs = read_responses(FIXTURE)[(5, 9, 7, 3)]
    rows = _rows({"input_ids": [5, 9, 7, 3], "labels": [-100, 9, 7, 3]}, logprobs, 2, 10, "fixture")
    assert rows.ids.tolist() == [[9, 7], [7, 3], [5, 9]]  # entry j is the row of position j - 1
    assert rows.labels.tolist() == [9, 7, 3]
    torch.testing.assert_close(rows.target_logprob, torch.tensor([-0.5, -0.2, -4.0]))  # k + 1 entries: y outside
    tail = math.log1p(-(math.exp(-0.1) + math.exp(-3.0)))
    assert rows.log_tail[2].item() == pytest.approx(tail, rel=1e-6)
    with pytest.raises(ConfigError, match="prompt_logprobs=3"):
        _rows({"input_ids": [5, 9, 7, 3], "labels": [-100, 9, 7, 3]}, logprobs, 3, 10, "fixture")


def _vllm_responses(toy, tmp_path, k):  # noqa: F811
    """The server's answer, computed from the tiny teacher, in the documented layout."""
    from csdistill.models import load_model

    teacher = load_model(str(toy / "teacher"))
    assert main(["teacher", "vllm-requests", "--top-k", str(k), "--model", "tiny", "--out", str(tmp_path / "req.jsonl"),
                 *kd_args(toy, tmp_path / "x")]) == 0
    lines = []
    for line in (tmp_path / "req.jsonl").read_text().splitlines():
        request = json.loads(line)
        assert request["echo"] is True and request["max_tokens"] == 0 and request["prompt_logprobs"] == k
        ids = torch.tensor(request["prompt"])[None]
        with torch.no_grad():
            log_p = torch.log_softmax(teacher(input_ids=ids).logits[0].float(), -1)  # (T, V)
        entries = [None]
        for j in range(1, ids.shape[1]):
            values, top = log_p[j - 1].topk(k)
            entry = {str(t): {"logprob": v, "rank": r + 1, "decoded_token": "?"}
                     for r, (t, v) in enumerate(zip(top.tolist(), values.tolist()))}
            actual = int(ids[0, j])
            entry.setdefault(str(actual), {"logprob": log_p[j - 1, actual].item(), "rank": 99, "decoded_token": "?"})
            entries.append(entry)
        lines.append(json.dumps({"request": request, "response": {"choices": [{"prompt_logprobs": entries}]}}))
    (tmp_path / "responses.jsonl").write_text("\n".join(lines) + "\n")
    return tmp_path / "responses.jsonl"


def test_converted_cache_matches_our_runner_and_trains(toy, tmp_path):  # noqa: F811
    responses = _vllm_responses(toy, tmp_path, 8)
    common = kd_args(toy, tmp_path / "x")
    assert main(["teacher", "from-vllm", "--responses", str(responses), "--top-k", "8", "--out", str(tmp_path / "vllm"),
                 "--dtype", "fp32", *common]) == 0
    assert main(["teacher", "cache", "--top-k", "8", "--out", str(tmp_path / "ours"), "--dtype", "fp32",
                 "--no-progress", *common]) == 0
    ours, theirs = TeacherCache.from_dir(tmp_path / "ours"), TeacherCache.from_dir(tmp_path / "vllm")
    assert len(ours) == len(theirs)
    a, b = ([block[:] for block in cache._blocks] for cache in (ours, theirs))  # read each shard whole
    for x, y in zip(a, b):
        assert torch.equal(x.ids, y.ids) and torch.equal(x.labels, y.labels)
        torch.testing.assert_close(x.logprobs, y.logprobs)
        torch.testing.assert_close(x.log_tail, y.log_tail, rtol=1e-4, atol=1e-5)
    result = train(load_config(None, kd_args(toy, tmp_path / "run", "train.max_steps=2", "teacher.name_or_path=",
                                             f"train.teacher_cache={tmp_path / 'vllm'}")))
    assert math.isfinite(result.loss)


def test_missing_responses_are_a_clear_error(toy, tmp_path, capsys):  # noqa: F811
    responses = _vllm_responses(toy, tmp_path, 4)
    lines = responses.read_text().splitlines()
    responses.write_text("\n".join(lines[:-3]) + "\n")
    assert main(["teacher", "from-vllm", "--responses", str(responses), "--top-k", "4", "--out", str(tmp_path / "c"),
                 *kd_args(toy, tmp_path / "x")]) == 2
    assert "no response for 3 of" in capsys.readouterr().err
