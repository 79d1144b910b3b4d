"""Text and activation data: corpora and token batches (`text`), the activation stream with its cache
(`stream`), the massive-activation rule (`massive`) and synthetic data with known features (`synthetic`)."""
