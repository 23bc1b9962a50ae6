"""Zero-shot accuracy through lm-eval on a tiny model with the real tokenizer; the local tasks."""

from __future__ import annotations

import json
import logging
import math

import pytest
import torch

pytest.importorskip("lm_eval")

from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig  # noqa: E402

from msp_callback.cli import main  # noqa: E402
from msp_callback.export import save_pruned  # noqa: E402
from msp_callback.packaged import ensure_packaged_model  # noqa: E402
from msp_callback.plan import SparsityPlan  # noqa: E402
from msp_callback.pruner import prune  # noqa: E402
from msp_callback.zero_shot import LOCAL_TASKS, ZeroShotError, local_task_folder, zero_shot  # noqa: E402


@pytest.fixture(scope="module")
def tokenizer():
    return AutoTokenizer.from_pretrained(ensure_packaged_model("smollm2-135m"))


@pytest.fixture
def small(tokenizer):
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=512)
    return AutoModelForCausalLM.from_config(config).eval(), tokenizer


def test_local_tasks_are_built_deterministically(tmp_path):
    folder = local_task_folder(count=50, seed=3, folder=tmp_path / "a")
    again = local_task_folder(count=50, seed=3, folder=tmp_path / "b")
    for name in LOCAL_TASKS:
        assert (folder / f"{name}.jsonl").read_text() == (again / f"{name}.jsonl").read_text()
        rows = [json.loads(line) for line in (folder / f"{name}.jsonl").read_text().splitlines()]
        assert len(rows) == 50
    lastword = [json.loads(line) for line in (folder / "msp_wiki_lastword.jsonl").read_text().splitlines()]
    assert all(r["target"].startswith(" ") and " " not in r["target"][1:] for r in lastword)
    realnext = [json.loads(line) for line in (folder / "msp_wiki_realnext.jsonl").read_text().splitlines()]
    labels = [r["label"] for r in realnext]
    assert 10 < sum(labels) < 40  # the real sentence is not always first


def test_zero_shot_on_a_pruned_model_gives_accuracies_with_standard_errors(small):
    model, tokenizer = small
    prune(model, SparsityPlan.uniform(2, 4, 2, criterion="magnitude"), progress=False)
    results = zero_shot(model, tokenizer, limit=6, batch_size=4)
    assert set(results) == set(LOCAL_TASKS)
    for row in results.values():
        assert 0.0 <= row["acc"] <= 1.0 and math.isfinite(row["stderr"]) and row["n"] == 6


def test_unknown_task_is_refused(small):
    model, tokenizer = small
    with pytest.raises(ZeroShotError, match="does not know the task"):
        zero_shot(model, tokenizer, ["no_such_task_anywhere"], limit=2)


def test_msp_eval_reads_an_export(small, tmp_path, caplog):
    model, tokenizer = small
    plan = SparsityPlan.uniform(2, 4, 2, criterion="magnitude")
    prune(model, plan, progress=False)
    save_pruned(model, tmp_path / "model", plan, tokenizer, format="compact")
    assert main(["eval", str(tmp_path / "model"), "--limit", "4", "--quiet", "--json", str(tmp_path / "acc.json")]) == 0
    result = json.loads((tmp_path / "acc.json").read_text())
    assert set(result["tasks"]) == set(LOCAL_TASKS)
    with caplog.at_level(logging.ERROR):
        assert main(["eval", str(tmp_path / "model"), "--tasks", "nope", "--quiet"]) == 2
    assert "does not know the task" in caplog.text


def test_msp_eval_runs_on_the_device_and_dtype_asked(small, tmp_path, monkeypatch):
    """``msp eval --device --dtype``: the model is evaluated where and in the precision asked (it
    ran on the CPU in float32 whatever the job used); auto on a CPU is float32."""
    from msp_callback import zero_shot as zero_shot_module

    model, tokenizer = small
    plan = SparsityPlan.uniform(2, 4, 2, criterion="magnitude")
    prune(model, plan, progress=False)
    save_pruned(model, tmp_path / "model", plan, tokenizer)
    seen = []
    monkeypatch.setattr(zero_shot_module, "zero_shot", lambda m, *args: seen.append(
        (str(m.device), m.model.layers[0].mlp.down_proj.weight.dtype)) or {})
    for flags, expected in ((["--device", "cpu", "--dtype", "bfloat16"], ("cpu", torch.bfloat16)),
                            (["--device", "cpu"], ("cpu", torch.float32))):
        assert main(["eval", str(tmp_path / "model"), "--quiet", "--json", str(tmp_path / "acc.json"), *flags]) == 0
        assert seen.pop() == expected
        assert json.loads((tmp_path / "acc.json").read_text())["dtype"] == str(expected[1]).removeprefix("torch.")
