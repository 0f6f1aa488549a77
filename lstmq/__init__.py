"""lstmq: quantization-aware LSTM classifiers for integer-only hardware."""

__version__ = "0.1.0"
