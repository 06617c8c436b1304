"""Ray Tune glue: search spaces and schedulers from the spec, one trial skeleton (``trial``), a
trainable per family (GAN, fusion, video) over the plain model code of ``models/``, and the
shared run/rank/publish machinery (``tuner``)."""
