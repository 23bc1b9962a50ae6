"""Recipe files: every shipped recipe loads; overrides; clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from msp_callback.config import extract
from msp_callback.plan import parse_nm
from msp_callback.recipe import RecipeError, load_recipe
from msp_callback.search.runner import SearchSettings

RECIPE_DIR = Path(__file__).parent.parent / "recipes"
RECIPES = sorted(p for p in RECIPE_DIR.glob("*.yaml") if p.name != "lightning_msp.yaml")


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.stem)
def test_shipped_recipes_load(path):
    recipe = load_recipe(path)
    parse_nm(recipe.prune.sparsity)
    assert recipe.output


def test_paper_settings_cover_the_issue():
    sparsities = {load_recipe(p).prune.sparsity for p in RECIPES}
    assert {"3:4", "6:8", "12:16", "2:4", "7:8"} <= sparsities
    for path in RECIPE_DIR.glob("paper_*.yaml"):  # the paper's search whatever the library's default
        prune = load_recipe(path).prune
        search = extract(prune, SearchSettings).resolved(prune.fitness_samples)
        assert (search.search, search.granularity, search.fitness, search.screen_windows) == ("paper", "block", "ppl", 0)
        assert (prune.population, prune.generations) == (20, 20), path


def test_overrides_reach_sections_and_convert_numbers(tmp_path):
    recipe = load_recipe(RECIPE_DIR / "compress_then_lora.yaml",
                         ["criterion=sparsegpt", "lora.lr=1e-3", "lora.steps=7", "export.folder=/tmp/x", "eval_windows=3"])
    assert recipe.prune.criterion == "sparsegpt" and recipe.prune.eval_windows == 3
    assert recipe.lora.lr == pytest.approx(1e-3) and isinstance(recipe.lora.lr, float) and recipe.lora.steps == 7
    assert recipe.export.folder == "/tmp/x"
    plain = tmp_path / "p.yaml"
    plain.write_text("sparsity: '2:4'\n")
    recipe = load_recipe(plain, ["lora.rank=4"])
    assert recipe.lora.rank == 4 and recipe.export is None and recipe.output == "runs/p"


def test_bad_recipes_fail_clearly(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("sparsity: '3:4'\nsparsityy: 1\n")
    with pytest.raises(RecipeError, match=r"unknown setting 'sparsityy'; did you mean 'sparsity'"):
        load_recipe(bad)
    with pytest.raises(RecipeError, match="unknown setting 'rnak'; did you mean 'rank'"):
        load_recipe(RECIPE_DIR / "compress_then_lora.yaml", ["lora.rnak=3"])
    with pytest.raises(RecipeError, match="KEY=VALUE"):
        load_recipe(RECIPE_DIR / "compress_then_lora.yaml", ["lora.rank"])
    with pytest.raises(RecipeError, match="expected int"):
        load_recipe(RECIPE_DIR / "compress_then_lora.yaml", ["lora.rank=big"])
    with pytest.raises(RecipeError, match="not found"):
        load_recipe(tmp_path / "missing.yaml")


def test_nm_text_survives_yaml(tmp_path):
    recipe = load_recipe(RECIPE_DIR / "paper_75_m4.yaml", ["sparsity=2:4", "eval_windows=8"])
    assert recipe.prune.sparsity == "2:4" and recipe.prune.eval_windows == 8
    unquoted = tmp_path / "u.yaml"
    unquoted.write_text("sparsity: 3:4\n")
    with pytest.raises(RecipeError, match="quote it"):
        load_recipe(unquoted)


def test_sections_on_off_and_malformed(tmp_path):
    on = tmp_path / "on.yaml"
    on.write_text("sparsity: '3:4'\nexport:\nlora: false\n")
    recipe = load_recipe(on, ["export.folder=/tmp/x"])
    assert recipe.export.folder == "/tmp/x" and recipe.lora is None
    bad = tmp_path / "bad.yaml"
    bad.write_text("lora: true\n")
    with pytest.raises(RecipeError, match="must be a mapping"):
        load_recipe(bad)
    with pytest.raises(RecipeError, match="lora is not a section"):
        load_recipe(on, ["lora.rank=4"])
    lora = RECIPE_DIR / "compress_then_lora.yaml"
    with pytest.raises(RecipeError, match="not valid YAML"):
        load_recipe(lora, ["lora.targets=[q_proj"])
    assert load_recipe(lora, ["lora.targets=[q_proj, v_proj]"]).lora.targets == ["q_proj", "v_proj"]
    with pytest.raises(RecipeError, match="expected int"):
        load_recipe(lora, ["lora.steps=16.5"])


def test_the_recover_section_sets_the_jobs_recover_settings():
    recipe = load_recipe(RECIPE_DIR / "msp_recover.yaml", ["recover.steps=7"])
    job = recipe.prune
    assert (job.recover_steps, job.recover_method, job.recover_loss, job.recover_windows) == (7, "sparse", "kd", 128)
    assert job.recover_max_minutes == 15


def test_a_top_level_override_of_a_recover_setting_wins_over_the_section():
    assert load_recipe(RECIPE_DIR / "msp_recover.yaml", ["recover_steps=10"]).prune.recover_steps == 10


def test_a_reconstruct_section_sets_the_jobs_reconstruct_settings(tmp_path):
    path = tmp_path / "job.yaml"
    path.write_text("sparsity: '2:4'\nreconstruct:\n  epochs: 3\n  lr: 0.0003\n")
    job = load_recipe(path, ["reconstruct.target=pruned"]).prune
    assert (job.reconstruct_epochs, job.reconstruct_lr, job.reconstruct_target) == (3, 3e-4, "pruned")
    path.write_text("reconstruct_epochs: 2\nreconstruct:\n  epochs: 3\n")
    with pytest.raises(RecipeError, match="reconstruct_epochs is set twice"):
        load_recipe(path)


@pytest.mark.parametrize("export_format", ["plain", "compact"])
def test_export_reload_is_measured_as_the_job_ran(tmp_path, export_format, monkeypatch):
    """The export stage's reload check measures the model on the job's device, in its dtype and,
    for an ``--offload disk`` job, offloaded again (the reload was a whole in-memory model on the
    CPU whatever the job used). The device is the CPU here."""
    import torch

    from msp_callback import recipe
    from msp_callback.job import Inputs, PruneSettings
    from msp_callback.offload import offload_of
    from msp_callback.plan import SparsityPlan
    from msp_callback.pruner import prune
    from msp_callback.recipe import ExportSettings, _export_stage

    from .conftest import tiny_model, token_batches

    settings = PruneSettings(device="cpu", dtype="bfloat16", offload="disk", offload_folder=str(tmp_path / "files"),
                             progress=False, eval_batch_size=2)
    model = tiny_model("llama").to(torch.bfloat16)
    plan = SparsityPlan.uniform(2, 4, 3, criterion="magnitude")
    prune(model, plan, progress=False)
    inputs = Inputs(model, None, token_batches(2), torch.cat(token_batches(2)), torch.cat(token_batches(2, seed=3)))
    measured = []
    monkeypatch.setattr(recipe, "_perplexity", lambda reloaded, *args: measured.append(
        (str(reloaded.device), reloaded.model.layers[0].mlp.down_proj.weight.dtype, offload_of(reloaded) is not None))
        or 1.0)
    result: dict = {}
    _export_stage(ExportSettings(format=export_format), settings, model, plan, inputs, result, str(tmp_path))
    assert measured == [("cpu", torch.bfloat16, True)]
    assert (result["export"]["reload_device"], result["export"]["reload_dtype"]) == ("cpu", "bfloat16")
    assert result["export"]["measured_sparsity_after_reload"]["pruned_linears_pct"] == pytest.approx(50.0)
