"""Train TopK (Llama Scope recipe) and vanilla (ReLU + L1) SAEs and transcoders; `python -m sae.train`.

The recipe (He et al. 2024, "Llama Scope"; where the paper and the released code differ, the paper is
the default and the code an option):

- TopK ranked by ReLU(pre) x ||decoder row||, keeping the unscaled ReLU values; k = 50, annealed
  linearly from `k_start` (d/2 as the released code; `--k-start d_model` as the paper) to k over the
  first 10% of steps;
- Adam (0.9, 0.999, 1e-8), lr 8e-4, linear warm-up, then linear decay to 0 over the final 20%;
- decoder rows Kaiming-uniform rescaled to norm sqrt(2 d_model / F) (paper; 0.5 as the code by
  option), encoder = decoder^T at init (not for transcoders), zero biases;
- inputs (and, for transcoders, targets separately) scaled so their average norm is sqrt(d);
  MSE in that normalised space; no dead-feature loss.
Options beyond the paper (off by default): AuxK (Gao et al. 2024), gradient clipping, the released
code's per-token-normalised MSE.

The modules: `config` (SAESpec, TrainConfig, validate), `source` (DataSource), `initialise` (init_sae),
`kernels` and `step` (SAETrainer: one SAE's sparse training step), `checkpoint`, `log`, `loop`
(train), `parallel` (torchrun), `postprocess` (TopK -> JumpReLU), `run` (train then post-process, what
the command does), `data_options` and `cli` (the command's flags).
"""

from sae.train.checkpoint import CHECKPOINT_VERSION, latest_checkpoint
from sae.train.config import DEFAULT_L1, SAESpec, TrainConfig, TrainingError, validate
from sae.train.data_options import DataOptions, open_source
from sae.train.initialise import init_sae
from sae.train.log import LOG_FIELDS, read_log
from sae.train.loop import TrainResult, train
from sae.train.source import DataSource, first_tokens
from sae.train.step import SAETrainer

__all__ = [
    "CHECKPOINT_VERSION",
    "DEFAULT_L1",
    "LOG_FIELDS",
    "DataOptions",
    "DataSource",
    "SAESpec",
    "SAETrainer",
    "TrainConfig",
    "TrainResult",
    "TrainingError",
    "first_tokens",
    "init_sae",
    "latest_checkpoint",
    "open_source",
    "read_log",
    "train",
    "validate",
]
