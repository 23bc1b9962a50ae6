"""A few checks on the real packaged model (SmolLM2-135M) with small budgets."""

import json
import math
import os

import pytest
import torch

from msp_callback import data
from msp_callback.cli import main
from msp_callback.evaluate import perplexity
from msp_callback.loading import load_causal_lm
from msp_callback.models import fingerprint, measure_sparsity
from msp_callback.plan import SparsityPlan
from msp_callback.pruner import prune

pytestmark = pytest.mark.real


@pytest.fixture(scope="module", autouse=True)
def all_threads():
    before = torch.get_num_threads()
    torch.set_num_threads(os.cpu_count() or 1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def smollm():
    return load_causal_lm("smollm2-135m")


@pytest.fixture(scope="module")
def texts(smollm):
    _, tok = smollm
    return data.tokenize(tok, data.load_corpus("c4")[:40]), data.tokenize(tok, data.load_corpus("wikipedia")[:20])


def test_real_evaluator_matches_transformers_loss(smollm, texts):
    model, _ = smollm
    windows = data.evaluation_windows(texts[1], 128, max_windows=2)
    losses = [model(input_ids=w[None], labels=w[None]).loss.item() for w in windows]
    got = perplexity(model, windows, progress=False)
    assert abs(got / math.exp(sum(losses) / 2) - 1) < 1e-4
    assert 5 < got < 100  # a real model on real text


def test_real_wanda_prune(smollm, texts):
    model, _ = smollm
    dense_state = {k: v.clone() for k, v in model.state_dict().items()}
    try:
        plan = SparsityPlan.uniform(2, 4, 30, criterion="wanda", fingerprint=fingerprint(model))
        calib = data.sample_calibration(texts[0], 2, 128, seed=0)
        prune(model, plan, calib, progress=False)
        stats = measure_sparsity(model)
        assert 50.0 <= stats.pruned_linears < 50.1  # GGUF weights carry a few exact zeros already
        windows = data.evaluation_windows(texts[1], 128, max_windows=2)
        assert math.isfinite(perplexity(model, windows, progress=False))
    finally:
        from msp_callback.nm import remove_masks

        remove_masks(model, bake=False)
        model.load_state_dict(dense_state)


def test_cli_end_to_end(tmp_path, capsys):
    out = tmp_path / "run"
    code = main(["prune", "--allocation", "uniform", "--sparsity", "2:4", "--criterion", "magnitude", "--calib-samples", "1",
                 "--calib-seqlen", "64", "--eval-seqlen", "128", "--eval-windows", "2", "--quiet",
                 "--output", str(out), "--json", str(tmp_path / "r.json")])
    assert code == 0
    result = json.loads((tmp_path / "r.json").read_text())
    for key in ("model", "criterion", "allocation", "sparsity", "levels", "dense_ppl", "pruned_ppl",
                "measured_sparsity", "eval_tokens", "seconds"):
        assert key in result
    assert result["sparsity"] == "2:4 (50.0%)" and result["eval_tokens"] == 256
    assert result["pruned_ppl"] > result["dense_ppl"]
    assert SparsityPlan.load(out / "plan.json").levels == [2] * 30
    summary = json.loads(capsys.readouterr().out)
    assert summary["pruned_ppl"] == result["pruned_ppl"]
    assert (result["device"], result["dtype"]) == ("cpu", "float32")  # auto on a CPU
    assert set(summary["samples"]) == {"dense", "reconstructed"} and summary["samples"]["dense"].strip()
    assert len(result["reconstruction"]["blocks"]) == 30  # the default job reconstructs every block
    # the model it made, in the run folder: plain transformers gives its sparsity and perplexity
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from msp_callback.job import PruneSettings, prepare

    assert summary["saved_model"] == str(out / "model") and result["saved_model"]["bytes"] > 500e6
    plain = AutoModelForCausalLM.from_pretrained(out / "model").eval()
    assert measure_sparsity(plain).per_block == result["measured_sparsity"]["per_block_pct"]
    settings = PruneSettings(calib_samples=1, calib_seqlen=64, eval_seqlen=128, eval_windows=2)
    windows = prepare(settings, loaded=(plain, AutoTokenizer.from_pretrained(out / "model"))).windows
    assert perplexity(plain, windows, progress=False) == result["pruned_ppl"]


def test_cli_reconstruction_lowers_perplexity_and_resumes(tmp_path):
    out = tmp_path / "run"
    common = ["prune", "--allocation", "uniform", "--sparsity", "2:4", "--criterion", "wanda", "--calib-samples", "2",
              "--calib-seqlen", "64", "--eval-seqlen", "128", "--eval-windows", "2", "--no-dense-eval", "--quiet",
              "--output", str(out)]
    assert main([*common, "--reconstruct-epochs", "0", "--json", str(tmp_path / "plain.json")]) == 0
    recon = ["--reconstruct-epochs", "2", "--reconstruct-holdout", "1", "--reconstruct-lr", "5e-4"]
    assert main([*common, *recon, "--json", str(tmp_path / "r.json")]) == 0
    plain, result = (json.loads((tmp_path / f"{name}.json").read_text()) for name in ("plain", "r"))
    blocks = result["reconstruction"]["blocks"]
    assert len(blocks) == 30 and all(b["holdout_after"] <= b["holdout_before"] for b in blocks)
    assert result["pruned_ppl"] < plain["pruned_ppl"], (result["pruned_ppl"], plain["pruned_ppl"])
    assert result["measured_sparsity"]["pruned_linears_pct"] == pytest.approx(50.0, abs=0.1)
    assert len(list((out / "reconstruct_checkpoint").glob("block_*.pt"))) == 30
    # a resumed job finds every block finished and gives the same model
    assert main([*common, *recon, "--resume", "--json", str(tmp_path / "resumed.json")]) == 0
    assert json.loads((tmp_path / "resumed.json").read_text())["pruned_ppl"] == result["pruned_ppl"]


def test_cli_in_bf16(tmp_path):
    code = main(["prune", "--allocation", "uniform", "--dtype", "bf16", "--reconstruct-epochs", "0", "--sparsity", "2:4",
                 "--criterion", "wanda", "--calib-samples", "1",
                 "--calib-seqlen", "64", "--eval-seqlen", "128", "--eval-windows", "2", "--quiet", "--save-model", "none",
                 "--output", str(tmp_path / "run"), "--json", str(tmp_path / "r.json")])
    assert code == 0
    result = json.loads((tmp_path / "r.json").read_text())
    assert result["dtype"] == "bfloat16" and math.isfinite(result["pruned_ppl"]) and result["pruned_ppl"] > result["dense_ppl"]
    assert result["measured_sparsity"]["pruned_linears_pct"] == pytest.approx(50.0, abs=0.1)


def test_cli_recovery_stage_holds_the_masks_and_lowers_perplexity(tmp_path):
    out = tmp_path / "run"
    code = main(["prune", "--allocation", "uniform", "--sparsity", "2:4", "--criterion", "magnitude", "--calib-samples", "1",
                 "--calib-seqlen", "64", "--eval-seqlen", "128", "--eval-windows", "2", "--no-dense-eval", "--quiet",
                 "--reconstruct-epochs", "0", "--recover-steps", "4", "--recover-batch-size", "2", "--recover-seqlen", "128",
                 "--recover-lr", "1e-4",
                 "--save-model", "none",
                 "--output", str(out), "--json", str(tmp_path / "r.json")])
    assert code == 0
    result = json.loads((tmp_path / "r.json").read_text())
    recovery = result["recovery"]
    assert recovery["steps"] == 4 and len(recovery["losses"]) == 4 and recovery["loss"] == "kd"
    assert recovery["recovered_ppl"] < result["pruned_ppl"], (recovery["recovered_ppl"], result["pruned_ppl"])
    # every pruned weight still zero (natural zeros among the kept ones may have moved)
    assert min(recovery["measured_sparsity_after"]["per_block_pct"]) >= 50.0
    assert (out / "recovery_checkpoint.pt").exists()


def test_cli_bad_sparsity_is_a_clear_error(caplog):
    assert main(["prune", "--sparsity", "5:4", "--quiet"]) == 2
    assert "must lie in 0..4" in caplog.text


def test_cli_msp_search_writes_history_and_resumes(tmp_path):
    out = tmp_path / "msp"
    common = ["prune", "--allocation", "msp", "--population", "4", "--calib-samples", "1", "--calib-seqlen", "64",
              "--fitness-samples", "1", "--fitness-seqlen", "64", "--eval-seqlen", "64", "--eval-windows", "1",
              "--no-dense-eval", "--quiet", "--save-model", "none", "--output", str(out), "--json", str(tmp_path / "r.json"),
              "--reconstruct-epochs", "0"]
    assert main(common + ["--generations", "1", "--compare-uniform"]) == 0
    first = json.loads((tmp_path / "r.json").read_text())
    assert math.isfinite(first["uniform_ppl"]) and first["uniform_ppl"] != first["pruned_ppl"]
    assert first["allocation"] == "msp" and first["fitness_evaluations"] >= 4
    assert len(first["history"]) == 2 and first["search_seconds"] > 0
    assert sum(first["levels"]) == 3 * 30
    for name in ("plan.json", "history.json", "levels.png", "convergence.png", "search_checkpoint.json"):
        assert (out / name).stat().st_size > 0, name
    # extend the finished search by one generation from its checkpoint
    assert main(common + ["--generations", "2", "--resume"]) == 0
    resumed = json.loads((tmp_path / "r.json").read_text())
    assert [h["best_fitness"] for h in resumed["history"][:2]] == [h["best_fitness"] for h in first["history"]]
    assert len(resumed["history"]) == 3


def test_lightning_recipe_parses_with_lightning_cli():
    from pathlib import Path

    from lightning.pytorch.cli import LightningCLI

    from msp_callback import MSPCallback
    from msp_callback.integrations.lightning_lm import CausalLM, TextDataModule

    recipe = Path(__file__).resolve().parents[1] / "recipes" / "lightning_msp.yaml"
    cli = LightningCLI(CausalLM, TextDataModule, run=False, args=["--config", str(recipe)])
    callback = next(c for c in cli.trainer.callbacks if isinstance(c, MSPCallback))
    assert callback.when == "fit_start" and callback.engine.config.sparsity == "3:4"
    assert callback.engine.config.population == 8


def test_real_sparse_lora_merge_and_export_round_trip(texts, tmp_path):
    """smollm2-135m at 3:4 with one block fully pruned: sparse LoRA, merge, export (the block is
    removed), plain reload and library reload all give the adapted model's logits."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from msp_callback.export import load_pruned, save_pruned
    from msp_callback.lora import sparse_lora, train_adapters
    from msp_callback.models import block_linears, find_blocks
    from msp_callback.nm import check_pattern, mask_of, to_out_in

    model, tokenizer = load_causal_lm("smollm2-135m")
    levels = [3] * 30
    levels[28], levels[29] = 4, 2
    plan = SparsityPlan(m=4, target=3, levels=levels, criterion="magnitude", fingerprint=fingerprint(model))
    prune(model, plan, None, progress=False)
    peft_model = get_peft_model(model, LoraConfig(r=4, target_modules=["q_proj", "v_proj", "down_proj"], lora_dropout=0.0))
    sparse_lora(peft_model)
    train_adapters(peft_model, data.sample_calibration(texts[0], 2, 64, seed=3, batch_size=1), lr=1e-3, progress=False)
    peft_model.eval()
    x = data.evaluation_windows(texts[1], 64, max_windows=1)
    with torch.no_grad():
        adapted = peft_model(x).logits
        merged = peft_model.merge_and_unload()
        # merged W + dW x vs W x + dW x: float32 re-association through 30 blocks; 2.1e-4 seen when
        # this runs after the module's other tests (logits of magnitude ~20)
        merged_logits = merged(x).logits
        torch.testing.assert_close(merged_logits, adapted, rtol=1e-4, atol=5e-4)
    for i, (block, level) in enumerate(zip(find_blocks(merged), levels)):
        for name, module in block_linears(block).items():
            weight = to_out_in(module, module.weight.detach())
            check_pattern(weight, level, 4, f"block {i} {name}")
            assert not weight[~to_out_in(module, mask_of(module))].any()

    record = save_pruned(merged, tmp_path / "out", plan, tokenizer)
    assert record.removed_blocks == [28]
    plain = AutoModelForCausalLM.from_pretrained(tmp_path / "out")
    library, _ = load_pruned(tmp_path / "out")
    with torch.no_grad():
        torch.testing.assert_close(plain(x).logits, merged_logits, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(library(x).logits, plain(x).logits, rtol=0, atol=0)
    kept = [s for i, s in enumerate(measure_sparsity(merged).per_block) if i != 28]
    assert measure_sparsity(library).per_block == pytest.approx(kept)


def test_msp_run_recipe_end_to_end(tmp_path, capsys):
    out = tmp_path / "ctl"
    code = main(["run", "recipes/compress_then_lora.yaml", "--quiet", "--set", "allocation=uniform",
                 "--set", "criterion=magnitude", "--set", "calib_samples=1", "--set", "calib_seqlen=64",
                 "--set", "eval_seqlen=128", "--set", "eval_windows=2", "--set", "lora.steps=3",
                 "--set", "lora.batch_size=1", "--set", "lora.seqlen=64", "--set", "lora.lr=1e-3",
                 "--set", f"output={out}"])
    assert code == 0
    result = json.loads((out / "result.json").read_text())
    assert result["lora"]["ppl_after_lora"] < result["pruned_ppl"]
    assert result["lora"]["ppl_after_merge"] == pytest.approx(result["lora"]["ppl_after_lora"], rel=1e-4)
    assert result["export"]["ppl_after_reload"] == pytest.approx(result["lora"]["ppl_after_merge"], rel=1e-6)
    assert result["export"]["measured_sparsity_after_reload"]["pruned_linears_pct"] == pytest.approx(75.0, abs=0.01)
    assert (out / "model" / "msp_export.json").exists() and (out / "plan.json").exists()
    assert json.loads(capsys.readouterr().out)["ppl_after_reload"] == result["export"]["ppl_after_reload"]


def test_real_trainer_save_model_keeps_the_pruned_model(texts, tmp_path):
    """The issue-17 story on smollm2-135m: MSPTrainerCallback prunes, `trainer.save_model`, then a
    plain `from_pretrained` gives the pruned model exactly and `load_pruned` its masks."""
    from transformers import AutoModelForCausalLM, Trainer, TrainingArguments

    from msp_callback import MSPTrainerCallback
    from msp_callback.export import load_pruned
    from msp_callback.models import named_block_linears
    from msp_callback.nm import mask_of

    model, _ = load_causal_lm("smollm2-135m")
    rows = data.sample_calibration(texts[0], 2, 64, seed=4, batch_size=1)
    dataset = [{"input_ids": r[0], "labels": r[0]} for r in rows]
    callback = MSPTrainerCallback(sparsity="2:4", allocation="uniform", criterion="magnitude", when="fit_start",
                                  calib_samples=1, fitness_samples=0, progress=False)
    args = TrainingArguments(output_dir=str(tmp_path / "run"), max_steps=1, per_device_train_batch_size=1, report_to=[],
                             save_strategy="no", use_cpu=True, disable_tqdm=True, learning_rate=1e-5)
    trainer = Trainer(model=model, args=args, train_dataset=dataset, callbacks=[callback])
    trainer.train()
    trainer.save_model(str(tmp_path / "out"))

    x = data.evaluation_windows(texts[1], 64, max_windows=1)
    plain, info = AutoModelForCausalLM.from_pretrained(tmp_path / "out", output_loading_info=True)
    library, _ = load_pruned(tmp_path / "out")
    assert not (info["missing_keys"] or info["unexpected_keys"] or info["mismatched_keys"])
    with torch.no_grad():
        reference = model.eval()(x).logits
        assert torch.equal(plain.eval()(x).logits, reference)
    pruned, reloaded, masked = named_block_linears(model), named_block_linears(plain), named_block_linears(library)
    for name, module in pruned.items():
        assert torch.equal(reloaded[name].weight == 0, module.weight.detach() == 0), name
        assert torch.equal(mask_of(masked[name]), mask_of(module)), name
    assert measure_sparsity(plain).pruned_linears == pytest.approx(50.0, abs=0.1)


def test_cli_offloaded_to_disk_gives_the_same_result(tmp_path):
    # the search on offloaded weights is compared in tests/test_offload.py; here the job's own wiring
    common = ["prune", "--allocation", "uniform", "--sparsity", "2:4", "--criterion", "wanda", "--calib-samples", "1",
              "--calib-seqlen", "64",
              "--eval-seqlen", "64", "--eval-windows", "2", "--no-dense-eval", "--quiet", "--reconstruct-epochs", "0"]
    results = []
    for extra in (["--save-model", "none"], ["--offload", "disk", "--offload-folder", str(tmp_path / "offload")]):
        name = "disk" if "--offload" in extra else "memory"
        assert main(common + extra + ["--output", str(tmp_path / name), "--json", str(tmp_path / f"{name}.json")]) == 0
        results.append(json.loads((tmp_path / f"{name}.json").read_text()))
    memory, disk = results
    assert disk["levels"] == memory["levels"] and disk["pruned_ppl"] == memory["pruned_ppl"]
    assert list((tmp_path / "offload").iterdir()) == []  # the job deletes its files
    assert "samples" in memory and "samples" not in disk  # an offloaded model is not sampled
    saved = SparsityPlan.load(tmp_path / "disk" / "plan.json")  # the offloaded model is saved like any other
    assert json.loads((tmp_path / "disk" / "model" / "config.json").read_text())["msp_sparsity"]["plan"]["levels"] == saved.levels
