"""Model builders: causal and masked language models (later: GAN, fusion, ensemble combiners)."""
