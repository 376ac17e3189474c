"""ffnbench: a quantization-aware benchmark of two Transformer FFN sublayer designs under input drift."""

__version__ = "0.1.0"
