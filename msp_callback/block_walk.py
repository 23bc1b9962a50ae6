"""The one sequential calibration driver: capture block 0's inputs, then walk the blocks.

Every stage that needs per-block activations (all criteria, and later the level cache) uses this
instead of its own "Catcher": one cheap forward with the blocks replaced by recorders captures the
hidden states entering block 0 and every block's own call arguments (attention masks, rotary
tables: they differ between Gemma's global and sliding layers), then each block is visited and run
to produce the next block's inputs. Memory stays at one block's activations plus the calibration
hidden states.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from .models import blocks_replaced, find_blocks, input_device
from .offload import offload_of
from .sharded import sharding_of

if TYPE_CHECKING:
    from .criteria.base import InputStats


class CalibrationError(ValueError):
    """Calibration data is missing or unusable."""


class _StopForward(Exception):
    pass


@dataclass
class BlockInputs:
    """Inputs of one block for every calibration batch: hidden states plus the other call args."""

    hidden: list[Tensor]
    args: list[tuple[Any, ...]] = field(default_factory=list)
    kwargs: list[dict[str, Any]] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.hidden)

    @property
    def num_tokens(self) -> int:
        return sum(h.shape[0] * h.shape[1] for h in self.hidden)


def _check_batches(batches: Sequence[Tensor]) -> None:
    if len(batches) == 0:
        raise CalibrationError(
            "the calibration set is empty: give at least one batch of token ids "
            "(e.g. data.sample_calibration(..., num_samples=32))"
        )


class BlockStandIn(nn.Module):
    """Takes a block's place in the model for one forward; attributes the model's loop may read
    (e.g. Gemma's ``attention_type``) come from the real block, which is not registered."""

    def __init__(self, block: nn.Module):
        super().__init__()
        object.__setattr__(self, "_block", block)

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(object.__getattribute__(self, "_block"), name)


class _CallRecorder(BlockStandIn):
    """Records a block's call arguments and passes its hidden input on (the last one stops)."""

    def __init__(self, block: nn.Module, record: Callable[[tuple, dict], None], last: bool):
        super().__init__(block)
        self.record, self.last = record, last

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        self.record(args, kwargs)
        if self.last:
            raise _StopForward
        return args[0] if args else kwargs["hidden_states"]


@dataclass
class StackInputs:
    """Hidden states entering block 0, and every block's own other call arguments, per batch
    (architectures such as Gemma 3 give global and sliding-window layers different attention
    masks and rotary tables, so block 0's arguments do not fit every block)."""

    hidden: list[Tensor]
    args: list[list[tuple[Any, ...]]]  # [block][batch]
    kwargs: list[list[dict[str, Any]]]

    def block(self, index: int, hidden: list[Tensor] | None = None) -> BlockInputs:
        """Inputs of block ``index``: ``hidden`` (default: block 0's) with that block's arguments."""
        return BlockInputs(self.hidden if hidden is None else hidden, self.args[index], self.kwargs[index])


@torch.no_grad()
def capture_stack_inputs(model: nn.Module, batches: Sequence[Tensor]) -> StackInputs:
    """Run ``model`` on each batch of token ids (B, T) with every block replaced by a recorder:
    only the embeddings and the model's own preparation of masks and positions run."""
    _check_batches(batches)
    blocks = find_blocks(model)
    captured = StackInputs(hidden=[], args=[[] for _ in blocks], kwargs=[[] for _ in blocks])

    def recorder(index: int):
        def record(args: tuple, kwargs: dict) -> None:
            kwargs = dict(kwargs)
            hidden = args[0] if args else kwargs.pop("hidden_states")
            if index == 0:
                captured.hidden.append(hidden)
            captured.args[index].append(tuple(args[1:]))
            captured.kwargs[index].append(kwargs)

        return record

    stand_ins = nn.ModuleList([_CallRecorder(b, recorder(i), i == len(blocks) - 1) for i, b in enumerate(blocks)])
    device = input_device(model)
    with blocks_replaced(model, stand_ins):
        for batch in batches:
            try:
                model(input_ids=batch.to(device), use_cache=False)
            except _StopForward:
                pass
    counts = [len(calls) for calls in captured.args]
    if counts != [len(batches)] * len(blocks):
        raise CalibrationError(
            f"the model called its {len(blocks)} decoder blocks {counts} times for {len(batches)} batches; "
            "calibration needs every block called once per forward, in order"
        )
    return captured


def block_output(out: Any) -> Tensor:
    """Hidden states from a block's return value (a tensor, or a tuple starting with one)."""
    return out[0] if isinstance(out, (tuple, list)) else out


@torch.no_grad()
def run_block(block: nn.Module, inputs: BlockInputs) -> list[Tensor]:
    """Outputs of ``block`` for every captured batch."""
    return [
        block_output(block(h, *a, **kw)) for h, a, kw in zip(inputs.hidden, inputs.args, inputs.kwargs)
    ]


# A visitor that ran the *unchanged* block on its inputs may return those outputs: the walk then
# feeds them to the next block instead of running the block again (half the forwards).
BlockVisitor = Callable[[int, nn.Module, BlockInputs | None], list[Tensor] | None]


def walk_blocks(
    model: nn.Module,
    batches: Sequence[Tensor] | Iterable[Tensor] | None,
    visit: BlockVisitor,
    desc: str = "blocks",
    progress: bool = True,
    needs_inputs: bool = True,
    writes: bool = False,
) -> None:
    """Call ``visit(index, block, inputs)`` for each block in order; afterwards the (possibly
    modified) block is run to produce the next block's inputs. With ``needs_inputs=False`` no
    forward runs at all and ``inputs`` is None (for input-free criteria such as magnitude).

    For a model offloaded to disk (`offload`) or sharded by FSDP2 (`sharded`), each block is held
    whole on the device for its visit and its run; ``writes=True`` (pruning) writes its changed
    weights (and new masks) back after."""
    holder = offload_of(model) or sharding_of(model)  # blocks in files, or in shards across ranks

    blocks = find_blocks(model)

    @contextlib.contextmanager
    def held(index: int) -> Iterator[None]:
        if holder is None:
            yield
            return
        with holder.onloaded(blocks[index], write_back=writes):
            if index + 1 < len(blocks):
                holder.prefetch(blocks[index + 1])  # its copy travels while this block works
            yield

    if not needs_inputs:
        for index, block in enumerate(tqdm(blocks, desc=desc, disable=not progress)):
            with held(index):
                visit(index, block, None)
        return
    batches = list(batches or [])
    stack = capture_stack_inputs(model, batches)
    inputs = stack.block(0)
    for index, block in enumerate(tqdm(blocks, desc=desc, disable=not progress)):
        if not all(bool(torch.isfinite(h).all()) for h in inputs.hidden):
            raise CalibrationError(
                f"the inputs of decoder block {index} hold NaN or inf values: "
                + ("the embeddings are not finite (check the checkpoint)" if index == 0 else
                   f"block {index - 1} overflowed; in float16 load the model in bfloat16 or float32")
            )
        with held(index):
            outputs = visit(index, block, inputs)
            if index + 1 < len(blocks):
                inputs = stack.block(index + 1, outputs if outputs else run_block(block, inputs))


@torch.no_grad()
def collect_input_stats(
    block: nn.Module, linears: dict[str, nn.Module], inputs: BlockInputs | None, statistic: str,
    outputs: list[Tensor] | None = None,
) -> dict[str, InputStats | None]:
    """Run ``block`` once on ``inputs`` and accumulate each linear's input statistic (None for
    every linear when there are no inputs or the criterion needs none). Linears fed the very
    same input tensor in every forward (q/k/v, gate/up) get one shared `InputStats`: the
    statistic is accumulated, and a criterion's work on it (SparseGPT's factorisation) done, once
    for them. A list passed as ``outputs`` receives the block's outputs of that run (none when it
    did not run)."""
    if inputs is None or statistic == "none":
        return {name: None for name in linears}
    try:
        return _run_collecting(block, linears, inputs, statistic, outputs, share=True)
    except _InputsDiffer:  # linears that shared an input in the first forward did not in a later one
        return _run_collecting(block, linears, inputs, statistic, outputs, share=False)


class _InputsDiffer(Exception):
    pass


def _run_collecting(block: nn.Module, linears: dict[str, nn.Module], inputs: BlockInputs, statistic: str,
                    outputs: list[Tensor] | None, share: bool) -> dict[str, InputStats | None]:
    from .criteria.base import InputStats

    stats: dict[str, InputStats] = {} if share else {name: InputStats() for name in linears}
    fed: dict[int, tuple[Tensor, InputStats]] = {}  # this forward: id(input) -> (input, the stats it went into)
    added: dict[int, Tensor] = {}  # this forward: id(stats) -> the input added to it

    def record(name: str, x: Tensor) -> None:
        if not share:
            stats[name].add(x, statistic)
            return
        own = stats.get(name)
        if own is None:  # the first forward decides: share with a linear fed this very tensor
            seen = fed.get(id(x))
            if seen is not None and seen[0] is x:
                stats[name] = seen[1]
                return
            own = stats[name] = InputStats()
        elif id(own) in added:
            if added[id(own)] is x:
                return  # another linear of its group already added this input
            raise _InputsDiffer
        own.add(x, statistic)
        added[id(own)] = x
        fed[id(x)] = (x, own)

    def new_forward(*_: Any) -> None:  # a pre-hook returning something would replace the block's arguments
        fed.clear()
        added.clear()

    handles = [block.register_forward_pre_hook(new_forward)]
    handles += [module.register_forward_hook(lambda mod, args, out, name=name: record(name, args[0]))
                for name, module in linears.items()]
    try:
        ran = run_block(block, inputs)
    finally:
        for handle in handles:
            handle.remove()
        new_forward()
    if outputs is not None:
        outputs.extend(ran)
    return {name: stats.get(name) or InputStats() for name in linears}  # a linear never called: empty
