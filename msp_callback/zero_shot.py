"""Zero-shot accuracy through lm-eval, on the model in memory (optional extra: ``.[eval]``).

`zero_shot(model, tokenizer, tasks)` runs lm-eval's own `simple_evaluate` on an ``HFLM`` wrapping
the model as it is (masked, LoRA-merged, or loaded from an export), so any task name lm-eval
knows works where its dataset can be fetched. Offline, two local tasks are built from the
packaged held-out Wikipedia articles and written in lm-eval's task format:

- ``msp_wiki_lastword``: LAMBADA-style, a passage of 40-120 words without its last word; correct
  when the model's greedy continuation is exactly that word.
- ``msp_wiki_realnext``: two-choice; a passage and two candidate next sentences, the real one and
  one from another article; correct when the real one is more likely.

Both are built deterministically (seeded) into ``~/.cache/msp-callback/lm_eval_tasks``.
"""

from __future__ import annotations

import json
import logging
import random
import re
from pathlib import Path
from typing import Any

from torch import nn

log = logging.getLogger(__name__)

LOCAL_TASKS = ("msp_wiki_lastword", "msp_wiki_realnext")
TASK_VERSION = 1


class ZeroShotError(ValueError):
    """A zero-shot evaluation that cannot run as asked."""


def _sentences(doc: str) -> list[str]:
    lines = [line for line in doc.split("\n")[1:] if len(line.split()) > 8]  # skip the title and headings
    return [s.strip() for line in lines for s in re.split(r"(?<=[.!?])\s+", line) if len(s.split()) >= 5]


def _lastword_examples(docs: list[str], rng: random.Random, count: int) -> list[dict[str, str]]:
    examples = []
    for doc in docs:
        sentences = _sentences(doc)
        for start in range(0, len(sentences) - 3, 4):
            passage = " ".join(sentences[start : start + 3])
            words = passage.rstrip(".!?\"')").split()
            if not 40 <= len(words) <= 120 or not re.fullmatch(r"[A-Za-z][A-Za-z'-]*", words[-1]):
                continue
            examples.append({"context": " ".join(words[:-1]), "target": " " + words[-1]})
    rng.shuffle(examples)
    return examples[:count]


def _realnext_examples(docs: list[str], rng: random.Random, count: int) -> list[dict[str, Any]]:
    per_doc = [s for s in (_sentences(d) for d in docs) if len(s) >= 4]
    examples = []
    for index, sentences in enumerate(per_doc):
        for start in range(0, len(sentences) - 3, 4):
            other = per_doc[(index + 1 + rng.randrange(len(per_doc) - 1)) % len(per_doc)]
            choices = [sentences[start + 2], rng.choice(other)]
            label = rng.randrange(2)
            if label:
                choices.reverse()
            examples.append({"context": " ".join(sentences[start : start + 2]), "choices": choices, "label": label})
    rng.shuffle(examples)
    return examples[:count]


def local_task_folder(count: int = 500, seed: int = 0, folder: str | Path | None = None) -> Path:
    """Write the two local tasks (JSONL data and lm-eval YAML) and return their folder."""
    from .data import load_corpus
    from .packaged import cache_dir

    folder = Path(folder) if folder else cache_dir() / "lm_eval_tasks" / f"v{TASK_VERSION}-n{count}-seed{seed}"
    if (folder / "done").exists():
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    docs = load_corpus("wikipedia")
    builders = {"msp_wiki_lastword": _lastword_examples, "msp_wiki_realnext": _realnext_examples}
    for name, build in builders.items():
        examples = build(docs, random.Random(seed), count)
        data = folder / f"{name}.jsonl"
        data.write_text("".join(json.dumps(e) + "\n" for e in examples))
        common = (f"task: {name}\ndataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {json.dumps(str(data))}\n"
                  "test_split: test\ndoc_to_text: '{{context}}'\n")
        if name == "msp_wiki_lastword":
            spec = (common + "output_type: loglikelihood\ndoc_to_target: '{{target}}'\ntarget_delimiter: ''\n"
                    "metric_list:\n  - metric: acc\n    aggregation: mean\n    higher_is_better: true\n")
        else:
            spec = (common + "output_type: multiple_choice\ndoc_to_choice: '{{choices}}'\ndoc_to_target: '{{label}}'\n"
                    "target_delimiter: ' '\nmetric_list:\n  - metric: acc\n    aggregation: mean\n"
                    "    higher_is_better: true\n")
        (folder / f"{name}.yaml").write_text(spec + f"metadata:\n  version: {TASK_VERSION}\n")
        log.info("%s: %d examples in %s", name, len(examples), data)
    (folder / "done").write_text("")
    return folder


def zero_shot(model: nn.Module, tokenizer: Any, tasks: list[str] | tuple[str, ...] = LOCAL_TASKS,
              limit: int | None = None, batch_size: int = 8, examples: int = 500, seed: int = 0) -> dict[str, dict[str, float]]:
    """Accuracy and its standard error per task, ``{task: {"acc": ..., "stderr": ..., "n": ...}}``."""
    try:
        from lm_eval import simple_evaluate
        from lm_eval.models.huggingface import HFLM
        from lm_eval.tasks import TaskManager
    except ImportError as error:
        raise ZeroShotError("zero-shot evaluation needs lm-eval: pip install 'msp-callback[eval]' (or lm-eval)") from error
    if not tasks:
        raise ZeroShotError("no tasks given: name lm-eval tasks, or use the local ones: " + ", ".join(LOCAL_TASKS))
    include = str(local_task_folder(examples, seed)) if set(tasks) & set(LOCAL_TASKS) else None
    manager = TaskManager(include_path=include)
    unknown = [t for t in tasks if t not in manager.all_tasks]
    if unknown:
        raise ZeroShotError(f"lm-eval does not know the task(s) {unknown}; local ones: {', '.join(LOCAL_TASKS)}")
    was_training = model.training
    model.eval()
    try:
        lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size)
        out = simple_evaluate(model=lm, tasks=list(tasks), task_manager=manager, limit=limit, log_samples=False)
    finally:
        model.train(was_training)
    results = {}
    for task in tasks:
        row = out["results"][task]
        results[task] = {"acc": float(row["acc,none"]), "stderr": float(row["acc_stderr,none"]),
                         "n": int(out.get("n-samples", {}).get(task, {}).get("effective", 0))}
    return results
