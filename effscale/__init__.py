"""effscale: compound model scaling (Tan & Le, ICML 2019) as a tool."""

__version__ = "0.1.0"
