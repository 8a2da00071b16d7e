"""dlkern: compiled kernels (Numba on the CPU, Triton on the GPU) behind torch's own API.

    import dlkern.functional as DF   # mirrors torch.nn.functional
    import dlkern.nn as dnn          # drop-in modules, same state_dict as torch's

``dlkern.patch(model)`` and ``dlkern.enable()`` put whole models on dlkern (by default keeping, per
call signature, whichever of dlkern and torch is faster: dlkern.policy); ``dlkern.explain(model,
*args)`` reports, call by call, where the time goes.

``dlkern.stats()`` counts the calls that fell back to torch and the policy's decisions;
``DLKERN_STRICT=1`` makes a fallback an error; ``DLKERN_BACKEND`` (numba, triton, torch) overrides
the backend choice; ``DLKERN_POLICY`` (fastest, always) the policy of patch and enable.
"""
import torch._dynamo  # noqa: F401  (torch's custom-op dispatch imports it on the first call of any
#                              custom op, ~1 s; paying it at import keeps the first call fast)

from dlkern import _threads  # noqa: F401  (pins thread counts before any kernel compiles)
from dlkern._dispatch import reset_stats, stats
from dlkern import functional, nn  # noqa: E402
from dlkern.enable import disable, enable, enabled, is_enabled  # noqa: E402
from dlkern.patch import patch, unpatch  # noqa: E402
from dlkern.explain import explain  # noqa: E402

__version__ = "0.1.0"
__all__ = ["functional", "nn", "stats", "reset_stats", "enable", "disable", "enabled",
           "is_enabled", "patch", "unpatch", "explain"]
