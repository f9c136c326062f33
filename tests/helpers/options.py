"""Constructor options of the public classes, as LightningCLI and the option tests see them."""

from __future__ import annotations

import inspect


def constructor_options(cls: type) -> list[inspect.Parameter]:
    """Every constructor option of ``cls``, with those a model forwards through ``**kwargs`` to its base class."""
    params = [p for p in inspect.signature(cls.__init__).parameters.values() if p.name != "self"]
    if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        return params
    own = [p for p in params if p.kind is not inspect.Parameter.VAR_KEYWORD]
    own_names = {p.name for p in own}
    return own + [p for p in constructor_options(cls.__mro__[1]) if p.name not in own_names]
