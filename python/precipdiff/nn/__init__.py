"""Network definitions: the UNet used by both the regression and the denoiser."""

from precipdiff.nn.unet import UNet, UNetConfig

__all__ = ["UNet", "UNetConfig"]
