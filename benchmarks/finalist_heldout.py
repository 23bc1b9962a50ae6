"""Would re-scoring the search's finalists by a sequential prune give better held-out plans?

    python benchmarks/finalist_heldout.py --searches level-switch:block:ppl

For every row of results/search_compare.json of the given searches whose sequential check disagreed
with the search (the search's own dense-input fitness chose one plan, the sequential prune scored on
the fitness windows preferred another), prune the sequential pick and evaluate it on the same
held-out windows (same model, data and --data-seed as search_compare.py). The search's pick was
evaluated there already. Writes results/finalist_heldout.json (rows are added; a rerun replaces).
"""

from __future__ import annotations

import argparse
import logging
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent.parent))
sys.path.insert(0, str(Path(__file__).parent))

import torch  # noqa: E402
from results_file import add_row, read  # noqa: E402
from search_compare import data_settings  # noqa: E402
from search_compare import parse_args as parse_compare_args  # noqa: E402

from msp_callback.evaluate import perplexity_report  # noqa: E402
from msp_callback.job import prepare  # noqa: E402
from msp_callback.models import fingerprint  # noqa: E402
from msp_callback.plan import SparsityPlan, parse_nm  # noqa: E402
from msp_callback.pruner import prune  # noqa: E402

RESULTS = Path(__file__).parent / "results"
log = logging.getLogger("finalist_heldout")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--searches", nargs="+", default=["level-switch:block:ppl"], metavar="SEARCH:GRANULARITY:FITNESS")
    p.add_argument("--compare", type=Path, default=RESULTS / "search_compare.json")
    p.add_argument("--out", type=Path, default=RESULTS / "finalist_heldout.json")
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    compare = read(args.compare)
    rows = [r for r in compare["rows"] if r["row"].split("|")[1] in args.searches
            and r.get("granularity", "block") == "block" and not r["sequential_gap"]["same_winner"]]
    if not rows:
        raise SystemExit(f"no disagreeing block-level rows of {args.searches} in {args.compare}")
    inputs = prepare(data_settings(parse_compare_args([])))  # search_compare.py's defaults: every recorded row used them
    restore = inputs.dense_snapshot()
    for r in sorted(rows, key=lambda r: r["row"]):
        criterion, n_text, m_text = r["config"].split(":")
        n, m = parse_nm(f"{n_text}:{m_text}")
        levels = r["sequential_gap"]["sequential_winner"]
        plan = SparsityPlan(m=m, target=n, levels=list(levels), criterion=criterion, allocation="msp",
                            fingerprint=fingerprint(inputs.model))
        started = time.perf_counter()
        prune(inputs.model, plan, inputs.calibration, progress=False)
        report = perplexity_report(inputs.model, inputs.windows, progress=False)
        restore()
        row = {"row": r["row"], "search_pick_levels": r["levels"], "search_pick_ppl": r["ppl"],
               "search_pick_interval": r["interval"], "sequential_pick_levels": levels,
               "sequential_pick_ppl": report.perplexity, "sequential_pick_interval": list(report.interval()),
               "seconds": time.perf_counter() - started}
        log.info("%s: search's pick %.1f, sequential pick %.1f", r["row"], r["ppl"], report.perplexity)
        record = read(args.out)
        record.update(command="python benchmarks/finalist_heldout.py " + " ".join(sys.argv[1:]),
                      eval_tokens=int(inputs.windows.numel()),
                      machine=f"{platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}")
        add_row(args.out, record, row)


if __name__ == "__main__":
    main()
