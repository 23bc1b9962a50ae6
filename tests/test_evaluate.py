import math

import pytest
import torch

from msp_callback.data import evaluation_windows
from msp_callback.evaluate import perplexity

from .conftest import VOCAB, tiny_model


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_equals_exp_of_transformers_loss(arch):
    model = tiny_model(arch)
    tokens = torch.randint(0, VOCAB, (5 * 32,), generator=torch.Generator().manual_seed(0))
    windows = evaluation_windows(tokens, 32)
    assert windows.shape == (5, 32)
    # equal-length windows: the mean of per-window mean losses is the token mean
    losses = [model(input_ids=w[None], labels=w[None]).loss.item() for w in windows]
    expected = math.exp(sum(losses) / len(losses))
    for batch_size in (1, 2):
        got = perplexity(model, windows, batch_size=batch_size, progress=False)
        assert abs(got - expected) / expected < 1e-4


def test_windows_with_bos():
    tokens = torch.arange(10, 30)
    w = evaluation_windows(tokens, 5, max_windows=3, bos_token_id=1)
    assert w.tolist() == [[1, 10, 11, 12, 13], [1, 14, 15, 16, 17], [1, 18, 19, 20, 21]]


def test_empty_windows_rejected(llama):
    with pytest.raises(ValueError, match="non-empty"):
        perplexity(llama, torch.zeros(0, 8, dtype=torch.long), progress=False)
