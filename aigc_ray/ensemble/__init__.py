"""Ensembles of fusion classifiers: members (sweep top-k, bagging, listed), combination (mean,
weighted, vote, stacking), the language-model ensemble, build/evaluate, and the feedback refresh."""
