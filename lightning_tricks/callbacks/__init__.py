"""Training-trick callbacks: each module holds one trick, a pure function core and a Callback shell.

Names are imported on first use (PEP 562): ``import lightning_tricks.callbacks`` stays cheap.
"""

from typing import TYPE_CHECKING

from lightning_tricks._lazy import lazy_exports

if TYPE_CHECKING:
    from lightning_tricks.callbacks.activation_stats import ActivationStats
    from lightning_tricks.callbacks.early_stopping import EarlyStopping
    from lightning_tricks.callbacks.ema import EMA
    from lightning_tricks.callbacks.gradient_clipping import GradientClipping
    from lightning_tricks.callbacks.gradient_health import GradientHealth
    from lightning_tricks.callbacks.input_range_check import InputRangeCheck
    from lightning_tricks.callbacks.lr_decay import LRDecay
    from lightning_tricks.callbacks.rng_state import RNGStateCheckpoint
    from lightning_tricks.callbacks.weight_decay import WeightDecay
    from lightning_tricks.callbacks.weight_init import WeightInit
    from lightning_tricks.callbacks.weight_norm_monitor import WeightNormMonitor

__all__, __getattr__, __dir__ = lazy_exports(
    __name__,
    {
        "GradientClipping": "gradient_clipping",
        "LRDecay": "lr_decay",
        "EarlyStopping": "early_stopping",
        "WeightInit": "weight_init",
        "WeightDecay": "weight_decay",
        "EMA": "ema",
        "WeightNormMonitor": "weight_norm_monitor",
        "GradientHealth": "gradient_health",
        "ActivationStats": "activation_stats",
        "InputRangeCheck": "input_range_check",
        "RNGStateCheckpoint": "rng_state",
    },
)
