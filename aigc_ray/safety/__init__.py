"""The safety filter on what goes into and comes out of the generative models: the project's own
word/pattern list (case, leetspeak, spacing undone; whole words, so no Scunthorpe problem) and a
packaged offline classifier, combined per category by the spec's threshold."""
