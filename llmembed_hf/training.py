"""Deprecated module path: the head line is `llmembed_hf.trainer`, its arguments `llmembed_hf.training_args`,
metrics `llmembed_hf.metrics` and reports `llmembed_hf.model_card`."""

from ._deprecation import forward_names

__getattr__ = forward_names(__name__, {
    **dict.fromkeys(["fit_head", "predict_logits", "train_head"], "llmembed_hf.trainer"),
    "HeadTrainingArguments": "llmembed_hf.training_args",
    **dict.fromkeys(["compute_classification_metrics", "confusion_matrix", "load_metric"], "llmembed_hf.metrics"),
    **dict.fromkeys(["TrainingReport", "environment"], "llmembed_hf.model_card"),
})
