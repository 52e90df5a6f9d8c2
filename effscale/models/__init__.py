"""Build any baseline from its stage table; see `network.build_model`."""

from effscale.models.network import build_model

__all__ = ["build_model"]
