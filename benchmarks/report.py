"""Generate BENCHMARKS.md from the JSON results in benchmarks/results/ (never edit it by hand).

    python benchmarks/report.py
"""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"


def _load(name: str) -> dict | None:
    path = RESULTS / f"{name}.json"
    return json.loads(path.read_text()) if path.exists() else None


def _fmt(x: float) -> str:
    return f"{x:,.2f}" if x < 1000 else f"{x:,.0f}"


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
    lines += [f"| {row['criterion']} | {row['sparsity']} | {_fmt(row['ppl'])} |" for row in r["rows"]]
    return lines + [""]


def draw_search_plots(r: dict) -> None:
    """Re-draw the level and convergence plots from the JSON, so they always match the tables."""
    from msp_callback.plots import plot_convergence, plot_levels

    a, m = r["arguments"], int(r["sparsity"].split(":")[1].split()[0])
    title = f"{r['model']}, {r['criterion']}, {r['sparsity']}"
    plot_levels({row["allocation"]: row["levels"] for row in r["rows"]}, m, RESULTS / f"{a['name']}_levels.png", title=title)
    for row in r["rows"]:
        if "history" in row:
            plot_convergence(row["history"], RESULTS / f"{a['name']}_convergence.png", title=f"MSP search, {title}")


def search_section(r: dict, title: str) -> list[str]:
    draw_search_plots(r)
    a = r["arguments"]
    rows = {row["allocation"]: row for row in r["rows"]}
    lines = [
        f"## {title}",
        "",
        f"Model {r['model']}, criterion {r['criterion']}, target {r['sparsity']}; calibration {a['calib_samples']} x "
        f"{a['calib_seqlen']} tokens of {r['calib_corpus']}; fitness split {a['fitness_samples']} x {a['fitness_seqlen']} "
        f"= {r['fitness_tokens']:,} other tokens of {r['calib_corpus']}; evaluation {a['eval_windows']} x {a['eval_seqlen']} = "
        f"{r['eval_tokens']:,} tokens of held-out {r['eval_corpus']}; search population {a['population']} x "
        f"{a['generations']} generations, init {a['init']}, seed {a['seed']}; {r['machine']}.",
        f"Command: `{r['command']}`",
        "",
        f"Dense perplexity: {_fmt(r['dense_ppl'])}.",
        "",
        "| allocation | perplexity | vs uniform | plan s | final prune s | levels |",
        "|---|---:|---:|---:|---:|---|",
    ]
    uniform = rows.get("uniform", {}).get("ppl")
    for name, row in rows.items():
        ratio = f"{uniform / row['ppl']:.1f}x lower" if uniform and name != "uniform" else ""
        plan_s = f"{row['plan_seconds']:.0f}" + (f" (levels planned for {row['plan_shared_with']})"
                                                  if "plan_shared_with" in row else "")
        lines.append(f"| {name} | {_with_interval(row)} | {ratio} | {plan_s} | "
                     f"{row['prune_seconds']:.0f} | {' '.join(map(str, row['levels']))} |")
    if "msp" in rows and "owl" in rows:
        lines += ["", f"MSP against OWL: {rows['owl']['ppl'] / rows['msp']['ppl']:.1f}x lower perplexity."]
    msp = rows.get("msp")
    if msp:
        per_eval = (msp["search_seconds"] - msp["level_cache_seconds"]) / max(1, msp["fitness_evaluations"])
        lines += [
            "",
            f"Search cost: {msp['search_seconds']:.0f} s in all ({msp['search_seconds'] / 60:.1f} min): level cache "
            f"{msp['level_cache_seconds']:.0f} s, then {msp['fitness_evaluations']} fitness evaluations at "
            f"{per_eval:.2f} s each on average (the cache means repeated individuals are never re-evaluated). "
            f"Plan and prune times are single runs on a shared 2-core machine.",
        ]
    c = r["fitness_cost"]
    if c is None:
        return lines + _plots(a["name"])
    lines += [
        "",
        "One fitness evaluation over the fitness split, measured side by side in the same run "
        f"(median of 3 plain forwards and of {len(c['fast_eval_all_s'])} fast evaluations):",
        "",
        "| what | seconds |",
        "|---|---:|",
        f"| plain forward pass (dense model, same tokens) | {c['plain_forward_s']:.2f} |",
        f"| fast path: level cache swap + block prefix cache + forward | {c['fast_eval_s']:.2f} |",
    ]
    if "naive_eval_s" in c:
        lines += [
            f"| naive: sequential re-prune with the criterion + full forward | {c['naive_eval_s']:.2f} |",
            "",
            f"The naive evaluation costs {c['naive_over_fast']:.0f}x the fast one "
            f"(naive timed on {len(c['individuals'][: a['naive_individuals']])} individual(s), fast on {len(c['individuals'])}; "
            f"building the level cache once took {c['level_cache_build_s']:.0f} s). "
            + (f"A naive search with the same {msp['fitness_evaluations']} evaluations would take about "
               f"{msp['fitness_evaluations'] * c['naive_eval_s'] / 3600:.1f} h against the "
               f"{msp['search_seconds'] / 60:.0f} min measured." if msp else ""),
        ]
    return lines + _plots(a["name"])


def _plots(name: str) -> list[str]:
    files = [f"{name}_levels.png", f"{name}_convergence.png"]
    return [""] + [f"![{f}](benchmarks/results/{f})" for f in files if (RESULTS / f).exists()] + [""]


def ablation_section(r: dict) -> list[str]:
    from search_ablation import STUDIES, plot_study, study_runs

    a, base = r["arguments"], r["baseline"]
    lines = [
        "## Search ablations: initialisation, population, mutation rate, fitness",
        "",
        f"Model {a['model']}, criterion {a['criterion']}, target {r['sparsity']}; calibration {a['calib_samples']} x "
        f"{a['calib_seqlen']}; fitness split {a['fitness_samples']} x {a['fitness_seqlen']} = {r['fitness_tokens']:,} tokens; "
        f"{a['generations']} generations; search seeds {', '.join(map(str, a['seeds']))}; held-out evaluation "
        f"{r['eval_tokens']:,} tokens; {r['machine']}. Baseline: init {base['init']}, fitness {base['fitness']}, population "
        f"{base['population']}, mutation rate {base['mutation_rate']}, fidelity {base['fidelity']}; each study changes one "
        "of these. Cost counts fitness evaluations in full-split units (a multi-fidelity screen on one of "
        f"{a['fitness_samples']} windows costs 1/{a['fitness_samples']}). "
        "Best fitness is on the fitness split (perplexity, or KL to the dense model for `kl`); the held-out "
        "perplexity is of the best plan pruned properly, with its 95% bootstrap interval over windows.",
        f"Command: `{r['command']}`",
    ]
    for study in a["studies"]:
        key, _ = STUDIES[study]
        runs = study_runs(r, study)
        plot = plot_study(r, study)
        lines += ["", f"### {study}", "",
                  f"| {key} | seed | best fitness gen 0 | after 5 | final | evaluations | cost | search s | held-out perplexity |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for run in runs:
            h = run["history"]
            mid = h[min(5, len(h) - 1)]["best_fitness"]
            lines.append(f"| {run[key]} | {run['seed']} | {h[0]['best_fitness']:.4g} | {mid:.4g} | {run['best_fitness']:.4g} | "
                         f"{run['evaluations']} | {run['cost']:.1f} | {run['search_seconds']:.0f} | {_with_interval(run)} |")
        lines += ["", f"![{plot.name}](benchmarks/results/{plot.name})"]
    return lines + _ablation_reading(r) + [""]


def _ablation_reading(r: dict) -> list[str]:
    """A few sentences computed from the runs (one seed: differences smaller than the intervals
    or than seed-to-seed variation are not findings)."""
    from msp_callback.budget import trace_levels

    runs = {(k, run[k]): run for run in r["runs"] for k in ("init", "population", "mutation_rate", "fitness", "fidelity")
            if all(run[j] == v for j, v in r["baseline"].items() if j != k)}
    out = ["", "Reading (one seed, so only large gaps count):", ""]
    gen0 = {i: runs[("init", i)]["history"][0]["best_fitness"] for i in ("random", "sensitivity", "trace")
            if ("init", i) in runs}
    if len(gen0) == 3:
        n, m = (int(x) for x in r["sparsity"].split()[0].split(":"))
        levels = trace_levels(r["traces"], n, m)
        top = sorted(range(len(r["traces"])), key=lambda i: -r["traces"][i])[:4]
        out.append(f"- Initialisation: the best of generation 0 is {_fmt(gen0['sensitivity'])} with the paper's sensitivity "
                   f"heuristic, {_fmt(gen0['random'])} random and {_fmt(gen0['trace'])} from measured Fisher traces. The "
                   f"traces are largest at blocks {', '.join(map(str, sorted(top)))} and smallest in the last third, so "
                   f"trace levels ({' '.join(map(str, levels))}) prune late blocks hardest, which this model does not "
                   "tolerate: on SmolLM2-135M at 3:4 the per-block Fisher trace is a poor guide, the paper's heuristic a good one.")
    if ("population", 4) in runs and ("population", 10) in runs:
        small, base = runs[("population", 4)], runs[("population", 10)]
        out.append(f"- Fitness against held-out: population 4 ends at fitness {_fmt(small['best_fitness'])} and population 10 "
                   f"at {_fmt(base['best_fitness'])}, yet their held-out perplexities are {_fmt(small['ppl'])} and "
                   f"{_fmt(base['ppl'])}: on a {r['fitness_tokens']:,}-token fitness split, small fitness gains do not "
                   "carry over to held-out text; with one seed and this split, population and mutation-rate differences "
                   "are not findings (the paper's Figure 5 optimum at 20 and 0.5 is neither confirmed nor refuted).")
    if ("fitness", "kl") in runs:
        out.append(f"- KL fitness gave {_fmt(runs[('fitness', 'kl')]['ppl'])} held-out against {_fmt(runs[('fitness', 'ppl')]['ppl'])} "
                   "for perplexity fitness.")
    if ("fidelity", "multi") in runs:
        multi, single = runs[("fidelity", "multi")], runs[("fidelity", "single")]
        same = multi["levels"] == single["levels"]
        out.append(f"- Multi-fidelity cost {multi['cost']:.1f} full evaluations against {single['cost']:.1f} "
                   f"({1 - multi['cost'] / single['cost']:.0%} less) and " + ("found the same plan." if same else
                   f"ended at held-out {_fmt(multi['ppl'])} against {_fmt(single['ppl'])}."))
    return out


def _with_interval(row: dict) -> str:
    if "ppl_interval" not in row:
        return _fmt(row["ppl"])
    low, high = row["ppl_interval"]
    return f"{_fmt(row['ppl'])} ({_fmt(low)}-{_fmt(high)})"


def _search_budget(result: dict) -> tuple:
    a = result["arguments"]
    return a["calib_samples"], a["calib_seqlen"], a["population"], a["generations"]


def thread_section(r: dict) -> list[str]:
    """Same pruning at several thread counts: differing decisions and perplexity."""
    lines = ["## Thread count: does it change the pruned model?", "",
             f"Model {r['model']}, uniform {r['sparsity']}, calibration {r['calib']}, evaluation {r['eval_tokens']:,} "
             f"held-out tokens, {r['machine']}. Command: `{r['command']}`", "",
             "| criterion | threads | perplexity | pruning decisions differing from the first row of the criterion |",
             "|---|---:|---:|---:|"]
    for run in r["runs"]:
        share = 100 * run["decisions_differing_from_first"] / run["weights"]
        lines.append(f"| {run['criterion']} | {run['threads']} | {_with_interval(run)} | "
                     f"{run['decisions_differing_from_first']:,} ({share:.1f}%) |")
    changed = sorted({run["criterion"] for run in r["runs"] if run["decisions_differing_from_first"]})
    same = sorted({run["criterion"] for run in r["runs"]} - set(changed))
    lines += ["", (f"Identical at every thread count: {', '.join(same)}. " if same else "")
              + (f"Changed by the thread count: {', '.join(changed)} (BLAS sums the Hessian and its inverse in a "
                 "thread-dependent order; near-tied decisions flip, and the sequential update carries each flip into "
                 "the blocks after it)." if changed else "No criterion changed with the thread count."), ""]
    return lines


def quick_noise_section(full: dict, quick: list[dict], full_seeds: list[dict], searched: list[dict]) -> list[str]:
    """Does the quick mode reproduce the main row? Full-setting plans re-pruned and re-evaluated with
    window NLLs (a replay) against quick runs with several seeds, each with its bootstrap interval;
    other full-setting seeds, where run, are shown beside (not part of the rule). ``searched``: the
    full-setting runs whose search budgets are quoted."""
    quick = sorted(quick, key=lambda r: r["arguments"]["seed"])
    setting = _search_budget(quick[0])
    stale = [q for q in quick if _search_budget(q) != setting]  # run under an earlier --quick setting
    quick = [q for q in quick if q not in stale]
    full_seeds = sorted(full_seeds, key=lambda r: r["arguments"]["seed"])
    n_quick = quick[0]["arguments"]["eval_windows"]
    evals = [str(x.get("fitness_evaluations", "?")) for q in quick for x in q["rows"] if x["allocation"] == "msp"]
    full_evals = [f"{x['fitness_evaluations']} in seed {r['arguments']['seed']}" for r in searched
                  for x in r["rows"] if x["allocation"] == "msp" and "fitness_evaluations" in x]
    lines = [
        "## Does the quick mode reproduce the main 75% row?",
        "",
        f"Full setting: the plans of `msp_search.json` re-pruned and re-evaluated by `{full['command']}` "
        f"(same data and calibration, so the same models; {full['arguments']['eval_windows']} windows, each window's "
        f"NLL kept). Quick: `benchmarks/msp_search.py --quick` with seeds {', '.join(str(q['arguments']['seed']) for q in quick)} "
        f"(a seed changes the calibration sample, the fitness windows and the search; the {n_quick} evaluation windows "
        "are the first of the full setting's). Intervals: 95% percentile bootstrap over windows.",
        "",
        f"Quick setting: calibration {setting[0]} x {setting[1]} tokens, search population {setting[2]} x "
        f"{setting[3]} generations ({', '.join(evals)} fitness evaluations by seed); full setting: calibration "
        f"{full['arguments']['calib_samples']} x {full['arguments']['calib_seqlen']}, "
        f"{full['arguments']['population']} x {full['arguments']['generations']}"
        + (f" ({', '.join(full_evals)})." if full_evals else ".")
        + (f" Left out, run under an earlier quick setting: {', '.join(q['arguments']['name'] for q in stale)}."
           if stale else ""),
        "",
        "Rule, fixed before the runs: the quick mode reproduces an allocation when the full-setting (seed 0, "
        f"{full['arguments']['eval_windows']}-window) perplexity lies inside the span of the quick seeds' intervals "
        "(lowest low to highest high). The span widens as seeds are added; the full setting's own seed-to-seed "
        "spread, where measured, is shown beside and is not part of the rule.",
        "",
        f"| allocation | full, {full['arguments']['eval_windows']} windows | full, first {n_quick} windows | "
        + "".join(f"full seed {r['arguments']['seed']} | " for r in full_seeds)
        + " | ".join(f"quick seed {q['arguments']['seed']}" for q in quick) + " | reproduced |",
        "|---|---:|---:|" + "---:|" * (len(quick) + len(full_seeds)) + "---|",
    ]
    verdicts = []
    for row in full["rows"]:
        name = row["allocation"]
        quick_rows = [next((x for x in q["rows"] if x["allocation"] == name), None) for q in quick]
        if any(x is None or "ppl_interval" not in x for x in quick_rows):
            continue
        head_ppl = math.exp(statistics.fmean(row["window_nll"][:n_quick]))  # equal-length windows
        low = min(x["ppl_interval"][0] for x in quick_rows)
        high = max(x["ppl_interval"][1] for x in quick_rows)
        ok = low <= row["ppl"] <= high
        verdicts.append((name, ok))
        seeds = [next((x for x in r["rows"] if x["allocation"] == name), None) for r in full_seeds]
        lines.append(f"| {name} | {_with_interval(row)} | {_fmt(head_ppl)} | "
                     + "".join(f"{_with_interval(x) if x else 'not run'} | " for x in seeds)
                     + " | ".join(_with_interval(x) for x in quick_rows) + f" | {'yes' if ok else 'no'} |")
    held = [name for name, ok in verdicts if ok]
    lines += ["", f"Reproduced within noise: {len(held)} of {len(verdicts)} allocations"
              + (f" ({', '.join(held)})." if held else ".")]
    return lines + [""]


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
        cell = lambda k: _fmt(rows[k]) if k in rows else "not run"  # noqa: E731
        ratio = lambda k: f"{rows[k] / rows['msp']:.1f}x" if k in rows and "msp" in rows else ""  # noqa: E731
        lines.append(f"| {r['criterion']} | {r['sparsity']} | {_fmt(r['dense_ppl'])} | {cell('uniform')} | {cell('owl')} | "
                     f"{cell('msp')} | {ratio('uniform')} | {ratio('owl')} | {label}: `{r['file']}` |")
        if "msp" in rows and "uniform" in rows:
            wins.append(rows["msp"] < rows["uniform"] and rows["msp"] < rows.get("owl", float("inf")))
            notes.append(f"{r['criterion']} {r['sparsity'].split()[0]}: {rows['uniform'] / rows['msp']:,.1f}x")
        if "owl" in rows and "uniform" in rows and rows["owl"] > rows["uniform"]:
            owl_levels = next(row["levels"] for row in r["rows"] if row["allocation"] == "owl")
            m = int(r["sparsity"].split(":")[1].split()[0])
            lines_owl = (f"OWL is worse than uniform for {r['criterion']} at {r['sparsity'].split()[0]} "
                         f"({_fmt(rows['owl'])} vs {_fmt(rows['uniform'])}); its levels put {owl_levels.count(m)} "
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


def export_speed_section(r: dict) -> list[str]:
    rows = r["rows"]
    lines = ["## Export without fully pruned blocks: size and speed on this CPU", "",
             f"smollm2-135m pruned with Wanda at the MSP 3:4 levels of `msp_search.json`; blocks at level 4 "
             f"({', '.join(map(str, r['removed_blocks']))}) removed by `save_pruned`. {r['arguments']['forward_tokens']}-token "
             f"forward at batch 1; greedy generation of {r['arguments']['new_tokens']} tokens after a "
             f"{r['arguments']['prompt']}-token prompt with a KV cache. Medians of {r['arguments']['repeats']} interleaved "
             f"repeats; {r['machine']}.", f"Command: `{r['command']}`", "",
             "| model | blocks | parameters | safetensors MB | forward tokens/s | generation tokens/s |",
             "|---|---:|---:|---:|---:|---:|"]
    for name, row in rows.items():
        size = f"{row['safetensors_bytes'] / 1e6:,.0f}" if row["safetensors_bytes"] else "(in memory)"
        lines.append(f"| {name} | {row['blocks']} | {row['parameters']:,} | {size} | "
                     f"{row['forward_tokens_per_s']:,.0f} | {row['generate_tokens_per_s']:,.1f} |")
    vm, vb = r["speedup_vs_masked"], r["speedup_vs_baked"]
    lines += ["", f"Exported against masked: forward {vm['forward_tokens_per_s']:.2f}x, generation "
              f"{vm['generate_tokens_per_s']:.2f}x; against baked (same weights, all blocks): forward "
              f"{vb['forward_tokens_per_s']:.2f}x, generation {vb['generate_tokens_per_s']:.2f}x. The masked model "
              "recomputes weight x mask on every call, which costs most in generation (one call per token). "
              f"Exported logits differ from the masked model's by at most {r['exported_vs_masked_max_logit_diff']:.1e}; "
              f"same generated tokens: {r['same_generated_tokens']}. Timings on this shared 2-core machine move by "
              "tens of percent between repeats (see `all` in the JSON); the parameter and size columns are exact.", ""]
    return lines


def stage_cost_section(r: dict) -> list[str]:
    a = r["arguments"]
    lines = ["## Cost of each stage", "",
             f"smollm2-135m, {a['criterion']} {r['sparsity']}: calibration {a['calib_samples']} x {a['calib_seqlen']}, "
             f"Fisher traces on {a['trace_samples']} rows, search {a['population']} x {a['generations']} "
             f"({', '.join(map(str, r['search_evaluations']))} evaluations), evaluation {a['eval_windows']} x 1024 tokens. "
             f"Medians of {a['repeats']} runs; peak = resident-set high-water mark during the stage (includes the model "
             f"and everything alive before it); {r['machine']}.", f"Command: `{r['command']}`", "",
             "| stage | seconds | peak RSS MiB |", "|---|---:|---:|"]
    lines += [f"| {name} | {s['median_s']:.1f} | {s['median_peak_mib']:,.0f} |" for name, s in r["stages"].items()]
    return lines + [""]


def cache_storage_section(r: dict) -> list[str]:
    lines = ["## Memory of the level cache by storage", "",
             f"{r['model']}, calibration {r['calibration']}, M=4; one process per row. Anonymous resident memory "
             "added by building the cache and applying a mixed plan (RssAnon after malloc_trim), against the cache's "
             "own estimate, in bytes per block parameter (the float32 model itself is 4). What the estimate does not "
             "explain is left over from the build in every storage.", f"Command: `{r['command']}`", "",
             "| criterion | storage | RSS added, B/param | cache estimate, B/param |", "|---|---|---:|---:|"]
    lines += [f"| {x['criterion']} | {x['storage']} | {x['rss_anon_added_bytes_per_param']:.2f} | "
              f"{x['estimate_bytes_per_param']:.2f} |" for x in r["rows"]]
    return lines + [""]


def level_cache_cost_section(r: dict) -> list[str]:
    lines = ["## Building the level cache: each block run once", "",
             f"`{r['command']}`: {r['model']}, M=4; {r['machine']}. The build used to run each block twice per "
             "calibration batch (once for its input statistics, once for the next block's inputs); one run gives both. "
             "Builds alternate in one process; medians of the repeats, and the weights cached compared."
             + (f" Conditions: {r['conditions']}." if r.get("conditions") else ""), "",
             "| criterion | calibration | once, s | twice (before), s | speedup | same weights |",
             "|---|---|---:|---:|---:|---|"]
    lines += [f"| {x['criterion']} | {x['calibration']} | {x['median_once']:.1f} | {x['median_twice']:.1f} | "
              f"{x['speedup']:.2f}x | {'yes' if x['same_weights'] else 'no'} |" for x in r["rows"]]
    return lines + [""]


GB = 1e9
PROJECTED = {"8B": 8.0e9, "70B": 70.6e9}
BLOCK_PARAMS = {"1b": 60_817_408, "8B": 218_103_808, "70B": 855_638_016}  # one decoder block's linears


def zero_shot_section(record: dict) -> list[str]:
    """Zero-shot accuracy of dense, uniform and MSP models on the local lm-eval tasks."""
    lines = ["## Zero-shot accuracy (lm-eval, local tasks)", "",
             "The two local tasks of `msp_callback.zero_shot`, built from the packaged held-out Wikipedia articles: "
             "`msp_wiki_lastword` (LAMBADA-style: the greedy continuation must be the passage's last word) and "
             "`msp_wiki_realnext` (two candidate next sentences, the real one and one from another article: chance "
             "is 0.5). Accuracy with lm-eval's standard error.", ""]
    for sparsity, r in sorted(record.items()):
        tasks = list(r["rows"][0]["tasks"])
        lines += [f"`{r['command']}`: {r['model']}, {r['criterion']} {sparsity}, calibration {r['calibration']}, MSP "
                  f"levels from {r['msp_levels_from']}, {r['limit']} examples per task; {r['machine']}.", "",
                  "| model | " + " | ".join(tasks) + " |", "|---|" + "---:|" * len(tasks)]
        for row in r["rows"]:
            lines.append(f"| {row['model']} | " + " | ".join(
                f"{row['tasks'][t]['acc']:.3f} ± {row['tasks'][t]['stderr']:.3f}" for t in tasks) + " |")
        lines.append("")
    return lines


def compact_export_section(r: dict) -> list[str]:
    """Compact against plain export: sizes, load times, exactness."""
    mb = 1e6
    rt = r["round_trip"]
    exact = "identical" if all(rt.values()) else "NOT identical: " + ", ".join(k for k, v in rt.items() if not v)
    return ["## Compact N:M export", "",
            f"`{r['command']}`: {r['model']}, {r['plan']}; {r['machine']}. The decoder blocks (linears and norms) take "
            f"{r['compact_block_bytes'] / mb:,.1f} MB in the compact file against {r['dense_block_bytes'] / mb:,.1f} MB "
            f"dense: {100 * r['compact_block_fraction']:.1f}%. Weights, masks and logits after `load_pruned`: {exact}. "
            f"A truncated compact file: `{r['truncated_file']}`.", "",
            "| export | blocks kept | weight bytes (MB) | folder (MB) | save s | load s (median) |",
            "|---|---|---:|---:|---:|---:|",
            *[f"| {fmt} | {'all' if which == 'all' else 'level-M dropped'} | {x['weight_bytes'] / mb:,.1f} | "
              f"{x['folder_bytes'] / mb:,.1f} | {x['save_seconds']:.1f} | "
              f"{x['load_seconds_median']:.2f} |" if "load_seconds_median" in x else
              f"| {fmt} | {'all' if which == 'all' else 'level-M dropped'} | {x['weight_bytes'] / mb:,.1f} | "
              f"{x['folder_bytes'] / mb:,.1f} | {x['save_seconds']:.1f} | - |"
              for fmt in ("plain", "compact") for which in ("all", "drop") if (x := r[f"{fmt}_{which}"])], ""]


def recovery_section(r: dict) -> list[str]:
    """Perplexity after recovery for uniform and MSP plans at the same budget."""
    dense = r.get("dense_ppl")
    lines = ["## Recovery: perplexity against minutes of distillation", "",
             f"`{r['command']}`: {r['model']}, each row in a fresh process: prune with the plan (uniform, or the MSP "
             "levels a search benchmark stored, file named per row), measure, then recover (`msp_callback.recover`) for "
             f"at most {r['minutes']:g} minutes of training on this machine ({r['machine']}; evaluation time not "
             f"counted), measuring on the way. Recovery data: {r['recovery_windows']}; evaluation: "
             f"{r['eval_tokens']:,} held-out {r['eval_corpus']} tokens (95% bootstrap intervals over windows). "
             f"Dense: {_fmt(dense)}." if dense else "", "",
             "| criterion | target | plan | method | loss | lr | pruned | on the way (min: ppl) | recovered | x dense | "
             "steps | minutes |", "|---|---|---|---|---|---:|---:|---|---:|---:|---:|---:|"]
    for x in sorted(r["rows"], key=lambda x: (x["criterion"], x["sparsity"], x["method"], x["loss"], x["allocation"])):
        low, high = x["recovered"]["interval"]
        way = ", ".join(f"{c['minutes']:g}: {_fmt(c['ppl'])}" for c in x["curve"][1:-1]) or "-"
        lines.append(f"| {x['criterion']} | {x['sparsity']} | {x['allocation']} | {x['method']} | {x['loss']} | "
                     f"{x['lr']:g} | {_fmt(x['pruned']['ppl'])} | {way} | {_fmt(x['recovered']['ppl'])} "
                     f"({_fmt(low)}-{_fmt(high)}) | {x['recovered']['ppl'] / dense:.1f} | {x['steps']} | "
                     f"{x['train_minutes']:g} |" if dense else "")
    sources = sorted({x["plan_source"] for x in r["rows"] if x["plan_source"]})
    lines += ["", f"MSP levels from: {', '.join('results/' + s for s in sources)}." if sources else "",
              "", "![recovery](benchmarks/results/recovery.png)", ""]
    return lines


def search_compare_section(r: dict) -> list[str]:
    """The paper's search against the level-switch search, per config, search and seed."""
    lines = ["## Paper search against the level-switch search (same data, fitness-token budget)", "",
             f"`{r['command']}`: {r['model']}, calibration {r['calib']}, fitness {r['fitness']}, evaluation "
             f"{r['eval_tokens']:,} held-out {r['eval_corpus']} tokens (95% bootstrap intervals); data fixed, the seed "
             f"changes only the search; {r['machine']}. Dense: {_fmt(r['dense_ppl'])}. Cost in full evaluations of "
             "the fitness split (screenings priced by their tokens); minutes include the level cache (built once per "
             "config and shared by its searches in later rows: its build time is counted in each). "
             "Sequential check: the search's successive best plans (up to `--finalists`) pruned sequentially and scored on the "
             "fitness split: does that pick the same plan as the search's own (dense-input) fitness?", "",
             "| config | search | granularity | fitness | seed | held-out ppl | best fitness | cost (tokens) | "
             "minutes | sequential picks the same plan | Spearman |", "|---|---|---|---|---:|---:|---:|---:|---:|---|---:|"]
    for x in sorted(r["rows"], key=lambda x: (x["config"], x["search"], x["granularity"], x["fitness"], x["seed"])):
        low, high = x["interval"]
        gap = x["sequential_gap"]
        rho = "-" if gap["spearman"] is None else f"{gap['spearman']:.2f}"
        lines.append(f"| {x['config']} | {x['search']} | {x['granularity']} | {x['fitness']} | {x['seed']} | "
                     f"{_fmt(x['ppl'])} ({_fmt(low)}-{_fmt(high)}) | {x['best_fitness']:.4g} | "
                     f"{x['fitness_cost']:.0f} ({x['fitness_tokens_spent']:,.0f}) | {_search_minutes(x):.1f} | "
                     f"{'yes' if gap['same_winner'] else 'no'} ({len(gap['candidates'])} plans) | {rho} |")
    lines += _search_compare_means(r["rows"])
    paper = _load("msp_search")
    if paper is not None and not any(x["search"] == "paper" and x["config"] == "wanda:3:4" for x in r["rows"]):
        row = next(x for x in paper["rows"] if x["allocation"] == "msp")
        lines += ["", f"Not in this run yet: the paper's search on the same data and seed 0 (`{paper['command']}`, "
                  f"results/msp_search.json, {paper['criterion']} {paper['sparsity']}, 20 x 20, perplexity fitness): "
                  f"held-out {_fmt(row['ppl'])} after {row['fitness_evaluations']} evaluations "
                  f"({row['search_seconds'] / 60:.0f} min)."]
    for config in sorted({x["config"] for x in r["rows"]}):
        lines += ["", f"![{config}](benchmarks/results/search_compare_{config.replace(':', '_')}.png)"]
    return lines + [""]


def finalist_section(r: dict) -> list[str]:
    """Held-out perplexity of the search's pick against the sequential check's pick, where they differ."""
    lines = ["### Sequential re-score of the finalists: held-out", "",
             f"`{r['command']}`: where the sequential check above preferred another plan than the search, that "
             f"plan pruned and evaluated on the same {r['eval_tokens']:,} held-out tokens; {r['machine']}.", "",
             "| row | search's pick | sequential pick |", "|---|---:|---:|"]
    for x in sorted(r["rows"], key=lambda x: x["row"]):
        a, b = x["search_pick_interval"], x["sequential_pick_interval"]
        lines.append(f"| {x['row'].replace('|', ', ')} | {_fmt(x['search_pick_ppl'])} ({_fmt(a[0])}-{_fmt(a[1])}) | "
                     f"{_fmt(x['sequential_pick_ppl'])} ({_fmt(b[0])}-{_fmt(b[1])}) |")
    return lines + [""]


def _search_minutes(x: dict) -> float:
    """A row's search time with its level cache, shared (built once, outside the search) or not."""
    return (x["search_seconds"] + (x["level_cache_seconds"] if x.get("level_cache_shared") else 0)) / 60


def _search_compare_means(rows: list[dict]) -> list[str]:
    """Per config and search: the mean held-out perplexity over the seeds run, and the paper's mean
    over each other search's (over the seeds both have)."""
    by: dict[tuple[str, str], dict[int, float]] = {}
    for x in rows:
        by.setdefault((x["config"], f"{x['search']}:{x['granularity']}:{x['fitness']}"), {})[x["seed"]] = x["ppl"]
    out = ["", "Mean over seeds (paper / other: the ratio of the means over the seeds both ran; above 1 means the "
           "other search's plans are better):", "", "| config | search | seeds | mean held-out ppl | paper / this |",
           "|---|---|---|---:|---:|"]
    for (config, spec), ppl in sorted(by.items()):
        paper = by.get((config, "paper:block:ppl"), {})
        both = sorted(set(paper) & set(ppl))
        ratio = "-"
        if both and not spec.startswith("paper"):
            ratio = f"{statistics.mean(paper[s] for s in both) / statistics.mean(ppl[s] for s in both):.2f}"
        out.append(f"| {config} | {spec} | {', '.join(map(str, sorted(ppl)))} | {_fmt(statistics.mean(ppl.values()))} "
                   f"| {ratio} |")
    return out


def stage_memory_section(r: dict) -> list[str]:
    """Per-stage peak anonymous memory in bytes per parameter, and what it means for 8B / 70B."""
    stages = ["load", "calibration", "fisher", "level cache", "search", "prune", "export"]
    lines = ["## Memory of each stage, in bytes per model parameter", "",
             f"Peak anonymous resident memory (RssAnon, sampled every {r['sampling_interval_s'] * 1000:.0f} ms) of each "
             "stage, less the process's RssAnon before the model loads, divided by the model's parameter count; one "
             f"fresh process per row; {r['dtype']} weights; {r['tokens']}. In memory, the weights themselves are 4 bytes "
             "per parameter of this. Offloaded (`--offload disk`), weights, masks and level cache are memory-mapped "
             "files, which the page cache holds as room allows (not counted: the kernel can drop them). 135m is "
             "SmolLM2-135M; 0.5b and 1b are random-weight Llama-shaped models (`benchmarks/random_models.py`): memory "
             "depends on shapes, not on trained values.", f"Command: `{r['command']}` (and `--offloads disk`)", ""]
    for offload in ("none", "disk"):
        rows = sorted((x for x in r["rows"] if x["offload"] == offload),
                      key=lambda x: (x["parameters"], x["criterion"], x["m"]))
        if not rows:
            continue
        lines += [f"**{'In memory' if offload == 'none' else 'Offloaded to disk'}**", "",
                  "| model | parameters | criterion | M | level cache in | " + " | ".join(stages) + " | peak GB |",
                  "|---|---:|---|---:|---|" + "---:|" * (len(stages) + 1)]
        for x in rows:
            b = x["bytes_per_parameter"]
            peak = max(x["peak_rss_anon_bytes"].values()) - x["baseline_rss_anon_bytes"]
            where = "memory" if x.get("level_cache_storage") in ("device", "cpu") else x.get("level_cache_storage", "-")
            lines.append(f"| {x['size']} | {x['parameters'] / 1e9:.2f}B | {x['criterion']} | {x['m']} | {where} | "
                         + " | ".join(f"{b[s]:.2f}" if s in b else "-" for s in stages) + f" | {peak / GB:.2f} |")
        if any(_cache_spilled(x) for x in rows):
            lines += ["", "Level cache on disk in memory runs: `cache_storage=auto` found too little free memory for it "
                      "beside the model and memory-mapped it (the row's level cache and search stages then count only "
                      "their working set)."]
        lines.append("")
    lines += _projection(r)
    return lines


def _cache_spilled(x: dict) -> bool:
    """An in-memory row whose level cache `cache_storage=auto` put on disk."""
    return x["offload"] == "none" and x.get("level_cache_storage") == "disk"


def _projection(r: dict) -> list[str]:
    big = [x for x in r["rows"] if x["size"] == "1b" and not _cache_spilled(x)]
    for x in r["rows"]:  # an in-memory 1b row whose cache went to disk: project from the largest size held in memory
        if x["size"] == "1b" and _cache_spilled(x):
            held = [y for y in r["rows"] if y["offload"] == "none" and (y["criterion"], y["m"]) == (x["criterion"], x["m"])
                    and not _cache_spilled(y)]
            if held:
                big.append(max(held, key=lambda y: y["parameters"]))
    if not big:
        return []
    lines = ["Projection for 8B and 70B Llama-shaped models (Llama-3.1 shapes), float32 as measured: bf16 weights "
             "halve the weight copies but not the one-byte ranks and masks, so bf16 needs between half of this and "
             "this. In memory, the largest stage's bytes per parameter (1b row) times the parameter count; offloaded, "
             "the anonymous working set scales with one block, not with the model, so the 1b row's peak is scaled by "
             "the ratio of block sizes (activations and logits grow with hidden size and vocabulary too: read it as an "
             "order of magnitude). In memory, the projection is what one device must hold for the whole job. "
             "Offloaded, it is the process's anonymous working set; on a GPU the device holds about one block's "
             "working set plus the embeddings and head (not measured yet: no GPU run). Where the 1b in-memory run "
             "put its level cache on disk, the in-memory projection uses the largest size that held it in memory "
             "(column \"from\").", "",
             "| criterion | M | form | from | 8B GB | 70B GB | fits 24 GB | fits 80 GB |", "|---|---:|---|---|---:|---:|---|---|"]
    for x in sorted(big, key=lambda x: (x["offload"], x["criterion"], x["m"])):
        if x["offload"] == "none":
            per = max(x["bytes_per_parameter"].values())
            need = {k: per * n / GB for k, n in PROJECTED.items()}
        else:
            peak = max(x["peak_rss_anon_bytes"].values()) - x["baseline_rss_anon_bytes"]
            need = {k: peak * BLOCK_PARAMS[k] / BLOCK_PARAMS["1b"] / GB for k in PROJECTED}
        fits = {cap: ", ".join(k for k, v in need.items() if v <= cap) or "neither" for cap in (24, 80)}
        form = "in memory" if x["offload"] == "none" else "offloaded"
        lines.append(f"| {x['criterion']} | {x['m']} | {form} | {x['size']} | {need['8B']:,.0f} | {need['70B']:,.0f} | "
                     f"{fits[24]} | {fits[80]} |")
    return lines + [""]


def offload_check_section(r: dict) -> list[str]:
    memory, disk = r["runs"]["none"], r["runs"]["disk"]
    lines = ["## Offloaded against in memory: a 1B model in bounded memory", "",
             f"{r['model']}, {memory['parameters'] / 1e9:.2f}B parameters; `msp prune`'s job with {r['criterion']} "
             f"{r['sparsity']}, `--allocation msp` (search {r['search']}); calibration {r['calibration']}, fitness "
             f"{r['fitness']}, evaluation {r['evaluation']}; each form in a fresh process, RssAnon and VmRSS sampled "
             f"every {r['sampling_interval_s'] * 1000:.0f} ms; {r['machine']}, {memory['threads']} threads, torch "
             f"{memory['torch']}.", f"Command: `{r['command']}`", "",
             "| form | peak RssAnon GiB | peak VmRSS GiB | seconds | pruned perplexity | levels |",
             "|---|---:|---:|---:|---:|---|"]
    for name, run in (("in memory", memory), ("offloaded to disk", disk)):
        lines.append(f"| {name} | {run['peak_rss_anon_bytes'] / 2**30:.2f} | {run['peak_vm_rss_bytes'] / 2**30:.2f} | "
                     f"{run['seconds']:.0f} | {run['pruned_ppl']:,.0f} | {' '.join(map(str, run['levels']))} |")
    lines += ["", f"Same plan: {r['same_plan']}; same pruned weights (SHA-256 of all {r['linears_compared']} block "
              f"linears): {r['same_pruned_weights']}; same perplexity: {r['same_perplexity']}. VmRSS includes mapped "
              "file pages (the checkpoint, the weight and cache files), which the kernel drops under memory pressure; "
              "RssAnon is what the process must hold. Timings are single runs on a shared machine.", ""]
    return lines


def precision_section(r: dict) -> list[str]:
    lines = ["## bfloat16 against float32", "",
             f"smollm2-135m, {r['criterion']} {r['sparsity']} ({r['allocation']}); calibration {r['calibration']}, "
             f"evaluation {r['evaluation']}; each precision in a fresh process; 95% bootstrap intervals over windows; "
             f"{r['machine']}, torch {r['runs']['float32']['torch']}, {r['runs']['float32']['threads']} threads. The CPU "
             "of this run, an Intel Xeon with AMX-BF16, ran bf16 faster than float32 (CPUs without bf16 units run it "
             "several times slower); single runs on a shared machine. On a GPU bf16 is the default.", f"Command: `{r['command']}`", "",
             "| precision | dense perplexity | pruned perplexity | load s | dense eval s | plan s | prune s | pruned eval s |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for dtype, run in r["runs"].items():
        s = run["seconds"]
        lines.append(f"| {dtype} | {_with_interval({'ppl': run['dense']['perplexity'], 'ppl_interval': run['dense']['interval']})} | "
                     f"{_with_interval({'ppl': run['pruned']['perplexity'], 'ppl_interval': run['pruned']['interval']})} | "
                     f"{s['load']:.0f} | {s['dense perplexity']:.0f} | {s['plan']:.0f} | {s['prune']:.0f} | "
                     f"{s['pruned perplexity']:.0f} |")
    within = r["bf16_within_fp32_interval"]
    lines += ["", f"bf16 perplexity inside the float32 interval: dense {within['dense']}, pruned {within['pruned']}; "
              f"same levels: {r['same_levels']}.", ""]
    return lines


def gpu_check_section(cpu: dict | None, gpu: dict | None) -> list[str]:
    """The GPU check beside its CPU reference (random weights: speed, memory, plan agreement)."""
    lines = ["## GPU check (`benchmarks/gpu_check.py`)", ""]
    if gpu is None:
        lines += ["Not run on a GPU yet: no session with a lent device has run `bash benchmarks/gpu_check.sh`.",
                  "The CPU reference below is what it will be compared with.", ""]
    for r in (x for x in (cpu, gpu) if x is not None):
        a = r["arguments"]
        lines += [f"**{r['device_name']}** ({a['device']}, torch {r['torch']}, {r['threads']} threads): Llama-shaped "
                  f"{a['size']} model, random weights (seed {a['seed']}) and random tokens; calibration "
                  f"{a['calib_samples']} x {a['seqlen']}, evaluation {a['eval_windows']} x {a['seqlen']}, search "
                  f"{a['population']} x {a['generations']}. {r['note']}.", f"Command: `{r['command']}`", "",
                  "| precision | stage | seconds | peak MiB |", "|---|---|---:|---:|"]
        for dtype, run in r["runs"].items():
            lines += [f"| {dtype} | {name} | {v['seconds']:.2f} | {v['peak_mib']:,.0f} |"
                      for name, v in run.get("stages", {}).items()]
        lines += [""]
        for dtype, run in r["runs"].items():
            lines += [f"- {dtype}: MSP levels {run['msp_levels']} ({run['fitness_evaluations']} evaluations)"
                      if "msp_levels" in run else f"- {dtype}: {run.get('error') or run.get('skipped')}"]
        lines += [""]
        if "environment" in r:
            lines += [f"Environment: {json.dumps(r['environment'])}", ""]
        if r.get("checks"):
            lines += ["| check | seconds | result |", "|---|---:|---|"]
            for name, check in r["checks"].items():
                found = {k: v for k, v in check.items() if k not in ("total_seconds", "traceback")
                         and not (isinstance(v, dict) and "seconds" in v)}
                lines += [f"| {name} | {check.get('total_seconds', 0):.1f} | {json.dumps(found)[:300]} |"]
            lines += [""]
    if cpu is not None and gpu is not None and "float32" in gpu["runs"]:
        same = gpu["runs"]["float32"]["msp_levels"] == cpu["runs"]["float32"]["msp_levels"]
        lines += [f"float32 plan on the GPU {'equals' if same else 'differs from'} the CPU's.", ""]
    if gpu is not None:
        lines += [f"2:4 semi-structured: {json.dumps(gpu['semi_structured_2of4'])}", ""]
        if "offload" in gpu and all("stages" in gpu["offload"].get(k, {}) for k in ("in_memory", "offloaded")):
            o = gpu["offload"]
            peak = {k: max(v["peak_mib"] for v in o[k]["stages"].values()) for k in ("in_memory", "offloaded")}
            lines += [f"Offloaded blocks ({o['size']} model): peak device memory {peak['offloaded']:,.0f} MiB against "
                      f"{peak['in_memory']:,.0f} MiB in memory; same plan: {o.get('same_plan')}.", ""]
    return lines


def main() -> None:
    out = [
        "# Benchmarks",
        "",
        "Generated by `python benchmarks/report.py` from the JSON files in `benchmarks/results/`; each section",
        "names the command that produced its numbers. Texts: English Wikipedia articles and C4 documents",
        "shipped in the `exllamav3==1.6.5` wheel (not WikiText-2). Model: SmolLM2-135M-Instruct from a GGUF",
        "Q4_1 file dequantised to float32. N:M = N pruned of every M.",
        "",
    ]
    full = _grid_results(quick=False)
    out += quality_section(full, "Quality: uniform, OWL and MSP per criterion and target")
    out += missing_cells(full)
    out += quality_section(_grid_results(quick=True), "Quick mode (`python benchmarks/suite.py --quick`)")
    if (r := _load("baselines")) is not None:
        out += baselines_section(r)
    if (r := _load("msp_search")) is not None:
        out += search_section(r, "MSP search against non-search allocations")
    if (r := _load("msp_search_2of4")) is not None:
        out += search_section(r, "MSP at 2:4 against uniform")
    replay = _load("msp_search_replay")
    quick_seeds = [r for p in sorted(RESULTS.glob("msp_search_wanda_3of4_quick*.json"))
                   if (r := json.loads(p.read_text()))["arguments"].get("quick") and not r["arguments"].get("replay")
                   and "ppl_interval" in r["rows"][0]]
    full_seeds = [json.loads(p.read_text()) for p in sorted(RESULTS.glob("msp_search_seed*.json"))]
    if replay is not None and quick_seeds:
        searched = [r for r in [_load("msp_search"), *full_seeds] if r is not None]
        out += quick_noise_section(replay, quick_seeds, full_seeds, searched)
    if (r := _load("search_compare")) is not None:
        out += search_compare_section(r)
    if (r := _load("finalist_heldout")) is not None:
        out += finalist_section(r)
    if (r := _load("search_ablation")) is not None:
        out += ablation_section(r)
    if (r := _load("thread_check")) is not None:
        out += thread_section(r)
    for r in full:
        if r["file"] != "msp_search.json":
            out += search_section(r, f"Search details: {r['criterion']} at {r['sparsity']}")
    if (r := _load("export_speed")) is not None:
        out += export_speed_section(r)
    if (r := _load("stage_cost")) is not None:
        out += stage_cost_section(r)
    if (r := _load("cache_storage")) is not None:
        out += cache_storage_section(r)
    if (r := _load("level_cache_cost")) is not None:
        out += level_cache_cost_section(r)
    if (r := _load("recovery")) is not None:
        out += recovery_section(r)
    if (r := _load("compact_export")) is not None:
        out += compact_export_section(r)
    if (r := _load("zero_shot")) is not None:
        out += zero_shot_section(r)
    if (r := _load("stage_memory")) is not None:
        out += stage_memory_section(r)
    if (r := _load("offload_check")) is not None:
        out += offload_check_section(r)
    if (r := _load("precision_check")) is not None:
        out += precision_section(r)
    out += gpu_check_section(_load("gpu_check_cpu"), _load("gpu_check"))
    (ROOT / "BENCHMARKS.md").write_text("\n".join(out))
    print(f"wrote {ROOT / 'BENCHMARKS.md'}")


if __name__ == "__main__":
    main()
