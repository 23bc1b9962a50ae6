"""A few checks on the real packaged model (SmolLM2-135M) with small budgets."""

import json
import math
import os

import pytest
import torch

from msp_callback import data
from msp_callback.cli import main
from msp_callback.evaluate import perplexity
from msp_callback.models import fingerprint, load_causal_lm, measure_sparsity
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
    code = main(["prune", "--sparsity", "2:4", "--criterion", "magnitude", "--calib-samples", "1",
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
    assert json.loads(capsys.readouterr().out)["pruned_ppl"] == result["pruned_ppl"]


def test_cli_bad_sparsity_is_a_clear_error(caplog):
    assert main(["prune", "--sparsity", "5:4", "--quiet"]) == 2
    assert "must lie in 0..4" in caplog.text


def test_cli_msp_search_writes_history_and_resumes(tmp_path):
    out = tmp_path / "msp"
    common = ["prune", "--allocation", "msp", "--population", "4", "--calib-samples", "1", "--calib-seqlen", "64",
              "--fitness-samples", "1", "--fitness-seqlen", "64", "--eval-seqlen", "64", "--eval-windows", "1",
              "--no-dense-eval", "--quiet", "--output", str(out), "--json", str(tmp_path / "r.json")]
    assert main(common + ["--generations", "1"]) == 0
    first = json.loads((tmp_path / "r.json").read_text())
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
