"""Report sections on the pruned model after the search: export speed and size, recovery, zero-shot
accuracy.
"""

from __future__ import annotations

from report_common import fmt


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
             f"Dense: {fmt(dense)}." if dense else "", "",
             "| criterion | target | plan | method | loss | lr | pruned | on the way (min: ppl) | recovered | x dense | "
             "steps | minutes |", "|---|---|---|---|---|---:|---:|---|---:|---:|---:|---:|"]
    for x in sorted(r["rows"], key=lambda x: (x["criterion"], x["sparsity"], x["method"], x["loss"], x["allocation"])):
        low, high = x["recovered"]["interval"]
        way = ", ".join(f"{c['minutes']:g}: {fmt(c['ppl'])}" for c in x["curve"][1:-1]) or "-"
        lines.append(f"| {x['criterion']} | {x['sparsity']} | {x['allocation']} | {x['method']} | {x['loss']} | "
                     f"{x['lr']:g} | {fmt(x['pruned']['ppl'])} | {way} | {fmt(x['recovered']['ppl'])} "
                     f"({fmt(low)}-{fmt(high)}) | {x['recovered']['ppl'] / dense:.1f} | {x['steps']} | "
                     f"{x['train_minutes']:g} |" if dense else "")
    sources = sorted({x["plan_source"] for x in r["rows"] if x["plan_source"]})
    lines += ["", f"MSP levels from: {', '.join('results/' + s for s in sources)}." if sources else "",
              "", "![recovery](benchmarks/results/recovery.png)", ""]
    return lines


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


def _reconstruction(settings: dict) -> str:
    """One row's reconstruction settings in words."""
    step = settings.get("reconstruct_step", "absolute")  # rows from before the setting existed: absolute
    return (f"{settings['reconstruct_epochs']} epochs, lr {settings['reconstruct_lr']:g} "
            + ("relative to each tensor's root-mean-square" if step == "relative" else "absolute")
            + f", {settings.get('reconstruct_schedule', 'constant')}, {settings['reconstruct_batch_size']} window(s) a step, "
            f"target {settings['reconstruct_target']}, loss {settings['reconstruct_loss']}, "
            f"{settings['reconstruct_holdout']} held-out windows, patience {settings['reconstruct_patience']}")


def reconstruct_section(r: dict, recovery: dict | None, title: str = "Block-wise reconstruction, then distillation") -> list[str]:
    """Plain pruning, block-wise reconstruction, and KD on top, beside KD alone (results/recovery.json)."""
    dense = r.get("dense_ppl")
    alone = {(x["criterion"], x["sparsity"], x["allocation"]): x for x in (recovery or {}).get("rows", [])
             if x["method"] == "sparse" and x["loss"] == "kd"}
    kinds = list(dict.fromkeys(_reconstruction(x["reconstruct_settings"]) for x in r["rows"] if x["reconstructed"]))
    commands = ", ".join(f"`{c}`" for c in dict.fromkeys(x.get("command", r["command"]) for x in r["rows"]))
    sources = ", ".join(f"`{s if '/' in s else 'results/' + s}`"  # a stored search benchmark's file, or a plan file
                        for s in sorted({x["plan_source"] for x in r["rows"] if x.get("plan_source")}))
    lines = [f"## {title}", "",
             f"{commands}: {r['model']}, each row in a fresh process: the plan (uniform, or the MSP levels of {sources}) "
             "pruned plainly and measured, the dense "
             "weights restored, the same plan pruned with block-wise reconstruction (`msp_callback.reconstruct`: "
             + (kinds[0] if len(kinds) == 1 else "settings in the last column" if kinds else "no row ran it")
             + ") and measured"
             + (" (rows without a reconstruction column ran with `--epochs 0`: the plain prune only)"
                if any(not x["reconstructed"] for x in r["rows"]) else "") + ", "
             + (f"then, on the rows named, KD recovery for at most {r['kd_minutes']:g} minutes of training. "
                if r["kd_minutes"] else "no KD. ") + "Calibration "
             f"{r['calibration']}; evaluation {r['eval_tokens']:,} held-out {r['eval_corpus']} tokens (95% bootstrap "
             f"intervals over windows); {r['machine']}{_load(r['rows'])}. Dense: {fmt(dense)}"
             + (f" ({r['dense_from']})" if r.get("dense_from") else "") + "."
             + (" \"KD alone\" is the recovery benchmark's row for the same plan (15 minutes, results/recovery.json), "
                "from an earlier run whose plain prune can differ from this one's." if alone else ""), "",
             "| criterion | target | plan | pruned | + reconstruction | minutes | + reconstruction + KD | KD minutes | "
             "KD alone | x dense (best) |" + (" reconstruction settings |" if len(kinds) > 1 else ""),
             "|---|---|---|---:|---:|---:|---:|---:|---:|---:|" + ("---|" if len(kinds) > 1 else "")]
    for x in sorted(r["rows"], key=lambda x: (x["criterion"], x["sparsity"], x["allocation"])):
        kd = x["reconstructed_kd"]
        solo = alone.get((x["criterion"], x["sparsity"], x["allocation"]))
        done = x["reconstructed"]
        best = min(v["ppl"] for v in (x["pruned"], done, kd) if v)
        lines.append(f"| {x['criterion']} | {x['sparsity']} | {x['allocation']} | {_ppl(x['pruned'])} | "
                     f"{_ppl(done) if done else '-'} | {x['reconstruct_minutes'] if done else '-'} | "
                     f"{_ppl(kd) if kd else '-'} | {kd['minutes'] if kd else '-'} | "
                     f"{_ppl(solo['recovered']) if solo else '-'} | {best / dense:.1f} |"
                     + (f" {_reconstruction(x['reconstruct_settings']) if done else '-'} |" if len(kinds) > 1 else ""))
    rows = {(x["criterion"], x["sparsity"], x["allocation"]): x for x in r["rows"]}
    for (criterion, sparsity, allocation), x in sorted(rows.items()):
        uniform = rows.get((criterion, sparsity, "uniform"))
        if allocation != "msp" or uniform is None:
            continue
        same = bool(x.get("reconstructed") and uniform.get("reconstructed")) and _reconstruction(
            x["reconstruct_settings"]) == _reconstruction(uniform["reconstruct_settings"])  # else not comparable
        factors = [f"{stage} {uniform[key]['ppl'] / x[key]['ppl']:.1f}x" for stage, key in
                   (("pruned", "pruned"), ("after reconstruction", "reconstructed"))
                   if x.get(key) and uniform.get(key) and (key == "pruned" or same)]
        if x.get("reconstructed_kd") and uniform.get("reconstructed_kd") and same:
            factors.append(f"after reconstruction and KD {uniform['reconstructed_kd']['ppl'] / x['reconstructed_kd']['ppl']:.1f}x")
        lines += ["", f"MSP against uniform, {criterion} {sparsity} (uniform perplexity / MSP perplexity): "
                  + ", ".join(factors) + "."]
    lines += ["", f"Per block (train and held-out relative error before -> after, the epoch kept) in "
              f"results/{r.get('file', 'reconstruct.json')}.", ""]
    return lines


def reconstruct_diagnose_section(r: dict) -> list[str]:
    """Plain pruning against reconstruction on one plan: perplexity and where the hidden states drift."""
    lines = ["## Where reconstruction helps or hurts (diagnosis)", "",
             f"{r['what']}; {r['machine']}. Per run: perplexity of the dense, plainly pruned and reconstructed models "
             "over whole 1024-token windows and over their first 512 tokens; the hidden state's error relative to the "
             "dense model's after the last block and after the final norm (mean over the tokens from position 512 on of |h - h_dense|^2 / "
             "|h_dense|^2); hybrids: blocks below K from the reconstructed model, the rest from the plain prune. "
             "Every layer's error, before and from position 512, is in results/reconstruct_diagnose.json.", "",
             "| reconstruction | dense | plain | reconstructed | plain, first 512 | reconstructed, first 512 | "
             "last block's error, plain -> reconstructed | after the final norm | hybrids K: perplexity | minutes |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---|---:|"]
    for x in r["rows"]:
        plain, done = x["plain"], x["reconstructed"]
        flags = x["row"].split(" --set ", 1)[-1].split(" --hybrids")[0]
        if "reconstruct_lr" in flags and "reconstruct_step" not in flags:  # what the rate meant in that run
            flags += f" ({x['reconstruct_settings'].get('reconstruct_step', 'absolute')})"
        hybrids = ", ".join(f"{k}: {fmt(v)}" for k, v in x["hybrids"].items()) or "-"
        lines.append(f"| {flags} | {fmt(x['dense']['ppl'])} | {fmt(plain['ppl'])} | **{fmt(done['ppl'])}** | "
                     f"{fmt(plain['ppl_first_512'])} | {fmt(done['ppl_first_512'])} | "
                     f"{plain['layer_error'][-2][1]:.3f} -> {done['layer_error'][-2][1]:.3f} | "
                     f"{plain['layer_error'][-1][1]:.3f} -> {done['layer_error'][-1][1]:.3f} | {hybrids} | "
                     f"{x['reconstruct_minutes']} |")
    if any("measured_with" in x for x in r["rows"]):
        lines += ["", "Rows marked in the file as measured with the script's draft ran the same computation before "
                  "it was cleaned up for the repository."]
    return lines + [""]


def _load(rows: list[dict]) -> str:
    """The machine's 1-minute load average as the rows started, or a warning where it was not recorded."""
    loads = [x["load_at_start"] for x in rows if "load_at_start" in x]
    if len(loads) < len(rows):
        return ", shared with other jobs while some rows ran (their minutes are upper bounds)"
    return f", 1-minute load average {min(loads):.1f}-{max(loads):.1f} as the rows started"


def _ppl(row: dict) -> str:
    low, high = row["interval"]
    return f"{fmt(row['ppl'])} ({fmt(low)}-{fmt(high)})"


def kd_variants_section(r: dict) -> list[str]:
    """Distillation settings side by side from one reconstructed model (benchmarks/kd_variants.py)."""
    lines = ["## Distillation on top of reconstruction: learning rate and windows a step", "",
             f"`{r['command']}`: smollm2-135m, Wanda 3:4, {r['plan']} levels pruned with the default block-wise "
             f"reconstruction (32 x 512 c4 calibration tokens) to {_ppl(r['reconstructed'])}; every variant starts "
             f"from those weights: KD (sparse method, top-64 KL to the dense model, the same 128 c4 windows of 512 "
             f"tokens) for at most {fmt(r['kd_minutes'])} minutes of training, then 40,960 held-out wikipedia tokens "
             f"(95% bootstrap intervals over windows); {r['machine']}, one run each. {r.get('note', '')}", "",
             "| windows a step | lr | + KD | steps | KD loss first -> last |", "|---:|---:|---:|---:|---|"]
    for name, v in r["variants"].items():
        batch, lr = name.split(":")
        lines.append(f"| {batch} | {lr} | {_ppl(v)} | {v['steps']} | {v['first_loss']:.3f} -> {v['last_loss']:.3f} |")
    return [*lines, ""]
