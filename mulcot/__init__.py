"""mulcot: distil a multimodal teacher's sentiment reasoning into a small student (MulCoT-RD)."""

__version__ = "0.1.0"
