"""dlkern.nn: drop-in modules, subclasses of their torch twins with identical state_dicts."""
from dlkern.nn.conv import Conv1d, Conv2d, Conv3d

__all__ = ["Conv1d", "Conv2d", "Conv3d"]
from dlkern.nn.conv import ConvTranspose1d, ConvTranspose2d, ConvTranspose3d  # noqa: E402

__all__ += ["ConvTranspose1d", "ConvTranspose2d", "ConvTranspose3d"]
