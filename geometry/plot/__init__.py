"""Drawing: the paper's figures from evaluation and comparison tables (`figures`). Computes nothing."""
