"""Model card template and assets, installed as ``llmembed_hf.hub_cards``."""
