"""Drawing; computes nothing. The paper's figures from evaluation and comparison tables (`figures`, read
and checked by `tables`, drawn from a data folder by `draw`, written by `export`, `cli` the command
`python -m geometry.figures`), a comparison's HTML report (`report`) and the 2-D maps of features
(`maps`). Nothing is imported here, so that `report` and `maps`, which import plotly only when they
draw, load without it."""
