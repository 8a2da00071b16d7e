"""How every dlkern Triton kernel is autotuned: configurations come from ``configs.py`` (data, keyed
on shape arguments), the winner is cached on disk by Triton (``cache_results=True``), so a second
process with the same shapes does not tune again.

Under ``TRITON_INTERPRET=1`` (CPU tests) timing configurations means nothing and costs minutes, so
only the first configuration of each list is kept; the lists therefore start with a configuration
that is valid for every shape.
"""
import triton

from ._interpreter import interpreting


def autotune(configs, key, prune=None, **kwargs):
    """``triton.autotune`` with dlkern's defaults. ``prune(configs, named_args)`` may drop
    configurations that are invalid or wasteful for a shape; it must keep at least one.
    ``named_args`` holds every launch argument: Triton hands a prune the positional ones and the
    keyword ones (dlkern's launches, see ``_launch.py``) separately, merged here."""
    if interpreting():
        # One configuration: Triton's autotuner then launches it directly, without timing (which
        # would need a GPU driver). Read at decoration time, as triton.jit reads TRITON_INTERPRET.
        return triton.autotune(configs=list(configs)[:1], key=key, **kwargs)

    def early_prune(configs, named_args, **keywords):
        return prune(list(configs), {**named_args, **keywords})

    pruning = {"early_config_prune": early_prune} if prune is not None else None
    return triton.autotune(configs=configs, key=key, cache_results=True,
                           prune_configs_by=pruning, **kwargs)
