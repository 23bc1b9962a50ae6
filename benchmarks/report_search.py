"""Report sections on the MSP search: one search's table and plots, the quick mode's noise, search
against search, finalists, ablations.
"""

from __future__ import annotations

import math
import statistics

from report_common import RESULTS, fmt, load, plot_links, with_interval


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
        f"Dense perplexity: {fmt(r['dense_ppl'])}.",
        "",
        "| allocation | perplexity | vs uniform | plan s | final prune s | levels |",
        "|---|---:|---:|---:|---:|---|",
    ]
    uniform = rows.get("uniform", {}).get("ppl")
    for name, row in rows.items():
        ratio = f"{uniform / row['ppl']:.1f}x lower" if uniform and name != "uniform" else ""
        plan_s = f"{row['plan_seconds']:.0f}" + (f" (levels planned for {row['plan_shared_with']})"
                                                  if "plan_shared_with" in row else "")
        lines.append(f"| {name} | {with_interval(row)} | {ratio} | {plan_s} | "
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
        return lines + plot_links(a["name"])
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
    return lines + plot_links(a["name"])


def _search_budget(result: dict) -> tuple:
    a = result["arguments"]
    return a["calib_samples"], a["calib_seqlen"], a["population"], a["generations"]


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
        lines.append(f"| {name} | {with_interval(row)} | {fmt(head_ppl)} | "
                     + "".join(f"{with_interval(x) if x else 'not run'} | " for x in seeds)
                     + " | ".join(with_interval(x) for x in quick_rows) + f" | {'yes' if ok else 'no'} |")
    held = [name for name, ok in verdicts if ok]
    lines += ["", f"Reproduced within noise: {len(held)} of {len(verdicts)} allocations"
              + (f" ({', '.join(held)})." if held else ".")]
    return lines + [""]


def search_compare_section(r: dict) -> list[str]:
    """The paper's search against the level-switch search, per config, search and seed."""
    lines = ["## Paper search against the level-switch search (same data, fitness-token budget)", "",
             f"`{r['command']}`: {r['model']}, calibration {r['calib']}, fitness {r['fitness']}, evaluation "
             f"{r['eval_tokens']:,} held-out {r['eval_corpus']} tokens (95% bootstrap intervals); data fixed, the seed "
             f"changes only the search; {r['machine']}. Dense: {fmt(r['dense_ppl'])}. Cost in full evaluations of "
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
                     f"{fmt(x['ppl'])} ({fmt(low)}-{fmt(high)}) | {x['best_fitness']:.4g} | "
                     f"{x['fitness_cost']:.0f} ({x['fitness_tokens_spent']:,.0f}) | {_search_minutes(x):.1f} | "
                     f"{'yes' if gap['same_winner'] else 'no'} ({len(gap['candidates'])} plans) | {rho} |")
    lines += _search_compare_means(r["rows"])
    paper = load("msp_search")
    if paper is not None and not any(x["search"] == "paper" and x["config"] == "wanda:3:4" for x in r["rows"]):
        row = next(x for x in paper["rows"] if x["allocation"] == "msp")
        lines += ["", f"Not in this run yet: the paper's search on the same data and seed 0 (`{paper['command']}`, "
                  f"results/msp_search.json, {paper['criterion']} {paper['sparsity']}, 20 x 20, perplexity fitness): "
                  f"held-out {fmt(row['ppl'])} after {row['fitness_evaluations']} evaluations "
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
        lines.append(f"| {x['row'].replace('|', ', ')} | {fmt(x['search_pick_ppl'])} ({fmt(a[0])}-{fmt(a[1])}) | "
                     f"{fmt(x['sequential_pick_ppl'])} ({fmt(b[0])}-{fmt(b[1])}) |")
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
        out.append(f"| {config} | {spec} | {', '.join(map(str, sorted(ppl)))} | {fmt(statistics.mean(ppl.values()))} "
                   f"| {ratio} |")
    return out


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
                         f"{run['evaluations']} | {run['cost']:.1f} | {run['search_seconds']:.0f} | {with_interval(run)} |")
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
        out.append(f"- Initialisation: the best of generation 0 is {fmt(gen0['sensitivity'])} with the paper's sensitivity "
                   f"heuristic, {fmt(gen0['random'])} random and {fmt(gen0['trace'])} from measured Fisher traces. The "
                   f"traces are largest at blocks {', '.join(map(str, sorted(top)))} and smallest in the last third, so "
                   f"trace levels ({' '.join(map(str, levels))}) prune late blocks hardest, which this model does not "
                   "tolerate: on SmolLM2-135M at 3:4 the per-block Fisher trace is a poor guide, the paper's heuristic a good one.")
    if ("population", 4) in runs and ("population", 10) in runs:
        small, base = runs[("population", 4)], runs[("population", 10)]
        out.append(f"- Fitness against held-out: population 4 ends at fitness {fmt(small['best_fitness'])} and population 10 "
                   f"at {fmt(base['best_fitness'])}, yet their held-out perplexities are {fmt(small['ppl'])} and "
                   f"{fmt(base['ppl'])}: on a {r['fitness_tokens']:,}-token fitness split, small fitness gains do not "
                   "carry over to held-out text; with one seed and this split, population and mutation-rate differences "
                   "are not findings (the paper's Figure 5 optimum at 20 and 0.5 is neither confirmed nor refuted).")
    if ("fitness", "kl") in runs:
        out.append(f"- KL fitness gave {fmt(runs[('fitness', 'kl')]['ppl'])} held-out against {fmt(runs[('fitness', 'ppl')]['ppl'])} "
                   "for perplexity fitness.")
    if ("fidelity", "multi") in runs:
        multi, single = runs[("fidelity", "multi")], runs[("fidelity", "single")]
        same = multi["levels"] == single["levels"]
        out.append(f"- Multi-fidelity cost {multi['cost']:.1f} full evaluations against {single['cost']:.1f} "
                   f"({1 - multi['cost'] / single['cost']:.0%} less) and " + ("found the same plan." if same else
                   f"ended at held-out {fmt(multi['ppl'])} against {fmt(single['ppl'])}."))
    return out
