"""Report sections on pruned quality: the criterion x target grid, uniform baselines, thread count."""

from __future__ import annotations

import json

from report_common import RESULTS, fmt, with_interval

SPARSITY_ORDER = ["2:4", "4:8", "8:16", "5:8", "10:16", "3:4", "6:8", "12:16", "7:8", "14:16"]
CRITERIA = ["magnitude", "wanda", "sparsegpt"]


def _grid_results(quick: bool) -> list[dict]:
    """Every msp_search*.json with the suite's allocations, full-setting or quick."""
    found = []
    for path in sorted(RESULTS.glob("msp_search*.json")):
        r = json.loads(path.read_text())
        a = r["arguments"]
        extra_seed = a.get("seed", 0) != 0  # other seeds feed the noise section, not the table
        if bool(a.get("quick")) == quick and path.stem != "msp_search_2of4" and not a.get("replay") and not extra_seed:
            r["file"] = path.name
            found.append(r)
    key = lambda r: (SPARSITY_ORDER.index(r["sparsity"].split()[0]), CRITERIA.index(r["criterion"]))  # noqa: E731
    return sorted(found, key=key)


def _settings_text(r: dict) -> str:
    a = r["arguments"]
    return (f"calibration {a['calib_samples']} x {a['calib_seqlen']} tokens of {r['calib_corpus']}, fitness "
            f"{a['fitness_samples']} x {a['fitness_seqlen']}, search {a['population']} x {a['generations']} "
            f"(init {a['init']}), evaluation {a['eval_windows']} x {a['eval_seqlen']} = {r['eval_tokens']:,} tokens "
            f"of held-out {r['eval_corpus']}, seed {a['seed']}; {r['machine']}")


def quality_section(results: list[dict], title: str) -> list[str]:
    if not results:
        return []
    labels: dict[str, str] = {}
    lines = [f"## {title}", "",
             "Perplexity (lower is better) of smollm2-135m pruned by each criterion at each target, with per-block",
             "levels from each allocation; every allocation in a row shares one run's data and evaluation.", "",
             "| criterion | target | dense | uniform | OWL | MSP | MSP vs uniform | MSP vs OWL | settings |",
             "|---|---|---:|---:|---:|---:|---:|---:|---|"]
    wins, notes = [], []
    for r in results:
        label = labels.setdefault(_settings_text(r), chr(ord("A") + len(labels)))
        rows = {row["allocation"]: row["ppl"] for row in r["rows"]}
        cell = lambda k: fmt(rows[k]) if k in rows else "not run"  # noqa: E731
        ratio = lambda k: f"{rows[k] / rows['msp']:.1f}x" if k in rows and "msp" in rows else ""  # noqa: E731
        lines.append(f"| {r['criterion']} | {r['sparsity']} | {fmt(r['dense_ppl'])} | {cell('uniform')} | {cell('owl')} | "
                     f"{cell('msp')} | {ratio('uniform')} | {ratio('owl')} | {label}: `{r['file']}` |")
        if "msp" in rows and "uniform" in rows:
            wins.append(rows["msp"] < rows["uniform"] and rows["msp"] < rows.get("owl", float("inf")))
            notes.append(f"{r['criterion']} {r['sparsity'].split()[0]}: {rows['uniform'] / rows['msp']:,.1f}x")
        if "owl" in rows and "uniform" in rows and rows["owl"] > rows["uniform"]:
            owl_levels = next(row["levels"] for row in r["rows"] if row["allocation"] == "owl")
            m = int(r["sparsity"].split(":")[1].split()[0])
            lines_owl = (f"OWL is worse than uniform for {r['criterion']} at {r['sparsity'].split()[0]} "
                         f"({fmt(rows['owl'])} vs {fmt(rows['uniform'])}); its levels put {owl_levels.count(m)} "
                         f"block(s) at {m}:{m}, every weight pruned.")
            notes.append(lines_owl)
    lines += ["", "Settings:"] + [f"- {label}: {text}." for text, label in labels.items()]
    lines += ["", "The thread count changes timings and, for SparseGPT, the pruned model itself (see \"Thread count\" "
              "below): compare SparseGPT rows only at equal threads."]
    if wins:
        lines += ["", f"MSP is lowest of the three allocations in {sum(wins)} of {len(wins)} rows measured here."]
    factors = [n for n in notes if n.endswith("x")]
    if factors:
        lines += ["", "MSP against uniform, per row: " + "; ".join(factors) + ". The paper reports one to two orders of "
                  "magnitude at 75% on 7B-scale models. The factor grows with how badly uniform levels hurt the "
                  "criterion: SparseGPT's weight update already repairs much of that damage, leaving the allocation "
                  "less to fix; magnitude and Wanda leave far more. At these perplexities one window's loss moves "
                  "the total a lot, so read factors as orders of magnitude."]
    lines += [""] + [n for n in notes if not n.endswith("x")] if any(not n.endswith("x") for n in notes) else []
    return lines + [""]


def missing_cells(results: list[dict]) -> list[str]:
    """The suite's full-setting cells (results named by `suite.cell_name`) not run yet."""
    from suite import cell_name

    files = {r["file"] for r in results}
    todo = [f"{c} {s}" for s in SPARSITY_ORDER for c in CRITERIA if f"{cell_name(c, s, False)}.json" not in files]
    if not todo:
        return []
    return [f"Grid cells not run yet at full settings ({len(todo)} of {len(SPARSITY_ORDER) * len(CRITERIA)}; "
            "`python benchmarks/suite.py` runs them, resumably): " + ", ".join(todo) + ".", ""]


def baselines_section(r: dict) -> list[str]:
    lines = [
        "## Dense and uniform N:M perplexity, per criterion",
        "",
        f"Model {r['model']}; calibration {r['calib_samples']} x {r['calib_seqlen']} tokens of {r['calib_corpus']} "
        f"(seed {r['seed']}); evaluation {r['eval_windows']} x {r['eval_seqlen']} = {r['eval_tokens']:,} tokens of "
        f"held-out {r['eval_corpus']}; {r['machine']}.",
        f"Command: `{r['command']}`",
        "",
        "| criterion | sparsity | perplexity |",
        "|---|---|---:|",
    ]
    lines += [f"| {row['criterion']} | {row['sparsity']} | {fmt(row['ppl'])} |" for row in r["rows"]]
    return lines + [""]


def thread_section(r: dict) -> list[str]:
    """Same pruning at several thread counts: differing decisions and perplexity."""
    lines = ["## Thread count: does it change the pruned model?", "",
             f"Model {r['model']}, uniform {r['sparsity']}, calibration {r['calib']}, evaluation {r['eval_tokens']:,} "
             f"held-out tokens, {r['machine']}. Command: `{r['command']}`", "",
             "| criterion | threads | perplexity | pruning decisions differing from the first row of the criterion |",
             "|---|---:|---:|---:|"]
    for run in r["runs"]:
        share = 100 * run["decisions_differing_from_first"] / run["weights"]
        lines.append(f"| {run['criterion']} | {run['threads']} | {with_interval(run)} | "
                     f"{run['decisions_differing_from_first']:,} ({share:.1f}%) |")
    changed = sorted({run["criterion"] for run in r["runs"] if run["decisions_differing_from_first"]})
    same = sorted({run["criterion"] for run in r["runs"]} - set(changed))
    lines += ["", (f"Identical at every thread count: {', '.join(same)}. " if same else "")
              + (f"Changed by the thread count: {', '.join(changed)} (BLAS sums the Hessian and its inverse in a "
                 "thread-dependent order; near-tied decisions flip, and the sequential update carries each flip into "
                 "the blocks after it)." if changed else "No criterion changed with the thread count."), ""]
    return lines
