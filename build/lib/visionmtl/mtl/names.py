"""Method names and their ``train.method.args`` keys, without importing torch.

``load_config`` checks a config against this table before anything heavy is imported;
``tests/test_mtl_methods.py`` checks the table against the method classes' signatures.
"""

from __future__ import annotations

#: loss weighting methods (one forward, one backward): name -> option keys
WEIGHTING_ARGS: dict[str, tuple[str, ...]] = {
    "fixed": (), "uncertainty": (), "dwa": ("temperature",), "rlw": ("seed",), "stch": ("mu", "warmup_steps"),
}
#: gradient methods (per-task gradients, Gram-space combination): name -> option keys
GRADIENT_ARGS: dict[str, tuple[str, ...]] = {
    "sum": (), "mgda": ("normalize", "max_iter", "tol"), "pcgrad": ("seed",), "cagrad": ("alpha", "rescale"),
    "imtl": (), "gradnorm": ("alpha", "lr"),
}
METHOD_ARGS: dict[str, tuple[str, ...]] = {**WEIGHTING_ARGS, **GRADIENT_ARGS}
METHOD_NAMES: tuple[str, ...] = tuple(METHOD_ARGS)


def is_gradient_method(name: str) -> bool:
    return name in GRADIENT_ARGS
