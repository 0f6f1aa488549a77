"""Training recipes shared by the studies: QAT fine-tuned from a float run, the PTQ-vs-QAT
trio of trainings (``train_or_reuse`` of ``lstmq.runner`` trains or reuses each).

The fine-tuning recipe: train the float model first, then train it quantization-aware
starting from its parameters (seed ``s`` from float seed ``s``) for a short schedule at a
lower learning rate, without warm-up. It gives the QAT model the float model's accuracy in
a third of a from-scratch QAT run.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from lstmq.config import Config, load_config
from lstmq.runner import train_or_reuse  # noqa: F401 - the studies' entry point

FINETUNE_EPOCHS = 15
FINETUNE_LEARNING_RATE = 1e-3


def finetune_overrides(float_dir: str | Path, epochs: int = FINETUNE_EPOCHS,
                       learning_rate: float = FINETUNE_LEARNING_RATE) -> list[str]:
    """Overrides that turn a config into QAT fine-tuned from the float run in ``float_dir``."""
    return ["quant.mode=qat", f"quant.init_from={float_dir}", f"train.epochs={epochs}",
            f"train.learning_rate={learning_rate}", "train.warmup_epochs=0"]


def float_and_qat(config: str | Path, overrides: Sequence[str], float_dir: str | Path,
                  qat_epochs: int = FINETUNE_EPOCHS) -> tuple[Config, Config]:
    """(float config, QAT config fine-tuned from ``float_dir``) of one config file."""
    float_config = load_config(config, [*overrides, "quant.mode=float"])
    qat_config = load_config(config, [*overrides, *finetune_overrides(float_dir, qat_epochs)])
    return float_config, qat_config


def ptq_qat_configs(split: str, overrides: Sequence[str], float_dir: str | Path,
                    qat_epochs: int = FINETUNE_EPOCHS, weight_bits: int = 8) -> dict[str, Config]:
    """The three trainings of a PTQ-vs-QAT comparison under the 36 KB budget, by run name:

    - ``float_int8_budget``: float, at the hidden size the budget gives ``weight_bits``
      storage (the source of every PTQ path);
    - ``qat``: that run fine-tuned quantization-aware;
    - ``float32_budget``: the reference study's setting, float32 storage within the budget.
    """
    settings = [f"data.split={split}", f"quant.weight_bits={weight_bits}", *overrides]
    float_config, qat_config = float_and_qat("task_b_qat", settings, float_dir, qat_epochs)
    return {"float_int8_budget": float_config, "qat": qat_config,
            "float32_budget": load_config("task_b_float", [f"data.split={split}", *overrides])}
