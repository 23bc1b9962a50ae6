"""LightningCLI entry point for the YAML recipes:

    python examples/lightning_cli.py fit --config recipes/lightning_msp.yaml
"""

from lightning.pytorch.cli import LightningCLI

from msp_callback.integrations.lightning_lm import CausalLM, TextDataModule

if __name__ == "__main__":
    LightningCLI(CausalLM, TextDataModule)
