"""Ray Train glue: the data feed into workers, the DeepSpeed config, the shared training loop
behind ``Hooks``, pretraining, fine-tuning and the export to plain Hugging Face folders."""
