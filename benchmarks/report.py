"""Generate BENCHMARKS.md from the JSON results in benchmarks/results/ (never edit it by hand).

    python benchmarks/report.py
"""

from __future__ import annotations

import json
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"


def _load(name: str) -> dict | None:
    path = RESULTS / f"{name}.json"
    return json.loads(path.read_text()) if path.exists() else None


def _fmt(x: float) -> str:
    return f"{x:,.2f}" if x < 1e5 else f"{x:,.0f}"


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
        lines.append(f"| {name} | {_fmt(row['ppl'])} | {ratio} | {row['plan_seconds']:.0f} | "
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
    a = r["arguments"]
    lines = [
        "## Search ablation: initialisation and fitness",
        "",
        f"Model {a['model']}, criterion {a['criterion']}, target {r['sparsity']}; calibration {a['calib_samples']} x "
        f"{a['calib_seqlen']}; fitness split {r['fitness_tokens']:,} tokens; population {a['population']} x "
        f"{a['generations']} generations, seed {a['seed']}; held-out evaluation {r['eval_tokens']:,} tokens; {r['machine']}.",
        f"Command: `{r['command']}`",
        "",
        "| init | fitness | best fitness gen 0 | after 5 | final | evaluations | search s | held-out perplexity |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for run in r["runs"]:
        h = run["history"]
        mid = h[min(5, len(h) - 1)]["best_fitness"]
        lines.append(f"| {run['init']} | {run['fitness']} | {h[0]['best_fitness']:.4g} | {mid:.4g} | {run['best_fitness']:.4g} | "
                     f"{run['evaluations']} | {run['search_seconds']:.0f} | {_fmt(run['ppl'])} |")
    return lines + _plots(a["name"])


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
    if (r := _load("baselines")) is not None:
        out += baselines_section(r)
    if (r := _load("msp_search")) is not None:
        out += search_section(r, "MSP search against non-search allocations")
    if (r := _load("msp_search_2of4")) is not None:
        out += search_section(r, "MSP at 2:4 against uniform")
    if (r := _load("search_ablation")) is not None:
        out += ablation_section(r)
    if (r := _load("msp_search_quick")) is not None:
        out += search_section(r, "Quick mode (`--quick`)")
    (ROOT / "BENCHMARKS.md").write_text("\n".join(out))
    print(f"wrote {ROOT / 'BENCHMARKS.md'}")


if __name__ == "__main__":
    main()
