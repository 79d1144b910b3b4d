"""End-to-end pipelines as functions of a settings object: the demo suite (`demo`) and the figure grid (`grid`)."""
