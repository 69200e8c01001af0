"""The self-contained model files, installed as ``llmembed_hf.modeling`` and uploaded as remote code."""
