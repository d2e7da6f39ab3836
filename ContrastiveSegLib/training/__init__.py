"""Training loops: few-label fine-tuning (and, in a later issue, self-supervised pretraining)."""
