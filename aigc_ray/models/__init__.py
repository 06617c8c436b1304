"""Plain torch models, one file per family, each with its own training step: language models and
their fine-tuning modes (lm, tuning), GANs (gan, style_gan, generators, text_condition,
gan_training, video_gan), the fusion classifier (fusion, fusion_training), the digit classifier
and the metrics built on it, and GAN data augmentation. Nothing here imports Ray: ``train/`` and
``tune/`` launch these, ``ensemble/`` and ``serve/`` load them."""
