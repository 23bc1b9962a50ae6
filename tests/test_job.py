"""`msp prune` end to end on a tiny random model with the real tokenizer: the model it made is saved
in the run folder and reloads, plainly or through `load_pruned`, with the sparsity and perplexity
the job reported; the sample continuations are in its result."""

import json

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig

from msp_callback import data
from msp_callback.cli import main
from msp_callback.evaluate import perplexity
from msp_callback.export import folder_bytes, load_pruned
from msp_callback.job import PruneSettings, prepare
from msp_callback.models import measure_sparsity
from msp_callback.packaged import ensure_packaged_model
from msp_callback.saving import CONFIG_KEY


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A tiny Llama with SmolLM2's tokenizer in a folder, and small calibration / evaluation text files."""
    root = tmp_path_factory.mktemp("tiny")
    tokenizer = AutoTokenizer.from_pretrained(ensure_packaged_model("smollm2-135m"))
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config).save_pretrained(root / "model")
    tokenizer.save_pretrained(root / "model")
    (root / "calib.txt").write_text("\n\n".join(data.load_corpus("c4")[:40]))
    (root / "eval.txt").write_text("\n\n".join(data.load_corpus("wikipedia")[:4]))
    return root


def _job(tiny, out, *extra):
    """Run `msp prune` on the tiny model; returns its JSON result."""
    argv = ["prune", "--model", str(tiny / "model"), "--calib-corpus", str(tiny / "calib.txt"),
            "--eval-corpus", str(tiny / "eval.txt"), "--sparsity", "2:4", "--allocation", "uniform",
            "--calib-samples", "2", "--calib-seqlen", "32", "--eval-seqlen", "64", "--eval-windows", "4", "--quiet",
            "--output", str(out), "--json", str(out.parent / f"{out.name}.json"), *extra]
    assert main(argv) == 0
    return json.loads((out.parent / f"{out.name}.json").read_text())


def _held_out_perplexity(tiny, model):
    """Perplexity on the job's evaluation windows (drawn as the job draws them)."""
    settings = PruneSettings(model=str(tiny / "model"), calib_corpus=str(tiny / "calib.txt"),
                             eval_corpus=str(tiny / "eval.txt"), calib_samples=2, calib_seqlen=32, eval_seqlen=64,
                             eval_windows=4)
    tokenizer = AutoTokenizer.from_pretrained(tiny / "model")
    return perplexity(model, prepare(settings, loaded=(model, tokenizer)).windows, progress=False)


def test_the_job_saves_a_model_plain_transformers_loads_with_its_sparsity_and_perplexity(tiny, tmp_path, capsys):
    out = tmp_path / "run"
    result = _job(tiny, out)
    saved = result["saved_model"]
    folder = out / "model"
    assert saved["folder"] == str(folder) and saved["format"] == "plain" and saved["bytes"] == folder_bytes(folder)
    assert CONFIG_KEY in json.loads((folder / "config.json").read_text())
    assert (folder / "tokenizer.json").exists()
    summary = json.loads(capsys.readouterr().out)
    assert (summary["saved_model"], summary["saved_model_bytes"]) == (str(folder), saved["bytes"])

    plain = AutoModelForCausalLM.from_pretrained(folder).eval()  # no library on the reading side
    stats = measure_sparsity(plain)
    assert stats.pruned_linears == result["measured_sparsity"]["pruned_linears_pct"] == pytest.approx(50.0, abs=0.5)
    assert stats.per_block == result["measured_sparsity"]["per_block_pct"]
    assert _held_out_perplexity(tiny, plain) == result["pruned_ppl"]

    assert set(result["samples"]) == {"dense", "reconstructed"} and summary["samples"] == result["samples"]
    assert result["sample_prompt"] == "The capital of France is"
    assert all(isinstance(text, str) for text in result["samples"].values())


def test_the_compact_form_reloads_through_load_pruned_and_replaces_an_earlier_model(tiny, tmp_path):
    out = tmp_path / "run"
    _job(tiny, out)  # a plain model first: the compact one replaces it
    result = _job(tiny, out, "--save-model", "compact")
    assert result["saved_model"]["format"] == "compact"
    assert json.loads((out / "model" / "msp_export.json").read_text())["format"] == "compact"
    model, record = load_pruned(out / "model")
    assert record.format == "compact"
    assert measure_sparsity(model).per_block == result["measured_sparsity"]["per_block_pct"]
    assert _held_out_perplexity(tiny, model) == result["pruned_ppl"]


def test_the_saved_model_is_the_final_one_after_reconstruction_and_recovery(tiny, tmp_path):
    out = tmp_path / "run"
    result = _job(tiny, out, "--reconstruct-epochs", "1", "--reconstruct-holdout", "0", "--recover-steps", "2",
                  "--recover-batch-size", "1", "--recover-seqlen", "32", "--recover-lr", "1e-2")
    recovered = result["recovery"]["recovered_ppl"]
    assert "reconstruction" in result and recovered != result["pruned_ppl"]
    plain = AutoModelForCausalLM.from_pretrained(out / "model").eval()
    assert _held_out_perplexity(tiny, plain) == recovered
    assert set(result["samples"]) == {"dense", "reconstructed", "recovered"}


def test_with_reconstruction_the_search_prunes_no_block_whole(tiny, tmp_path):
    """3:4 with reconstruction: levels at most 3 of 4 leave only the uniform plan, so no search runs;
    --max-level 4 lets the search prune blocks whole again."""
    common = ("--allocation", "msp", "--sparsity", "3:4", "--reconstruct-epochs", "1", "--reconstruct-holdout", "0")
    result = _job(tiny, tmp_path / "run", *common)
    assert set(result["levels"]) == {3} and result["allocation"] == "uniform" and "history" not in result
    search = ("--fitness-samples", "1", "--population", "2", "--generations", "1")
    result = _job(tiny, tmp_path / "whole", *common, *search, "--max-level", "4")
    assert result["allocation"] == "msp" and "history" in result


def test_save_model_none_saves_nothing(tiny, tmp_path):
    out = tmp_path / "run"
    result = _job(tiny, out, "--save-model", "none")
    assert "saved_model" not in result and not (out / "model").exists()
    assert (out / "plan.json").exists()


def test_a_recipe_saves_its_final_model_once(tiny, tmp_path):
    common = (f"model: {tiny / 'model'}\ncalib_corpus: {tiny / 'calib.txt'}\neval_corpus: {tiny / 'eval.txt'}\n"
              "sparsity: '2:4'\nallocation: uniform\ncalib_samples: 2\ncalib_seqlen: 32\neval_seqlen: 64\n"
              "eval_windows: 4\nprogress: false\n")
    (tmp_path / "saves.yaml").write_text(common + f"output: {tmp_path / 'saves'}\n")
    assert main(["run", str(tmp_path / "saves.yaml"), "--quiet"]) == 0
    result = json.loads((tmp_path / "saves" / "result.json").read_text())
    assert result["saved_model"]["folder"] == str(tmp_path / "saves" / "model") and "export" not in result
    plain = AutoModelForCausalLM.from_pretrained(tmp_path / "saves" / "model").eval()
    assert _held_out_perplexity(tiny, plain) == result["pruned_ppl"]

    (tmp_path / "exports.yaml").write_text(common + f"output: {tmp_path / 'exports'}\nexport:\n  format: compact\n")
    assert main(["run", str(tmp_path / "exports.yaml"), "--quiet"]) == 0
    result = json.loads((tmp_path / "exports" / "result.json").read_text())
    assert "saved_model" not in result and result["export"]["format"] == "compact"  # the export stage is the save
    assert result["export"]["ppl_after_reload"] == result["pruned_ppl"]


def test_the_saved_model_fine_tunes_on_sparse_with_the_callbacks(tiny, tmp_path):
    from transformers import Trainer, TrainingArguments

    from msp_callback import MSPTrainerCallback
    from msp_callback.models import named_block_linears
    from msp_callback.nm import mask_of

    out = tmp_path / "run"
    result = _job(tiny, out)
    model = AutoModelForCausalLM.from_pretrained(out / "model")  # as the README's quick start does
    zeros = {name: module.weight.detach() == 0 for name, module in named_block_linears(model).items()}
    rows = torch.randint(0, 1000, (8, 16), generator=torch.Generator().manual_seed(0))
    callback = MSPTrainerCallback(sparsity="2:4", progress=False)  # re-installs the masks from config.json
    args = TrainingArguments(output_dir=str(tmp_path / "train"), max_steps=2, per_device_train_batch_size=4,
                             learning_rate=1e-2, report_to=[], use_cpu=True, disable_tqdm=True, save_strategy="no")
    Trainer(model=model, args=args, train_dataset=[{"input_ids": r, "labels": r} for r in rows],
            callbacks=[callback]).train()
    assert callback.plan.levels == result["levels"]  # the job's plan, not pruned again
    for name, module in named_block_linears(model).items():
        pruned = ~mask_of(module)
        assert torch.equal(pruned, zeros[name]), name  # the masks are the job's zeros
        assert not module.weight.detach()[pruned].any(), name  # and they stayed zero through training
