"""Report sections on cost and devices: stage times, the level cache's storage and cost, memory per
stage and its projection, offloading, precision, the GPU check.
"""

from __future__ import annotations

import json

from report_common import with_interval


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


def stage_memory_section(r: dict) -> list[str]:
    """Per-stage peak anonymous memory in bytes per parameter, and what it means for 8B / 70B."""
    stages = ["load", "calibration", "fisher", "level cache", "search", "prune", "export"]
    epochs = sorted({x["reconstruct_epochs"] for x in r["rows"] if x.get("reconstruct_epochs")})
    if epochs:
        stages.append("reconstruct")
    lines = ["## Memory of each stage, in bytes per model parameter", "",
             f"Peak anonymous resident memory (RssAnon, sampled every {r['sampling_interval_s'] * 1000:.0f} ms) of each "
             "stage, less the process's RssAnon before the model loads, divided by the model's parameter count; one "
             f"fresh process per row; {r['dtype']} weights; {r['tokens']}. In memory, the weights themselves are 4 bytes "
             "per parameter of this. Offloaded (`--offload disk`), weights, masks and level cache are memory-mapped "
             "files, which the page cache holds as room allows (not counted: the kernel can drop them). 135m is "
             "SmolLM2-135M; 0.5b and 1b are random-weight Llama-shaped models (`benchmarks/random_models.py`): memory "
             "depends on shapes, not on trained values."
             + (f" Reconstruct (where measured): the dense model loaded again after the export and the same plan pruned "
                f"with {'/'.join(map(str, epochs))} epoch(s) of block-wise reconstruction over the calibration rows "
                "(`--reconstruct-epochs`)." if epochs else ""),
             f"Command: `{r['command']}` (and `--offloads disk`"
             + (f"; the rows with a reconstruct column with `--reconstruct-epochs {epochs[0]}`" if epochs else "") + ")", ""]
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
        lines.append(f"| {dtype} | {with_interval({'ppl': run['dense']['perplexity'], 'ppl_interval': run['dense']['interval']})} | "
                     f"{with_interval({'ppl': run['pruned']['perplexity'], 'ppl_interval': run['pruned']['interval']})} | "
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
