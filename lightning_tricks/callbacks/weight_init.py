"""Weight initialization schemes for Linear and Conv layers, including data-dependent LSUV.

Sources: LeCun et al. 1998 "Efficient BackProp" (``uniform``/``gaussian``/``lecun_normal``: variance ``1 / fan_in``);
Glorot & Bengio 2010 (``xavier_*``); He et al. 2015 (``kaiming_*``); Saxe et al. 2014 (``orthogonal``);
Mishkin & Matas 2016 "All you need is a good init" (``lsuv``). ``standard_normal`` (N(0, 1)) is the classic
counterexample: the activation scale grows like ``sqrt(width)`` per layer.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from fnmatch import fnmatch
from typing import Literal, get_args

import lightning.pytorch as pl
import torch
from lightning.pytorch.utilities.rank_zero import rank_zero_info, rank_zero_warn
from torch import Tensor, nn
from torch.nn.modules.conv import _ConvNd
from typing_extensions import override

from lightning_tricks._validation import check_choice, check_float, check_int, invalid
from lightning_tricks.callbacks._base import StrategyRefusal, TrickCallback
from lightning_tricks.callbacks._compiled import call_eagerly, strip_compiled_name
from lightning_tricks.callbacks._lsuv import ForwardFn, apply_scales_, lsuv_, resolve_forward_fn

__all__ = ["WeightInit", "apply_scales_", "fan_in", "init_layer_", "lsuv_", "target_layers"]

Scheme = Literal[
    "uniform",
    "gaussian",
    "lecun_normal",
    "xavier_uniform",
    "xavier_normal",
    "kaiming_uniform",
    "kaiming_normal",
    "orthogonal",
    "standard_normal",
    "lsuv",
]
Nonlinearity = Literal["linear", "sigmoid", "tanh", "relu", "leaky_relu", "selu"]
FanMode = Literal["fan_in", "fan_out"]

# std of a unit normal truncated to [-2, 2]: dividing by it makes the truncated draw's variance 1 / fan_in.
_TRUNC_STD = 0.87962566103423978


def target_layers(
    module: nn.Module,
    include: Sequence[str] | None = None,
    exclude: Sequence[str] | None = None,
    include_frozen: bool = True,
) -> list[tuple[str, nn.Module]]:
    """The Linear / Conv layers of ``module`` whose ``named_modules`` name matches ``include`` and not ``exclude``
    (and, with ``include_frozen=False``, whose weight has ``requires_grad=True``).

    Names are those of ``named_modules`` without the ``_orig_mod`` parts a ``torch.compile`` wrapper adds.
    """
    layers = []
    for name, layer in module.named_modules():
        name = strip_compiled_name(name)
        if not isinstance(layer, (nn.Linear, _ConvNd)):
            continue
        if not include_frozen and not layer.weight.requires_grad:
            continue
        if include is not None and not any(fnmatch(name, pattern) for pattern in include):
            continue
        if exclude is not None and any(fnmatch(name, pattern) for pattern in exclude):
            continue
        layers.append((name, layer))
    return layers


def fan_in(weight: Tensor) -> int:
    """Inputs per output unit: ``in_features`` for Linear, ``in_channels / groups * prod(kernel)`` for Conv."""
    return weight.shape[1] * math.prod(weight.shape[2:])


@torch.no_grad()
def init_layer_(
    layer: nn.Module,
    scheme: Scheme,
    bias: float = 0.0,
    gain: float = 1.0,
    nonlinearity: Nonlinearity = "relu",
    fan_mode: FanMode = "fan_in",
    generator: torch.Generator | None = None,
    init_bias: bool = True,
) -> None:
    """Initialize ``layer.weight`` in place by ``scheme`` (``lsuv``: its orthogonal start) and, with ``init_bias``,
    set the bias."""
    weight, g = layer.weight, generator
    std = 1.0 / math.sqrt(fan_in(weight))
    if scheme == "uniform":
        nn.init.uniform_(weight, -std, std, generator=g)
    elif scheme == "gaussian":
        nn.init.normal_(weight, 0.0, std, generator=g)
    elif scheme == "lecun_normal":
        nn.init.trunc_normal_(weight, 0.0, std / _TRUNC_STD, -2 * std / _TRUNC_STD, 2 * std / _TRUNC_STD, generator=g)
    elif scheme == "xavier_uniform":
        nn.init.xavier_uniform_(weight, gain=gain, generator=g)
    elif scheme == "xavier_normal":
        nn.init.xavier_normal_(weight, gain=gain, generator=g)
    elif scheme in ("kaiming_uniform", "kaiming_normal"):
        init = nn.init.kaiming_uniform_ if scheme == "kaiming_uniform" else nn.init.kaiming_normal_
        slope = 0.01 if nonlinearity == "leaky_relu" else 0.0
        init(weight, a=slope, mode=fan_mode, nonlinearity=nonlinearity, generator=g)
    elif scheme in ("orthogonal", "lsuv"):
        nn.init.orthogonal_(weight, gain=gain, generator=g)
    elif scheme == "standard_normal":
        nn.init.normal_(weight, 0.0, 1.0, generator=g)
    else:
        raise invalid("scheme", f"one of {get_args(Scheme)}", scheme)
    if init_bias and getattr(layer, "bias", None) is not None:
        nn.init.constant_(layer.bias, bias)


class WeightInit(TrickCallback):
    r"""Initialize the weights of Linear / Conv layers by a classic scheme before training.

    Schemes (``n_in`` = fan-in): ``uniform`` U(-1/sqrt(n_in), 1/sqrt(n_in)); ``gaussian`` N(0, 1/n_in);
    ``lecun_normal`` the same variance from a normal truncated at 2 std; ``xavier_uniform`` / ``xavier_normal``
    (variance ``2 gain^2 / (n_in + n_out)``); ``kaiming_uniform`` / ``kaiming_normal`` (variance
    ``gain(nonlinearity)^2 / fan``, ``fan`` by ``fan_mode``; ``leaky_relu`` uses slope 0.01); ``orthogonal`` (times
    ``gain``); ``standard_normal`` N(0, 1), which makes activations blow up with width (a counterexample);
    ``lsuv``: orthogonal, then each layer rescaled in forward order until its output variance on the first training
    batch is 1 within ``lsuv_tolerance``. Biases are set to ``bias``; normalization and other layers are untouched;
    ``include`` / ``exclude`` select layers by ``fnmatch`` patterns on ``named_modules`` names (e.g. ``"encoder.*"``).

    Hooks: data-free schemes (and the orthogonal start of ``lsuv``) run in ``setup(stage="fit")``, before the
    strategy wraps the model, so DDP's constructor broadcasts rank 0's weights to all ranks. With ``seed`` the draw
    uses its own generator and is reproducible (the global RNG is untouched). A checkpoint passed as
    ``trainer.fit(ckpt_path=...)`` is restored after ``setup`` and wins: resuming or fine-tuning from it keeps its
    weights. (Weights you load yourself before ``fit`` without ``ckpt_path`` are overwritten: drop the callback.)
    ``lsuv`` rescales in ``on_train_start`` on rank 0's first training batch (moved to the device, fetched under a
    forked RNG so the data order is unchanged), model in eval mode (no BatchNorm statistics change, no dropout); the
    scales are broadcast so every rank applies the same ones. It is skipped when resuming (``trainer.ckpt_path``).

    LSUV's forward call: ``lsuv_forward_fn(pl_module, batch)``, by default ``pl_module(inputs)`` with the inputs the
    batch itself, its first element (tuple / list) or first value (dict). Modules whose ``forward`` takes something
    else pass their own, e.g. ``lambda m, batch: m(*batch)`` for a ``forward(inputs, target)``, or
    ``lambda m, batch: m.generator(torch.randn(len(batch[0]), 64, device=m.device, dtype=m.dtype))`` for a GAN; from
    LightningCLI / YAML give its dotted import path (``lsuv_forward_fn: my_project.init.run_generator``). The batch
    is moved to the device and cast by the precision plugin (``convert_input``: bf16 under ``"bf16-true"``, float64
    under ``"64-true"``) and the call runs in its ``forward_context`` (autocast under ``*-mixed``), as a training
    step would. A compiled network (``torch.compile(net)``, ``net.compile()`` or ``fit(torch.compile(model))``) is
    probed through its original modules, since hooks do not fire inside a compiled graph; the compiled code is left
    as it was. A failing call raises a ``RuntimeError`` naming LSUV and ``lsuv_forward_fn``.

    Frozen parameters: layers whose weight has ``requires_grad=False`` (a pretrained backbone being fine-tuned) are
    left alone, and so are frozen biases; ``include_frozen=True`` initializes them too. The skipped layers are named
    in an info line.

    Precision and strategies: the data-free schemes run in float32 before the precision plugin converts the module,
    so every precision works. Sharded strategies (FSDP, DeepSpeed, ModelParallel) work for the data-free schemes
    (layers defined in ``__init__``, initialized before sharding; pass ``seed`` so every rank draws the same) and are
    refused at ``setup`` for ``lsuv``, which rescales whole weight tensors that those strategies split across ranks.

    Cost: one pass over the weights at setup; ``lsuv`` adds up to ``layers * (lsuv_max_iters + 1)`` partial forward
    passes on one batch, once. Logs nothing (one info line with the number of layers initialized).

    Args:
        scheme: The initialization scheme (see above).
        bias: Value for every bias of the selected layers.
        include: ``fnmatch`` patterns of layer names to initialize; ``None``: all Linear / Conv layers.
        exclude: ``fnmatch`` patterns of layer names to leave alone.
        seed: Seed of a private generator for the draw; ``None`` uses the global RNG.
        nonlinearity: The activation after the layers, for the gain of ``kaiming_*``.
        fan_mode: ``"fan_in"`` (forward variance) or ``"fan_out"`` (backward variance) for ``kaiming_*``.
        gain: Scale of ``xavier_*`` and ``orthogonal``.
        lsuv_tolerance: Allowed distance of each layer's output variance from 1 (``> 0``).
        lsuv_max_iters: Most rescalings per layer (``>= 1``).
        lsuv_forward_fn: ``(module, batch) -> output`` that runs the module on a batch for LSUV, or its dotted import
            path; ``None``: :func:`~lightning_tricks.callbacks._lsuv.default_forward`.
        include_frozen: Also initialize parameters with ``requires_grad=False``.

    Raises:
        ValueError: On an unknown ``scheme``, ``nonlinearity`` or ``fan_mode``, a non-finite ``bias``, ``gain <= 0``,
            ``lsuv_tolerance <= 0``, ``lsuv_max_iters < 1`` or an ``lsuv_forward_fn`` that is neither callable nor
            importable.
        MisconfigurationException: At ``setup``, for ``lsuv`` under a sharded strategy.
        RuntimeError: In ``on_train_start``, when LSUV's forward call fails or reaches none of the selected layers.

    Example::

        from lightning.pytorch import Trainer
        from lightning_tricks.callbacks import WeightInit

        trainer = Trainer(callbacks=[WeightInit("kaiming_normal", nonlinearity="relu", exclude=["head"], seed=0)])
        trainer.fit(model)
    """

    strategy_policy = StrategyRefusal(
        "LSUV rescales whole weight tensors, which this strategy splits across ranks",
        "Use a data-free scheme such as WeightInit('orthogonal') or the 'ddp' strategy.",
    )

    def __init__(
        self,
        scheme: Scheme = "xavier_uniform",
        bias: float = 0.0,
        include: list[str] | None = None,
        exclude: list[str] | None = None,
        seed: int | None = None,
        nonlinearity: Nonlinearity = "relu",
        fan_mode: FanMode = "fan_in",
        gain: float = 1.0,
        lsuv_tolerance: float = 0.1,
        lsuv_max_iters: int = 10,
        lsuv_forward_fn: ForwardFn | str | None = None,
        include_frozen: bool = False,
    ) -> None:
        check_choice("scheme", scheme, Scheme)
        check_choice("nonlinearity", nonlinearity, Nonlinearity)
        check_choice("fan_mode", fan_mode, FanMode)
        check_float("bias", bias)
        check_float("gain", gain, 0, low_open=True)  # gain 0 zeroes every weight: no symmetry breaking
        check_float("lsuv_tolerance", lsuv_tolerance, 0, low_open=True)
        check_int("lsuv_max_iters", lsuv_max_iters, 1)
        self.scheme = scheme
        self.bias = bias
        self.include = include
        self.exclude = exclude
        self.seed = seed
        self.nonlinearity = nonlinearity
        self.fan_mode = fan_mode
        self.gain = gain
        self.lsuv_tolerance = lsuv_tolerance
        self.lsuv_max_iters = lsuv_max_iters
        self.lsuv_forward_fn = lsuv_forward_fn
        self._forward_fn = resolve_forward_fn(lsuv_forward_fn)
        self.include_frozen = include_frozen

    @override
    def strategy_refusal(self, stage: str) -> StrategyRefusal | None:
        # the data-free schemes run before sharding; only LSUV, at fit, sees whole tensors split
        return self.strategy_policy if stage == "fit" and self.scheme == "lsuv" else None

    def _layers(self, module: nn.Module) -> list[tuple[str, nn.Module]]:
        return target_layers(module, self.include, self.exclude, self.include_frozen)

    def init_module_(self, module: nn.Module) -> list[str]:
        """Apply the data-free part of the scheme to ``module`` in place; returns the initialized layer names."""
        layers = self._layers(module)
        generators: dict[torch.device, torch.Generator] = {}
        for name, layer in layers:
            if isinstance(layer.weight, nn.parameter.UninitializedParameter):
                rank_zero_warn(f"WeightInit: skipping lazy layer `{name}` (not materialized at setup).")
                continue
            generator = None
            if self.seed is not None:
                device = layer.weight.device
                if device not in generators:
                    generators[device] = torch.Generator(device=device).manual_seed(self.seed)
                generator = generators[device]
            init_bias = self.include_frozen or getattr(layer.bias, "requires_grad", False)
            init_layer_(
                layer, self.scheme, self.bias, self.gain, self.nonlinearity, self.fan_mode, generator, init_bias
            )
        return [name for name, _ in layers]

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        if stage != "fit":
            return
        names = self.init_module_(pl_module)
        if not names:
            rank_zero_warn("WeightInit: no Linear / Conv layer matched `include` / `exclude`; nothing initialized.")
        rank_zero_info(f"WeightInit: {self.scheme} initialization of {len(names)} layers.")
        if not self.include_frozen:
            frozen = sorted(set(dict(target_layers(pl_module, self.include, self.exclude))) - set(names))
            if frozen:
                rank_zero_info(
                    f"WeightInit: left {len(frozen)} frozen layers (requires_grad=False) alone: {', '.join(frozen)}."
                    " Pass include_frozen=True to initialize them too."
                )

    @override
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.scheme != "lsuv" or trainer.ckpt_path is not None:
            return
        layers = self._layers(pl_module)
        scales = None
        if trainer.is_global_zero:
            scales = self._lsuv_on_first_batch(trainer, pl_module, layers)
        scales = trainer.strategy.broadcast(scales, src=0)
        if not trainer.is_global_zero:
            apply_scales_(layers, scales)

    def _lsuv_on_first_batch(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, layers: list[tuple[str, nn.Module]]
    ) -> dict[str, float]:
        loader = trainer.train_dataloader
        if isinstance(loader, Mapping):
            loader = next(iter(loader.values()))
        elif isinstance(loader, (list, tuple)):
            loader = loader[0]
        with torch.random.fork_rng(devices=[]):  # iterating a shuffled loader draws a seed from the global RNG
            batch = next(iter(loader))
        precision = trainer.precision_plugin
        batch = precision.convert_input(trainer.strategy.batch_to_device(batch))
        modes = {module: module.training for module in pl_module.modules()}
        pl_module.eval()

        def probe() -> dict[str, float]:
            with precision.forward_context():
                return lsuv_(pl_module, batch, layers, self.lsuv_tolerance, self.lsuv_max_iters, self._forward_fn)

        try:
            return call_eagerly(pl_module, probe)  # hooks do not fire inside a compiled graph
        except Exception as err:
            how = "pl_module(<the batch's inputs>)" if self.lsuv_forward_fn is None else repr(self.lsuv_forward_fn)
            raise RuntimeError(
                f"WeightInit(scheme='lsuv') could not run the model on the first training batch with {how}:"
                f" {type(err).__name__}: {err}. Pass `lsuv_forward_fn`, a callable `(module, batch) -> output` (or its"
                " dotted import path) that runs the module on a batch, e.g. `lambda m, batch: m(*batch)`."
            ) from err
        finally:
            for module, training in modes.items():
                module.train(training)
