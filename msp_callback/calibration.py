"""The one sequential calibration driver: capture block 0's inputs, then walk the blocks.

Every stage that needs per-block activations (all criteria, and later the level cache) uses this
instead of its own "Catcher": the inputs of block 0 are captured once with a forward pre-hook
(keyword arguments such as attention masks and rotary embeddings included), then each block is
visited and run on those inputs to produce the next block's. Memory stays at one block's
activations plus the calibration hidden states.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from .models import find_blocks

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

    def with_hidden(self, hidden: list[Tensor]) -> "BlockInputs":
        return BlockInputs(hidden, self.args, self.kwargs)


def _check_batches(batches: Sequence[Tensor]) -> None:
    if len(batches) == 0:
        raise CalibrationError(
            "the calibration set is empty: give at least one batch of token ids "
            "(e.g. data.sample_calibration(..., num_samples=32))"
        )


@torch.no_grad()
def capture_block_inputs(model: nn.Module, batches: Sequence[Tensor]) -> BlockInputs:
    """Run ``model`` on each batch of token ids (B, T) up to block 0 and keep what it receives."""
    _check_batches(batches)
    block0 = find_blocks(model)[0]
    captured = BlockInputs(hidden=[])

    def hook(module: nn.Module, args: tuple, kwargs: dict) -> None:
        kwargs = dict(kwargs)
        if args:
            hidden, rest = args[0], tuple(args[1:])
        else:
            hidden, rest = kwargs.pop("hidden_states"), ()
        captured.hidden.append(hidden)
        captured.args.append(rest)
        captured.kwargs.append(kwargs)
        raise _StopForward

    handle = block0.register_forward_pre_hook(hook, with_kwargs=True)
    device = next(model.parameters()).device
    try:
        for batch in batches:
            try:
                model(input_ids=batch.to(device), use_cache=False)
            except _StopForward:
                pass
    finally:
        handle.remove()
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


BlockVisitor = Callable[[int, nn.Module, BlockInputs | None], None]


def walk_blocks(
    model: nn.Module,
    batches: Sequence[Tensor] | Iterable[Tensor] | None,
    visit: BlockVisitor,
    desc: str = "blocks",
    progress: bool = True,
    needs_inputs: bool = True,
) -> None:
    """Call ``visit(index, block, inputs)`` for each block in order; afterwards the (possibly
    modified) block is run to produce the next block's inputs. With ``needs_inputs=False`` no
    forward runs at all and ``inputs`` is None (for input-free criteria such as magnitude)."""
    if not needs_inputs:
        for index, block in enumerate(tqdm(find_blocks(model), desc=desc, disable=not progress)):
            visit(index, block, None)
        return
    batches = list(batches or [])
    inputs = capture_block_inputs(model, batches)
    blocks = find_blocks(model)
    for index, block in enumerate(tqdm(blocks, desc=desc, disable=not progress)):
        visit(index, block, inputs)
        if index + 1 < len(blocks):
            inputs = inputs.with_hidden(run_block(block, inputs))


@torch.no_grad()
def collect_input_stats(
    block: nn.Module, linears: dict[str, nn.Module], inputs: BlockInputs | None, statistic: str
) -> dict[str, InputStats | None]:
    """Run ``block`` once on ``inputs`` and accumulate each linear's input statistic (None for
    every linear when there are no inputs or the criterion needs none)."""
    from .criteria.base import InputStats

    if inputs is None or statistic == "none":
        return {name: None for name in linears}
    stats = {name: InputStats() for name in linears}
    handles = [
        module.register_forward_hook(lambda mod, args, out, name=name: stats[name].add(args[0], statistic))
        for name, module in linears.items()
    ]
    try:
        run_block(block, inputs)
    finally:
        for handle in handles:
            handle.remove()
    return stats
