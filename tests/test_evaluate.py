import math

import pytest
import torch

from msp_callback.data import evaluation_windows
from msp_callback.evaluate import perplexity, perplexity_report

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


@pytest.mark.parametrize("batch_size", [1, 3])
def test_report_windows_match_transformers_losses(batch_size):
    model = tiny_model("llama")
    windows = evaluation_windows(torch.randint(0, VOCAB, (6 * 16,), generator=torch.Generator().manual_seed(1)), 16)
    losses = [model(input_ids=w[None], labels=w[None]).loss.item() for w in windows]
    report = perplexity_report(model, windows, batch_size=batch_size, progress=False)
    assert report.window_nll == pytest.approx(losses, rel=1e-5)
    assert report.perplexity == pytest.approx(math.exp(sum(losses) / len(losses)), rel=1e-4)
    low, high = report.interval()
    assert low < report.perplexity < high
    assert report.interval(level=0.5) != (low, high)


def test_interval_is_percentile_bootstrap_over_windows():
    from msp_callback.evaluate import PerplexityReport

    # all windows equal: no sampling noise, the interval collapses to the point
    assert PerplexityReport(math.e, [1.0] * 5).interval() == pytest.approx((math.e, math.e))
    # two windows, NLL 0 and 2: resamples average 0, 1 or 2 -> a wide 95% interval, a narrow 20% one
    report = PerplexityReport(math.e, [0.0, 2.0] * 20)
    low, high = report.interval()
    assert 1 < low < math.e < high < math.exp(2)
    narrow = report.interval(level=0.2)
    assert low < narrow[0] <= narrow[1] < high
    with pytest.raises(ValueError, match="level"):
        report.interval(level=1.5)
