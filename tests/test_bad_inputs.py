"""Bad input is refused up front: before the model loads, in under a second, with one line naming
the option or file (exit status 2 on the command line), and no file left behind (issue 18)."""

import json
import logging
import re
import time
from dataclasses import fields

import pytest
import torch

from msp_callback import MSPCallback, MSPTrainerCallback, SparsityPlan, prune
from msp_callback.block_walk import CalibrationError
from msp_callback.cli import build_parser, main
from msp_callback.config import ConfigError, MSPConfig, SearchSettings, sections
from msp_callback.job import PruneSettings
from msp_callback.models import ModelStructureError
from msp_callback.plan import PlanError
from msp_callback.recipe import RecipeError, load_recipe

from .conftest import tiny_model, token_batches


def _files(root):
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    """An empty working folder with a few prepared inputs; loading a model there fails the test."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "config.json").write_text("{ not json")
    (tmp_path / "a_file.txt").write_text("text")
    (tmp_path / "empty.txt").write_text("  \n")
    (tmp_path / "corrupt_plan.json").write_text('{"m": 4, "levels": [1, ')
    SparsityPlan(m=4, target=2, levels=[2, 2, 2]).save(tmp_path / "plan_2of4.json")
    (tmp_path / "foreign").mkdir()
    (tmp_path / "foreign" / "thesis.tex").write_text("mine")
    (tmp_path / "json_dir").mkdir()
    (tmp_path / "damaged_run").mkdir()
    (tmp_path / "damaged_run" / "search_checkpoint.json").write_text("{ half written")
    (tmp_path / "taken" / "model").mkdir(parents=True)  # an earlier run's folder whose model/ holds something else
    (tmp_path / "taken" / "plan.json").write_text("{}")
    (tmp_path / "taken" / "model" / "notes.txt").write_text("mine")
    tiny_config = {"model_type": "llama", "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
                   "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 128}
    for name, change in (("bad_values", {"hidden_size": "abc"}), ("bad_heads", {"num_attention_heads": 5}),
                         ("bad_act", {"hidden_act": "nope"}), ("bad_type", {"model_type": "lama"})):
        (tmp_path / name).mkdir()
        (tmp_path / name / "config.json").write_text(json.dumps({**tiny_config, **change}))
    (tmp_path / "taken_by_file").mkdir()
    (tmp_path / "taken_by_file" / "model").write_text("not a folder")

    def no_model(*args, **kwargs):
        raise AssertionError("the model was loaded before the bad input was found")

    monkeypatch.setattr("msp_callback.job.load_causal_lm", no_model)
    monkeypatch.setattr("msp_callback.loading.load_causal_lm", no_model)
    monkeypatch.setattr("msp_callback.export.load_pruned", no_model)
    return tmp_path


CLI_CASES = [
    (["--sparsity", "5:4"], "--sparsity"),
    (["--sparsity", "three-quarters"], "--sparsity"),
    (["--sparsity", "3:0"], "--sparsity"),
    (["--criterion", "wand"], "did you mean 'wanda'"),
    (["--allocation", "msq"], "--allocation"),
    (["--calib-samples", "0"], "--calib-samples"),
    (["--calib-seqlen", "0"], "--calib-seqlen"),
    (["--calib-seqlen", "many"], "--calib-seqlen"),
    (["--eval-seqlen", "0"], "--eval-seqlen"),
    (["--eval-windows", "-1"], "--eval-windows"),
    (["--eval-batch-size", "0"], "--eval-batch-size"),
    (["--fitness-samples", "-1"], "--fitness-samples"),
    (["--fitness-seqlen", "1"], "--fitness-seqlen"),
    (["--seed", "-1"], "--seed"),
    (["--bos", "maybe"], "--bos"),
    (["--population", "1"], "--population"),
    (["--generations", "-1"], "--generations"),
    (["--mutation-rate", "1.5"], "--mutation-rate"),
    (["--init", "paper"], "--init"),
    (["--fitness", "mse"], "--fitness"),
    (["--fitness-batch-size", "0"], "--fitness-batch-size"),
    (["--trace-strength", "-1"], "--trace-strength"),
    (["--screen-windows", "4"], "--screen-windows"),
    (["--screen-keep", "0.2"], "--screen-keep"),
    (["--popualtion", "3"], "did you mean '--population'"),
    (["--model", "./no-such-model"], "--model ./no-such-model"),
    (["--model", "broken"], "config.json is not valid JSON"),
    (["--model", "a_file.txt"], "--model a_file.txt"),
    (["--calib-corpus", "no-such-corpus"], "--calib-corpus"),
    (["--eval-corpus", "empty.txt"], "--eval-corpus empty.txt"),
    (["--plan", "missing.json"], "--plan missing.json"),
    (["--plan", "corrupt_plan.json"], "--plan corrupt_plan.json"),
    (["--plan", "plan_2of4.json", "--sparsity", "3:4"], "--sparsity 3:4 contradicts --plan"),
    (["--plan", "plan_2of4.json", "--allocation", "msp"], "--allocation"),
    (["--resume", "--allocation", "msp", "--output", "new_run", "--reconstruct-epochs", "0"], "--resume"),
    (["--resume", "--allocation", "uniform", "--reconstruct-epochs", "0"], "--resume"),
    (["--population", "8"], "with reconstruction no block is pruned whole, which at 3:4 leaves only the uniform plan"),
    (["--resume", "--allocation", "msp", "--output", "damaged_run", "--reconstruct-epochs", "0"], "damaged"),
    (["--output", "a_file.txt"], "--output a_file.txt"),
    (["--output", "foreign"], "--output foreign"),
    (["--json", "json_dir"], "--json json_dir"),
    (["--json", "a_file.txt/result.json"], "--json"),
    (["--device", "cuda:99"], "--device"),
    (["--device", "tpu"], "--device"),
    (["--dtype", "fp8"], "--dtype"),
    (["--offload", "nvme"], "--offload"),
    (["--offload", "disk", "--device", "cuda"], "--device"),
    (["--offload", "disk", "--offload-folder", "a_file.txt"], "--offload-folder a_file.txt"),
    (["--offload-folder", "somewhere"], "--offload-folder is only used with --offload disk"),
    (["--recover-steps", "-1"], "--recover-steps"),
    (["--recover-method", "full"], "--recover-method"),
    (["--recover-loss", "mse"], "--recover-loss"),
    (["--recover-steps", "2", "--recover-lr", "-1"], "--recover-lr"),
    (["--recover-steps", "2", "--offload", "disk"], "cannot train a model offloaded to disk"),
    (["--recover-steps", "2", "--dtype", "fp16"], "does not train float16 weights"),
    (["--compare-uniform", "--allocation", "uniform"], "compares uniform with itself"),
    (["--reconstruct-epochs", "-1"], "--reconstruct-epochs"),
    (["--reconstruct-epochs", "2", "--reconstruct-target", "teacher"], "--reconstruct-target"),
    (["--reconstruct-epochs", "2", "--reconstruct-loss", "l1"], "--reconstruct-loss"),
    (["--reconstruct-epochs", "2", "--reconstruct-lr", "-1"], "--reconstruct-lr"),
    (["--reconstruct-epochs", "2", "--reconstruct-batch-size", "0"], "--reconstruct-batch-size"),
    (["--reconstruct-epochs", "2", "--reconstruct-patience", "0"], "--reconstruct-patience"),
    (["--reconstruct-epochs", "0", "--reconstruct-lr", "1e-3"], "--reconstruct-lr is only used with --reconstruct-epochs"),
    (["--allocation", "uniform", "--reconstruct-epochs", "0", "--reconstruct-holdout", "2"], "--reconstruct-holdout is only used"),
    # options the other settings would leave unused (issue 30): refused, never dropped silently
    (["--mutation-rate", "0.3", "--reconstruct-epochs", "0"], "--mutation-rate is used only by the paper's search"),
    (["--search", "paper", "--survivors", "3", "--reconstruct-epochs", "0"], "--survivors is used only by the level-switch search"),
    (["--search", "paper", "--max-switches", "2", "--reconstruct-epochs", "0"], "--max-switches is used only by the level-switch search"),
    (["--search", "paper", "--screen-keep", "0.75", "--reconstruct-epochs", "0"],
     "--screen-keep is used only by the paper's search when it screens"),
    (["--screen-keep", "0.75", "--reconstruct-epochs", "0"], "--screen-keep is used only by the paper's search when it screens"),
    (["--allocation", "uniform", "--population", "8"], "--population is a setting of the MSP search"),
    (["--allocation", "owl", "--fitness-samples", "8"], "--fitness-samples is a setting of the MSP search"),
    (["--plan", "plan_2of4.json", "--generations", "3"], "--plan applies the saved plan"),
    (["--trace-strength", "2"], "--trace-strength is used only with Fisher-trace levels"),
    (["--recover-lr", "1e-3"], "--recover-lr is a recovery setting, and this job runs no recovery"),
    (["--recover-steps", "0", "--recover-method", "lora"], "--recover-method is a recovery setting"),
    (["--recover-steps", "2", "--recover-loss", "lm", "--recover-top-k", "8"], "--recover-top-k is used only by distillation"),
    (["--recover-steps", "2", "--recover-lora-rank", "8"], "--recover-lora-rank is used only by --recover-method lora"),
    (["--max-level", "2"], "max_level (--max-level) 2 must lie between the target's N and M (3 and 4 for 3:4)"),
    (["--sparsity", "2:4", "--max-level", "5"], "above M is no level"),
    (["--allocation", "uniform", "--max-level", "3"], "--max-level is a setting of the MSP search"),
    (["--sparsity", "0:4"], "--sparsity) 0:4 prunes nothing"),
    (["--sparsity", "0:8"], "give N of at least 1, e.g. 4:8"),
    (["--output", "taken"], "taken/model exists and is not an export"),
    (["--model", "bad_values"], "bad_values/config.json: field 'hidden_size' = 'abc' is invalid"),
    (["--model", "bad_heads"], "bad_heads/config.json: field 'num_attention_heads' = 5 is invalid"),
    (["--model", "bad_act"], "bad_act/config.json: field 'hidden_act' = 'nope' cannot build the model"),
    (["--model", "bad_type"], "field 'model_type' = 'lama' is not an architecture this transformers knows; did you mean"),
    (["--model", "org/no-such-model"], "--model org/no-such-model: not found"),
    (["--model", "./no-such-model"], "not found (no such folder)"),
    (["--output", "taken_by_file"], "taken_by_file/model is a file"),
]


EVAL_CASES = [
    (["./no-such-model"], "msp eval ./no-such-model: not found"),
    (["org/no-such-model"], "msp eval org/no-such-model: not found"),
    (["no-such-model"], "msp eval no-such-model: not found"),
    (["broken"], "config.json is not valid JSON"),
    (["bad_values"], "field 'hidden_size'"),
    (["smollm2-135m", "--limit", "0"], "--limit: must be at least 1"),
    (["smollm2-135m", "--batch-size", "0"], "--batch-size: must be at least 1"),
    (["smollm2-135m", "--device", "cuda:99"], "--device"),
    (["smollm2-135m", "--dtype", "fp8"], "--dtype"),
    (["smollm2-135m", "--json", "json_dir"], "--json json_dir"),
]


COMMAND_CASES = [("prune", *case) for case in CLI_CASES] + [("eval", *case) for case in EVAL_CASES]


@pytest.mark.parametrize("command,argv,names", COMMAND_CASES, ids=[" ".join([c, *a]) for c, a, _ in COMMAND_CASES])
def test_cli_refuses_bad_input_up_front(workdir, capsys, caplog, command, argv, names):
    before = _files(workdir)
    started = time.perf_counter()
    with caplog.at_level(logging.ERROR):
        try:
            code = main([command, *argv])
        except SystemExit as exit_:  # argparse's own errors
            code = exit_.code
    seconds = time.perf_counter() - started
    message = (capsys.readouterr().err + "".join(r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR)).strip()
    assert code == 2, message
    assert names in message, message
    assert "\n" not in message and "Traceback" not in message, message
    assert seconds < 1.0, seconds
    assert _files(workdir) == before


RECIPE_CASES = [
    ("populaton: 3\n", [], "did you mean 'population'"),
    ("population: 0\n", [], "population"),
    ("sparsity: '3:4'\n", ["calib_seqlen=0"], "calib_seqlen"),
    ("lora:\n  rnak: 3\n", [], "did you mean 'rank'"),
    ("plan: missing.json\n", [], "--plan missing.json"),
    ("recover: 3\n", [], "recover must be a mapping"),
    ("export:\n  format: zip\n", [], "export.format must be one of plain, compact"),
    ("recover:\n  stpes: 3\n", [], "did you mean 'recover_steps'"),
    ("recover_steps: 2\nrecover:\n  steps: 3\n", [], "recover_steps is set twice"),
]


@pytest.mark.parametrize("text,overrides,names", RECIPE_CASES, ids=[t.split(":")[0] for t, _, _ in RECIPE_CASES])
def test_recipes_refuse_bad_input_up_front(workdir, caplog, text, overrides, names):
    (workdir / "job.yaml").write_text(text)
    before = _files(workdir)
    started = time.perf_counter()
    with caplog.at_level(logging.ERROR):
        code = main(["run", "job.yaml", *[a for o in overrides for a in ("--set", o)]])
    message = "".join(r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR)
    assert code == 2 and names in message and "\n" not in message, message
    assert time.perf_counter() - started < 1.0
    assert _files(workdir) == before


def test_python_api_refuses_bad_settings_by_name():
    with pytest.raises(ConfigError, match="did you mean 'population'"):
        MSPCallback(popualtion=3)
    with pytest.raises(ConfigError, match="population .* at least 2"):
        MSPTrainerCallback(population=1)
    with pytest.raises(ConfigError, match="when must be"):
        MSPCallback(when="end")
    with pytest.raises(PlanError, match="sparsity .* must lie in 0..4"):
        MSPCallback(sparsity="5:4")
    with pytest.raises(ConfigError, match="mutation_rate"):
        MSPConfig(mutation_rate=2.0)
    with pytest.raises(ConfigError, match="calib_seqlen"):
        PruneSettings(calib_seqlen=0)
    with pytest.raises(RecipeError, match="not found"):
        load_recipe("no/such/recipe.yaml")


def test_non_finite_weights_and_activations_are_caught_before_pruning():
    model = tiny_model("llama")
    plan = SparsityPlan(m=4, target=2, levels=[2, 2, 2], criterion="wanda")
    with torch.no_grad():
        model.model.layers[1].mlp.down_proj.weight[0, 0] = float("nan")
    with pytest.raises(ModelStructureError, match="block 1 mlp.down_proj: the weight holds NaN"):
        prune(model, plan, token_batches(2), progress=False)
    model = tiny_model("llama")
    with torch.no_grad():
        model.model.embed_tokens.weight.fill_(float("inf"))
    with pytest.raises(CalibrationError, match="inputs of decoder block 0 hold NaN or inf"):
        prune(model, plan, token_batches(2), progress=False)


def test_encoder_models_are_refused():
    from transformers import BertConfig, BertForMaskedLM

    bert = BertForMaskedLM(BertConfig(vocab_size=128, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                                      intermediate_size=128))
    with pytest.raises(ModelStructureError, match="bidirectional encoder, not a causal language model"):
        prune(bert, SparsityPlan(m=4, target=2, levels=[2, 2]), token_batches(2), progress=False)


def test_a_resumed_search_refuses_other_data(tmp_path):
    from msp_callback.search.runner import search_plan

    model = tiny_model("llama")
    ckpt = tmp_path / "search.json"
    settings = SearchSettings(population=4, generations=1, search_checkpoint=str(ckpt))
    fitness = torch.cat(token_batches(2, seed=9))
    search_plan(model, 2, 4, "wanda", token_batches(2), fitness, settings, progress=False)
    settings.resume = True
    with pytest.raises(PlanError, match="other calibration or fitness data"):
        search_plan(model, 2, 4, "wanda", token_batches(2, seed=3), fitness, settings, progress=False)


def test_every_setting_reaches_the_cli_recipes_and_both_callbacks():
    """Each option is one field of the configuration; every entry point exposes all of them."""
    import inspect

    parser = build_parser()
    prune_parser = parser._subparsers._group_actions[0].choices["prune"]
    dests = {action.dest for action in prune_parser._actions}
    for section in sections(PruneSettings):
        for f in fields(section):
            if f.metadata.get("cli", True):
                assert f.name in dests, f"msp prune has no option for {f.name}"
    recipe_keys = {f.name for f in fields(PruneSettings)}
    for f in fields(SearchSettings):
        assert f.name in recipe_keys, f"recipes cannot set {f.name}"
    for callback in (MSPCallback, MSPTrainerCallback):
        params = inspect.signature(callback).parameters
        for f in fields(MSPConfig):
            assert f.name in params and params[f.name].default == f.default, (callback.__name__, f.name)
    assert {f.name for f in fields(SearchSettings)} <= {f.name for f in fields(MSPConfig)}


def test_plan_file_and_search_defaults_are_declared_once():
    """The search defaults come from `SearchSettings` everywhere (the job, the callbacks)."""
    job, callback = PruneSettings(), MSPConfig()
    for f in fields(SearchSettings):
        assert getattr(job, f.name) == getattr(callback, f.name) == f.default, f.name
    assert json.loads(json.dumps({f.name: f.default for f in fields(SearchSettings)}))


def test_a_recipe_refuses_lora_on_blocks_offloaded_to_a_gpu(workdir, caplog, monkeypatch):
    from msp_callback import recipe

    monkeypatch.setattr(recipe, "resolve_device", lambda name: torch.device("cuda"))  # as on a GPU machine
    (workdir / "job.yaml").write_text("offload: disk\nlora:\n  steps: 2\n")
    with caplog.at_level(logging.ERROR):
        assert main(["run", "job.yaml"]) == 2
    assert "lora stage cannot train a model whose blocks are offloaded" in caplog.text


def test_an_output_folder_holding_only_a_recovery_checkpoint_is_an_earlier_run(tmp_path):
    from msp_callback.preflight import check_output_folder

    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "recovery_checkpoint.pt").write_bytes(b"x")
    check_output_folder("--output", tmp_path / "run")  # an interrupted recovery's folder: resumable, not foreign


def test_a_recipe_warns_about_settings_its_job_leaves_unused(workdir, caplog):
    (workdir / "job.yaml").write_text("allocation: uniform\npopulation: 8\nrecover_lr: 0.001\noutput: a_file.txt\n")
    with caplog.at_level(logging.WARNING):
        assert main(["run", "job.yaml"]) == 2  # the output, found after the warnings
    assert "population (--population) is a setting of the MSP search" in caplog.text
    assert "recover_lr (--recover-lr) is a recovery setting" in caplog.text
    assert "it is ignored" in caplog.text


def test_a_recipe_with_an_export_section_takes_no_save_model(workdir, caplog):
    (workdir / "job.yaml").write_text("save_model: compact\nexport:\n  format: plain\n")
    with caplog.at_level(logging.ERROR):
        assert main(["run", "job.yaml"]) == 2
    assert "save_model and the export section both save the model" in caplog.text


def test_shipped_recipes_leave_no_setting_unused():
    from msp_callback.config import ignored_settings

    from .test_recipe import RECIPES

    for path in RECIPES:
        recipe = load_recipe(path)
        assert ignored_settings(recipe.prune, recipe.given) == [], path


def test_the_callbacks_warn_about_settings_their_others_leave_unused(caplog):
    with caplog.at_level(logging.WARNING, logger="msp_callback.config"):
        MSPCallback(mutation_rate=0.3, reconstruct_epochs=0)
        MSPTrainerCallback(allocation="uniform", generations=3)
        MSPConfig(recover_lr=1e-3)
    assert "mutation_rate (--mutation-rate) is used only by the paper's search" in caplog.text
    assert "generations (--generations) is a setting of the MSP search" in caplog.text
    assert "recover_lr (--recover-lr) is a recovery setting" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="msp_callback.config"):
        MSPConfig(search="paper", mutation_rate=0.3, recover_steps=2, recover_lr=1e-3, reconstruct_epochs=0)  # all used
    assert caplog.text == ""


@pytest.mark.parametrize("change,names", [
    ({"population": 5}, "population (--population) 4, and this one has 5"),
    ({"max_switches": 1}, "max_switches (--max-switches) 3"),
    ({"init": "random"}, "init (--init) sensitivity"),
    ({"n": 1}, "sparsity (--sparsity) 2:4, and this one has 1:4"),
])
def test_a_resumed_search_refuses_a_setting_that_would_have_changed_it(tmp_path, change, names):
    from dataclasses import replace

    from msp_callback.search.runner import search_plan

    model, n = tiny_model("llama"), change.pop("n", 2)
    settings = SearchSettings(population=4, generations=1, search_checkpoint=str(tmp_path / "search.json"))
    calibration, fitness = token_batches(2), torch.cat(token_batches(2, seed=9))
    search_plan(model, 2, 4, "wanda", calibration, fitness, settings, progress=False)
    more = replace(settings, generations=2, resume=True)
    search_plan(model, 2, 4, "wanda", calibration, fitness, more, progress=False)  # more generations: fine
    with pytest.raises(PlanError, match=re.escape(names)):
        search_plan(model, n, 4, "wanda", calibration, fitness, replace(more, **change), progress=False)


@pytest.fixture
def real_tokenizer():
    from transformers import AutoTokenizer

    from msp_callback.packaged import ensure_packaged_model

    return AutoTokenizer.from_pretrained(ensure_packaged_model("smollm2-135m"))


@pytest.mark.parametrize("argv,names", [
    (["--fitness-seqlen", "100000"], "fitness_seqlen (--fitness-seqlen)"),
    (["--calib-seqlen", "100000"], "calib_seqlen (--calib-seqlen)"),
    (["--eval-seqlen", "100000"], "eval_seqlen (--eval-seqlen)"),
])
def test_errors_deep_in_data_sampling_name_the_option(workdir, caplog, monkeypatch, real_tokenizer, argv, names):
    (workdir / "short.txt").write_text(" ".join(["words"] * 300))
    monkeypatch.setattr("msp_callback.job.load_causal_lm", lambda *a, **k: (tiny_model("llama"), real_tokenizer))
    small = ["--calib-seqlen", "16", "--fitness-seqlen", "16", "--eval-seqlen", "16",  # the last one given wins
             "--reconstruct-epochs", "0"]
    with caplog.at_level(logging.ERROR):
        code = main(["prune", "--calib-corpus", "short.txt", "--eval-corpus", "short.txt", "--quiet", *small, *argv])
    message = "".join(r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR)
    assert code == 2 and names in message and "too few" in message and "\n" not in message, message


def test_recovery_windows_name_their_options(tmp_path, real_tokenizer):
    from msp_callback.job import prepare, recovery_inputs

    (tmp_path / "short.txt").write_text(" ".join(["words"] * 300))
    settings = PruneSettings(calib_corpus=str(tmp_path / "short.txt"), eval_corpus=str(tmp_path / "short.txt"),
                             calib_seqlen=16, fitness_seqlen=16, eval_seqlen=16, recover_steps=1, recover_seqlen=100_000)
    inputs = prepare(settings, loaded=(tiny_model("llama"), real_tokenizer))
    with pytest.raises(ValueError, match=re.escape("recover_seqlen (--recover-seqlen)")):
        recovery_inputs(settings, inputs)


def test_no_fitness_windows_means_the_search_scores_on_the_calibration_rows(tmp_path, real_tokenizer):
    from msp_callback.job import prepare

    (tmp_path / "text.txt").write_text(" ".join(["words"] * 300))
    settings = PruneSettings(calib_corpus=str(tmp_path / "text.txt"), eval_corpus=str(tmp_path / "text.txt"),
                             calib_seqlen=16, eval_seqlen=16, fitness_samples=0)
    assert prepare(settings, loaded=(tiny_model("llama"), real_tokenizer)).fitness_windows is None  # not "num_samples"


def test_a_resumed_search_names_the_data_setting_that_changed(tmp_path):
    from msp_callback.search.runner import search_plan

    model = tiny_model("llama")
    settings = SearchSettings(population=4, generations=1, search_checkpoint=str(tmp_path / "search.json"))
    calibration, fitness = token_batches(2), torch.cat(token_batches(2, seed=9))
    search_plan(model, 2, 4, "wanda", calibration, fitness, settings, progress=False, data_settings={"calib_seqlen": 16})
    settings.resume = True
    with pytest.raises(PlanError, match=re.escape("calib_seqlen (--calib-seqlen) 16, and this one has 32")):
        search_plan(model, 2, 4, "wanda", calibration, fitness, settings, progress=False,
                    data_settings={"calib_seqlen": 32})
