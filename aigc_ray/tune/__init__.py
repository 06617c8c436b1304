"""Ray Tune: GAN and fusion trainables, quality metrics, Tuner construction from the spec."""
