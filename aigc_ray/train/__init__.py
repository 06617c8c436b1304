"""Ray Train: the data feed, and (later) DeepSpeed pretraining and fine-tuning."""
