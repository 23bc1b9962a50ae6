"""A minimal LightningModule and DataModule for causal LMs, so `recipes/lightning_msp.yaml` and the
examples run with `LightningCLI` as they are. Your own modules work with `MSPCallback` just as well."""

from __future__ import annotations

import lightning.pytorch as pl
import torch
from torch.utils.data import DataLoader, TensorDataset

from .. import data
from ..evaluate import perplexity
from ..loading import load_causal_lm, resolve_model_path


class CausalLM(pl.LightningModule):
    """Finetunes a causal LM (a packaged name, a local folder or a hub id) with AdamW."""

    def __init__(self, model_name: str = "smollm2-135m", lr: float = 1e-5, weight_decay: float = 0.0):
        super().__init__()
        self.save_hyperparameters()
        self.model, self.tokenizer = load_causal_lm(model_name)
        self.model.train()

    def training_step(self, batch, batch_idx: int):
        ids = batch[0]
        loss = self.model(input_ids=ids, labels=ids, use_cache=False).loss
        self.log("train_loss", loss, prog_bar=True)
        return loss

    def configure_optimizers(self):
        return torch.optim.AdamW(self.parameters(), lr=self.hparams.lr, weight_decay=self.hparams.weight_decay)

    def perplexity(self, windows: torch.Tensor) -> float:
        return perplexity(self.model, windows, progress=False)


class TextDataModule(pl.LightningDataModule):
    """Random windows of a corpus (default: packaged C4) as training batches of token ids."""

    def __init__(self, model_name: str = "smollm2-135m", corpus: str = "c4", samples: int = 64,
                 seqlen: int = 256, batch_size: int = 4, seed: int = 0):
        super().__init__()
        self.save_hyperparameters()

    def setup(self, stage: str) -> None:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(resolve_model_path(self.hparams.model_name))
        tokens = data.tokenize(tokenizer, data.load_corpus(self.hparams.corpus))
        rows = torch.cat(data.sample_calibration(tokens, self.hparams.samples, self.hparams.seqlen, self.hparams.seed))
        self.dataset = TensorDataset(rows)

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.dataset, batch_size=self.hparams.batch_size, shuffle=True)
