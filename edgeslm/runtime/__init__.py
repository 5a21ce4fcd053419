"""Device-side runtime: the Engine contract, the shared Generator, and the plugin registry."""

from .engine import Engine
from .generator import GenerationConfig, GenerationMetrics, GenerationResult, Generator

__all__ = ["Engine", "GenerationConfig", "GenerationMetrics", "GenerationResult", "Generator"]
