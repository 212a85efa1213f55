"""kvsched: pack LLM serving pods onto shared GPUs so the worst KV-cache pressure ratio is as low as possible."""

__version__ = "0.1.0"
