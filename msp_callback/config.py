"""The one configuration: every setting declared once, with its default, help and check.

Settings are grouped by stage in small dataclasses (target, calibration, data, search, output);
what an entry point takes is a combination of them, flat in use:

- `MSPConfig` (both callbacks): target + calibration + search + recovery.
- `PruneSettings` in `job` (``msp prune``, recipes): model, plan file, all sections.

The command line (`add_arguments`), recipes (`build`) and the callbacks' keyword arguments
(`keyword_signature`) are generated from these fields, so adding an option is one field here.
`check` validates a whole configuration before any model work and names the option at fault;
`ignored_settings` finds the settings that the others leave unused (refused or warned about).
"""

from __future__ import annotations

import difflib
import inspect
import logging
import types
import typing
from dataclasses import MISSING, Field, dataclass, field, fields, replace
from typing import Any

from .criteria import CRITERIA
from .devices import DeviceError, resolve_device
from .offload import OFFLOADS
from .plan import PlanError, parse_nm
from .registry import ALLOCATIONS
from .storage import STORAGES
from .units import GRANULARITIES

log = logging.getLogger(__name__)


class ConfigError(ValueError):
    """A setting that cannot work, named with how to fix it."""


def option(default: Any, help: str, *, minimum: float | None = None, maximum: float | None = None,
           choices: tuple[str, ...] | None = None, flag: str | None = None, cli: bool = True,
           factory: typing.Callable[[], Any] | None = None) -> Any:
    """A configuration field: its default (or ``factory``), help text, and what values it accepts.
    ``flag`` overrides the command-line name (``--no-dense-eval`` for ``dense_eval``, which it then
    negates); ``cli=False`` keeps it off the command line."""
    meta = {"help": help, "minimum": minimum, "maximum": maximum, "choices": choices, "flag": flag, "cli": cli}
    if factory is not None:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


# ---------------------------------------------------------------------------- sections
@dataclass
class TargetSettings:
    """What to prune to, and with what."""

    sparsity: str = option("3:4", "target N:M, N pruned of every M (3:4 = 75%)")
    criterion: str = option("wanda", "importance criterion: magnitude | wanda | sparsegpt | a registered one")
    allocation: str = option("msp", "how per-block levels are chosen: uniform | owl | fisher | msp (the search)")


@dataclass
class CalibrationSettings:
    """How much text calibrates and scores the search, and the seed."""

    calib_samples: int = option(16, "calibration windows (token rows)", minimum=1)
    fitness_samples: int = option(4, "fitness windows for the search, drawn apart from the calibration rows (0 = the "
                                  "search scores plans on the calibration rows)", minimum=0)
    seed: int = option(0, "seed for calibration sampling and the search", minimum=0)


@dataclass
class DataSettings:
    """Which texts, and the window sizes (the command-line job and recipes)."""

    calib_corpus: str = option("c4", "calibration text: c4 | wikipedia (packaged), wikitext2 | c4-hub (hub), or a text file")
    eval_corpus: str = option("wikipedia", "evaluation text (same choices; never overlaps the calibration text)")
    calib_seqlen: int = option(512, "tokens per calibration window", minimum=2)
    fitness_seqlen: int = option(512, "tokens per fitness window", minimum=2)
    eval_seqlen: int = option(1024, "tokens per evaluation window", minimum=2)
    eval_windows: int | None = option(40, "evaluation windows; 0 = all of the text", minimum=0)
    eval_batch_size: int = option(1, "evaluation windows per forward", minimum=1)
    bos: str = option("auto", "start each window with BOS; auto = if the tokenizer does", choices=("auto", "yes", "no"))


@dataclass
class DeviceSettings:
    """Where the job runs and in what precision."""

    device: str | None = option(None, "cuda, cuda:N, cpu or mps (default: cuda when available, else cpu)")
    dtype: str = option("auto", "the weights' precision: auto = bfloat16 on a GPU with fast bf16, float32 on CPUs "
                        "(statistics accumulate in float32 either way)",
                        choices=("auto", "float32", "bfloat16", "float16", "fp32", "bf16", "fp16"))
    offload: str = option("none", "disk = keep the blocks' weights, masks and the level cache in memory-mapped files, so "
                          "a model larger than memory prunes in bounded memory; on a GPU each block comes onto the device "
                          "for its turn; none = the whole model in memory", choices=OFFLOADS)
    offload_folder: str | None = option(None, "where --offload disk puts its files (default: $MSP_SCRATCH or "
                                        "~/.cache/msp-callback/scratch; not a RAM-backed /tmp)")


@dataclass
class SearchSettings:
    """The search's knobs. The defaults (level-switch, 16 children a generation, 10 generations) fit the
    default job (SmolLM2-135M) in under 10 minutes on 2 CPU cores; the paper's algorithm is
    ``search="paper"``, its 20 x 20 setting in recipes/paper_*.yaml."""

    search: str = option("level-switch", "the search: level-switch = a (1+lambda) search whose children move levels "
                         "between units (EvoPress-style), screened on --screen-windows, the best --survivors scored "
                         "in full; paper = the paper's evolution (crossover, repair, mutation; one level per block)",
                         choices=("level-switch", "paper"))
    granularity: str = option("block", "what one level applies to: block = every linear of a decoder block (the "
                              "paper); attn_mlp = attention and MLP linears of each block separately; linear = each "
                              "linear. Finer than block needs --search level-switch; the budget is then exact by "
                              "parameter count", choices=GRANULARITIES)
    population: int = option(16, "level-switch: children per generation; paper: individuals per generation (the "
                             "paper: 20)", minimum=2)
    generations: int = option(10, "generations after the initial one (the paper: 20)", minimum=0)
    survivors: int = option(2, "level-switch: screened children scored on the whole fitness split per generation",
                            minimum=1)
    max_switches: int = option(3, "level-switch: most level switches in one child (the number is the smaller of two "
                               "uniform draws from 1..this)", minimum=1)
    mutation_rate: float = option(0.5, "probability an offspring mutates", minimum=0.0, maximum=1.0)
    init: str = option("sensitivity", "initial population: random (Alg. 2), sensitivity (Alg. 3, front fifth of blocks "
                       "below target), trace (from measured Fisher traces); level-switch: uniform plus population-1 "
                       "of these, screened like children", choices=("random", "sensitivity", "trace"))
    trace_strength: float = option(1.0, "init=trace: levels move by this many steps per standard deviation of "
                                   "log Fisher trace", minimum=0.0)
    fitness: str = option("ppl", "fitness: ppl = perplexity on the fitness split (the paper's; as good as kl at "
                          "3:4 and better at 2:4 in BENCHMARKS.md), kl = KL to the dense model's top-64 next-token "
                          "distribution", choices=("ppl", "kl"))
    fitness_batch_size: int = option(4, "fitness windows per forward", minimum=1)
    screen_windows: int | None = option(None, "multi-fidelity search: score new individuals on this many fitness "
                                        "windows first and only the better ones on all; 1 of 4 costs 3/4 per "
                                        "generation (0 = off; unset = 1 for level-switch when the fitness split has "
                                        "more than one window, else off)", minimum=0)
    screen_keep: float = option(0.5, "with screening: the fraction of screened individuals scored on every window",
                                minimum=0.5, maximum=1.0)
    max_level: int | None = option(None, "the most weights pruned of every M in any one unit (0..M; unset = M, or "
                                   "M-1 when --reconstruct-epochs trains the blocks: a unit pruned whole keeps "
                                   "nothing to train, measured worse than the uniform plan after reconstruction); at "
                                   "--max-level N (3:4 with M-1) the uniform plan is the only one and the search is "
                                   "skipped", minimum=0)
    cache_storage: str = option("auto", "where the level cache (dense copies plus ranks, or SparseGPT's pruned "
                                "weights) lives: device, cpu (pinned beside a GPU), disk (memory-mapped files), or auto = "
                                "the first with room", choices=STORAGES)
    search_checkpoint: str | None = option(None, "JSON file the search writes every generation and resumes from", cli=False)
    resume: bool = option(False, "continue the search from its checkpoint (written every generation)")

    def resolved(self, fitness_windows: int) -> SearchSettings:
        """These settings with an unset ``screen_windows`` filled in for a fitness split of
        ``fitness_windows`` windows (1 for level-switch when there is more than one window, else off)."""
        screen = self.screen_windows
        if screen is None:
            screen = 1 if self.search == "level-switch" and fitness_windows > 1 else 0
        return replace(self, screen_windows=screen)

    def level_bound(self, n: int, m: int, reconstructing: bool) -> int:
        """The highest level a unit may get at target N:M: ``max_level``, or when unset M (M-1, at
        least N, when the blocks are reconstructed after pruning, so that every unit keeps weights to train)."""
        if self.max_level is not None:
            return self.max_level
        return max(n, m - 1) if reconstructing else m

    def check_screening(self, fitness_windows: int) -> None:
        """Screening needs fewer screen windows than the fitness split has."""
        if self.screen_windows and not self.screen_windows < fitness_windows:
            raise ConfigError(f"screen_windows (--screen-windows) must be below the {fitness_windows} fitness windows, "
                              f"got {self.screen_windows}; 0 turns screening off")


@dataclass
class RecoverSettings:
    """Recovery after pruning: distillation from the dense model, masks held."""

    recover_steps: int = option(0, "optimizer steps of recovery after pruning (0 = none)", minimum=0)
    recover_method: str = option("sparse", "what trains: sparse = every kept weight of the decoder blocks (and their "
                                 "norms); lora = sparse LoRA adapters (peft), merged afterwards", choices=("sparse", "lora"))
    recover_loss: str = option("kd", "kd = KL to the dense model's top-k next-token distribution; lm = the plain "
                               "next-token loss", choices=("kd", "lm"))
    recover_lr: float = option(1e-4, "AdamW learning rate (LoRA wants about 10x more)", minimum=0.0)
    recover_batch_size: int = option(4, "windows per recovery step", minimum=1)
    recover_seqlen: int = option(512, "tokens per recovery window, drawn from the calibration text (callbacks: "
                                 "their batches' rows as they are)", minimum=2)
    recover_windows: int = option(0, "distinct recovery windows, cycled through; 0 = one per step and batch row, "
                                  "each seen once (callbacks: rows of the calibration data after the calibration "
                                  "and fitness rows)", minimum=0)
    recover_top_k: int = option(64, "kd: dense next-token log-probabilities kept per token", minimum=1)
    recover_lora_rank: int = option(16, "lora: adapter rank", minimum=1)
    recover_checkpoint: str | None = option(None, "file recovery saves to and resumes from")
    recover_save_every: int = option(50, "steps between recovery checkpoints", minimum=1)
    recover_max_minutes: float = option(0.0, "stop recovery after this many minutes of training even if steps remain "
                                        "(0 = no limit; a time limit makes the result depend on the machine)", minimum=0.0)

    def window_count(self) -> int:
        return self.recover_windows or self.recover_steps * self.recover_batch_size


@dataclass
class ReconstructSettings:
    """Block-wise reconstruction while pruning: each pruned block's kept weights trained to match the
    dense block's output, masks held."""

    reconstruct_epochs: int = option(4, "passes over the calibration windows per block after it is pruned (0 = no "
                                     "reconstruction, the plain prune; 4, the default, takes the default job's "
                                     "SmolLM2-135M 3:4 from 877 to 364 in 5 minutes on 2 cores)", minimum=0)
    reconstruct_target: str = option("dense", "what a pruned block learns to output: dense = the dense model's own "
                                     "block output on the dense model's inputs (also corrects error carried from "
                                     "earlier blocks); pruned = the dense block's output on the pruned model's "
                                     "inputs", choices=("dense", "pruned"))
    reconstruct_loss: str = option("channel", "the training loss: channel = each channel of the output and the target "
                                   "divided by the channel's root-mean-square over the block's targets, then the "
                                   "squared error of each token relative to its target's, averaged over tokens "
                                   "(every channel and every token count alike); token = the same on the raw "
                                   "channels (the few huge ones dominate: 240 against 278 at SmolLM2 Wanda 3:4, absolute lr 3e-3, but "
                                   "it made Gemma-3-270M's model 10x worse); batch = relative to the whole batch",
                                   choices=("channel", "token", "batch"))
    reconstruct_lr: float = option(0.025, "Adam learning rate of the block's trained tensors: relative to each "
                                   "tensor's root-mean-square with reconstruct_step=relative (the default; 0.025 "
                                   "measured better than 0.015 on SmolLM2 and suits Gemma-3-270M too), or absolute "
                                   "(then 1e-3 to 3e-3 were the measured choices)", minimum=0.0)
    reconstruct_step: str = option("relative", "what reconstruct_lr means: relative = each tensor's learning rate is "
                                   "reconstruct_lr times the tensor's root-mean-square (pruned zeros included; at least "
                                   "1e-3, like Adafactor's parameter scale), so tensors move by similar fractions of their size "
                                   "whatever the model's weight scale (Gemma-3-270M's linears are 5x smaller than "
                                   "SmolLM2's: one absolute rate cannot suit both); absolute = one rate for all",
                                   choices=("relative", "absolute"))
    reconstruct_schedule: str = option("constant", "the learning rate over a block's training: constant, or cosine = "
                                       "decayed to 0 along a half cosine over all its epochs' steps (measured worse: "
                                       "370 against 240 at Wanda 3:4, 4 epochs, raw channels, absolute lr 3e-3)",
                                       choices=("constant", "cosine"))
    reconstruct_batch_size: int = option(1, "calibration windows per optimizer step (1 measured better than 2: more "
                                         "steps for the same work)", minimum=1)
    reconstruct_holdout: int = option(4, "windows of the calibration text (apart from the calibration rows; never "
                                      "the evaluation text) that decide early stopping and which epoch's weights a "
                                      "block keeps (0 = keep the last epoch's)", minimum=0)
    reconstruct_patience: int = option(2, "epochs without a lower held-out loss before a block stops", minimum=1)
    reconstruct_checkpoint: str | None = option(None, "folder that reconstruction saves each finished block to and "
                                                "resumes from")


@dataclass
class OutputSettings:
    """What the command-line job reports and where."""

    output: str | None = option(None, "folder for plan.json, plots and the model (default: "
                                "runs/<model>-<N>of<M>-<criterion>-<allocation>)")
    save_model: str = option("plain", "save the final model (after every stage that ran: pruning, reconstruction, "
                             "recovery) to <output>/model: "
                             "plain = a transformers folder AutoModelForCausalLM.from_pretrained loads as it is (the "
                             "plan in its config.json, the tokenizer beside it); compact = each block linear as its kept "
                             "weights plus packed positions (read with msp_callback.export.load_pruned); none = do not "
                             "save it", choices=("plain", "compact", "none"))
    json: str | None = option(None, "write the machine-readable result here")
    dense_eval: bool = option(True, "skip the dense perplexity", flag="--no-dense-eval")
    progress: bool = option(True, "no progress bars, warnings only", flag="--quiet")


@dataclass
class MSPConfig(RecoverSettings, ReconstructSettings, SearchSettings, CalibrationSettings, TargetSettings):
    """Everything the callbacks (`MSPEngine`) need: target, calibration, search, reconstruction and recovery."""

    def __post_init__(self) -> None:
        check(self)
        for name, why in ignored_settings(self, changed_settings(self)):  # no command line: changed = given
            log.warning("%s %s; it is ignored", label(self, name), why)


# ---------------------------------------------------------------------------- reading
def sections(cls: type) -> list[type]:
    """The setting sections ``cls`` combines, in declaration order (its own fields last)."""
    return [base for base in reversed(cls.__mro__) if "__dataclass_fields__" in vars(base)]


def own_fields(section: type) -> list[Field]:
    """The fields a section declares itself (not the ones it inherits)."""
    names = set(vars(section).get("__annotations__", {}))
    return [f for f in fields(section) if f.name in names]


def extract(config: Any, section: type) -> Any:
    """The ``section`` part of a combined configuration, as that section's own dataclass."""
    return section(**{f.name: getattr(config, f.name) for f in fields(section)})


def suggest(name: str, known: typing.Iterable[str]) -> str:
    close = difflib.get_close_matches(name, list(known), n=1)
    return f"; did you mean {close[0]!r}?" if close else ""


def refuse_unknown(cls: type, values: typing.Iterable[str], where: str) -> None:
    known = [f.name for f in fields(cls)]
    for name in values:
        if name not in known:
            raise ConfigError(f"{where}: unknown setting {name!r}{suggest(name, known)} (known: {', '.join(known)})")


def flag_of(f: Field) -> str:
    return f.metadata.get("flag") or "--" + f.name.replace("_", "-")


def flag(config: Any, name: str) -> str:
    """The command-line option of a setting of ``config`` (a dataclass or its class)."""
    return flag_of(next(f for f in fields(config) if f.name == name))


def label(config: Any, name: str) -> str:
    """How messages name a setting of ``config`` (a dataclass or its class): ``calib_seqlen (--calib-seqlen)``,
    the key a recipe or a callback takes and the option the command line takes."""
    return _label_of(next(f for f in fields(config) if f.name == name))


def _label_of(f: Field) -> str:
    return f"{f.name} ({flag_of(f)})" if f.metadata.get("cli", True) else f.name


def field_types(cls: type) -> dict[str, Any]:
    """Each field's type, with string annotations resolved."""
    return typing.get_type_hints(cls)


def alternatives(kind: Any) -> tuple[Any, ...]:
    """The types a field accepts: the members of ``X | None``, else the type itself."""
    if typing.get_origin(kind) in (typing.Union, types.UnionType):
        return typing.get_args(kind)
    return (kind,)


# ---------------------------------------------------------------------------- checks
def _check_field(f: Field, value: Any, kind: Any) -> None:
    meta, label = f.metadata, _label_of(f)
    if value is None:
        if type(None) not in alternatives(kind):
            raise ConfigError(f"{label} needs a value")
        return
    wanted = [t for t in alternatives(kind) if t is not type(None)]
    if bool in wanted:
        if not isinstance(value, bool):
            raise ConfigError(f"{label} must be true or false, got {value!r}")
        return
    if int in wanted and (isinstance(value, bool) or not isinstance(value, int)):
        raise ConfigError(f"{label} must be a whole number, got {value!r}")
    if float in wanted and (isinstance(value, bool) or not isinstance(value, (int, float)) or value != value):
        raise ConfigError(f"{label} must be a number, got {value!r}")
    if str in wanted and not isinstance(value, str):
        raise ConfigError(f"{label} must be text, got {value!r}")
    if meta.get("minimum") is not None and value < meta["minimum"]:
        raise ConfigError(f"{label} must be at least {meta['minimum']}, got {value!r}")
    if meta.get("maximum") is not None and value > meta["maximum"]:
        raise ConfigError(f"{label} must be at most {meta['maximum']}, got {value!r}")
    if meta.get("choices") and value not in meta["choices"]:
        raise ConfigError(f"{label} must be one of {', '.join(meta['choices'])}, got {value!r}{suggest(str(value), meta['choices'])}")


def check(config: Any) -> None:
    """Check every field of ``config`` and the settings that depend on each other; raise a
    `ConfigError` naming the first setting at fault. Runs before any model work."""
    kinds = field_types(type(config))
    for f in fields(config):
        _check_field(f, getattr(config, f.name), kinds[f.name])
    if hasattr(config, "sparsity"):
        try:
            n, m = parse_nm(config.sparsity)
        except PlanError as error:
            raise PlanError(f"sparsity (--sparsity): {error}") from None
        if n == 0:
            raise ConfigError(f"sparsity (--sparsity) {config.sparsity} prunes nothing (N is the number pruned of every M): "
                              f"give N of at least 1, e.g. {max(1, m // 2)}:{m} ({max(1, m // 2) / m:.0%})")
        max_level = getattr(config, "max_level", None)
        if max_level is not None and not n <= max_level <= m:
            raise ConfigError(f"max_level (--max-level) {max_level} must lie between the target's N and M ({n} and {m} "
                              f"for {config.sparsity}): below N no plan meets the budget, above M is no level")
    for name, registry in (("criterion", CRITERIA), ("allocation", ALLOCATIONS)):
        value = getattr(config, name, None)
        if value is not None and value not in registry:
            raise ConfigError(f"{name} (--{name}) {value!r} is unknown{suggest(value, registry)} "
                              f"(available: {', '.join(sorted(registry))})")
    if isinstance(config, SearchSettings) and hasattr(config, "fitness_samples") and config.screen_windows:
        config.check_screening(config.fitness_samples)
    if isinstance(config, SearchSettings) and config.search == "paper" and config.granularity != "block":
        raise ConfigError(f"granularity (--granularity) {config.granularity!r} needs search='level-switch' "
                          "(--search level-switch): the paper's search gives one level per block")
    if isinstance(config, DeviceSettings):
        try:
            resolve_device(config.device)
        except DeviceError as error:
            raise ConfigError(str(error)) from None


# ---------------------------------------------------------------------------- settings that others make unused
def _one_plan_left(c: Any) -> bool:
    """The level bound leaves only the uniform plan (with reconstruction at 3:4 of 4: no block pruned whole)."""
    if not hasattr(c, "sparsity") or not isinstance(c, SearchSettings):
        return False
    n, m = parse_nm(c.sparsity)
    return c.level_bound(n, m, reconstructing=getattr(c, "reconstruct_epochs", 0) > 0) == n


def runs_search(c: Any) -> bool:
    """Whether a search runs: allocation msp, no saved plan, and more than one plan within the level bound."""
    return getattr(c, "allocation", "msp") == "msp" and not getattr(c, "plan", None) and not _one_plan_left(c)


def _no_search_why(c: Any) -> str:
    if getattr(c, "plan", None):
        doing = f"--plan applies the saved plan {c.plan}"
    elif getattr(c, "allocation", "msp") != "msp":
        doing = f"--allocation {c.allocation} plans without one"
    else:
        return (f"is a setting of the MSP search, which this job does not run: with reconstruction no block is pruned "
                f"whole, which at {c.sparsity} leaves only the uniform plan; drop it, or add --reconstruct-epochs 0 "
                f"(the plain prune) or --max-level to search")
    return f"is a setting of the MSP search, which this job does not run ({doing}); drop it, or use --allocation msp"


def _screens(c: Any) -> bool:
    return bool(c.screen_windows if c.screen_windows is not None else c.search == "level-switch")


SEARCH_ONLY = ("search", "granularity", "population", "generations", "survivors", "max_switches", "mutation_rate", "init",
               "fitness", "fitness_batch_size", "screen_windows", "screen_keep", "cache_storage", "fitness_seqlen")
RECONSTRUCTION_ONLY = ("reconstruct_target", "reconstruct_loss", "reconstruct_lr", "reconstruct_step", "reconstruct_schedule",
                       "reconstruct_batch_size", "reconstruct_holdout", "reconstruct_patience", "reconstruct_checkpoint")
RECOVERY_ONLY = ("recover_method", "recover_loss", "recover_lr", "recover_batch_size", "recover_seqlen", "recover_windows",
                 "recover_top_k", "recover_lora_rank", "recover_checkpoint", "recover_save_every", "recover_max_minutes")

# (settings, when the others leave them unused, why): the first rule that applies to a setting is the one reported.
UNUSED: tuple[tuple[tuple[str, ...], typing.Callable[[Any], bool], typing.Callable[[Any], str]], ...] = (
    (SEARCH_ONLY, lambda c: not runs_search(c), _no_search_why),
    (("max_level",), lambda c: getattr(c, "allocation", "msp") != "msp" or bool(getattr(c, "plan", None)),
     _no_search_why),  # a bound that leaves one plan is the user's choice of that plan, not an unused setting
    (("fitness_samples",), lambda c: hasattr(c, "plan") and not runs_search(c), _no_search_why),
    (("mutation_rate",), lambda c: c.search != "paper",
     lambda c: "is used only by the paper's search (--search paper); the level-switch search changes a plan by level "
               "switches (--max-switches): drop it, or add --search paper"),
    (("survivors", "max_switches"), lambda c: c.search != "level-switch",
     lambda c: "is used only by the level-switch search; --search paper has a mutation rate (--mutation-rate) instead: "
               "drop it, or use --search level-switch"),
    (("screen_keep",), lambda c: c.search != "paper" or not _screens(c),
     lambda c: "is used only by the paper's search when it screens (--search paper --screen-windows K; the level-switch "
               "search scores its best --survivors in full instead): drop it"),
    (("trace_strength",), lambda c: getattr(c, "allocation", "msp") != "fisher" and not (runs_search(c) and c.init == "trace"),
     lambda c: "is used only with Fisher-trace levels (--allocation fisher, or --init trace for the search): drop it"),
    (RECONSTRUCTION_ONLY, lambda c: not c.reconstruct_epochs,
     lambda c: "is only used with --reconstruct-epochs N (N > 0), and this job reconstructs no block: add it, or drop "
               "this option"),
    (RECOVERY_ONLY, lambda c: not c.recover_steps,
     lambda c: "is a recovery setting, and this job runs no recovery (--recover-steps is 0): drop it, or add "
               "--recover-steps N"),
    (("recover_top_k",), lambda c: c.recover_loss != "kd",
     lambda c: "is used only by distillation (--recover-loss kd): drop it"),
    (("recover_lora_rank",), lambda c: c.recover_method != "lora",
     lambda c: "is used only by --recover-method lora: drop it, or add --recover-method lora"),
)


def ignored_settings(config: Any, given: typing.Iterable[str]) -> list[tuple[str, str]]:
    """``(setting, why it is unused)`` for each setting in ``given`` that ``config``'s other settings
    leave unused (say ``mutation_rate`` with the level-switch search), so that a caller can refuse
    or warn instead of dropping it silently."""
    found = []
    for name in given:
        for names, unused, why in UNUSED:
            if name in names and hasattr(config, name) and unused(config):
                found.append((name, why(config)))
                break
    return found


def changed_settings(config: Any) -> list[str]:
    """The settings whose value differs from their default: what a caller set, where no command
    line tells (the callbacks' keyword arguments)."""
    return [f.name for f in fields(config) if f.default is not MISSING and getattr(config, f.name) != f.default]


# ---------------------------------------------------------------------------- generated interfaces
def keyword_signature(cls: type, before: list[inspect.Parameter], after: list[inspect.Parameter]) -> inspect.Signature:
    """A signature with every field of ``cls`` as a keyword argument with its default (so that
    `inspect`, IDEs and jsonargparse / LightningCLI see the real options)."""
    kinds = field_types(cls)
    params = [inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, default=f.default, annotation=kinds[f.name])
              for f in fields(cls) if f.default is not MISSING]
    return inspect.Signature([*before, *params, *after])


def add_arguments(parser: Any, cls: type, skip: typing.Iterable[str] = ()) -> None:
    """One command-line option per field of ``cls``, grouped by section. Defaults are left out of
    the parsed namespace (argparse.SUPPRESS), so the caller sees exactly what was given."""
    import argparse

    done, kinds, final = set(skip), field_types(cls), {f.name: f for f in fields(cls)}
    for section in sections(cls):
        title = (section.__doc__ or section.__name__).splitlines()[0].rstrip(".").lower()
        group = parser if section is cls else parser.add_argument_group(title)
        for name in [f.name for f in own_fields(section) if f.name not in done]:
            done.add(name)
            f, kind = final[name], kinds[name]
            accepted = alternatives(kind)
            if not f.metadata.get("cli", True):
                continue
            if bool in accepted:
                group.add_argument(flag_of(f), dest=name, default=argparse.SUPPRESS, help=f.metadata["help"],
                                   action="store_false" if f.metadata.get("flag") else "store_true")
                continue
            number = next((t for t in (int, float) if t in accepted), None)
            shown = "" if f.default is None else f" (default: {f.default})"
            group.add_argument(flag_of(f), dest=name, default=argparse.SUPPRESS, choices=f.metadata.get("choices"),
                               type=_number_reader(f, number) if number else str,
                               help=(f.metadata["help"] + shown).replace("%", "%%"))


def _number_reader(f: Field, kind: type):
    """argparse type: a number, or a `ConfigError` naming the option (exit status 2)."""
    import argparse

    def read(text: str):
        try:
            return kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"must be a {'whole number' if kind is int else 'number'}, got {text!r}") from None

    return read
