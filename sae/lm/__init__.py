"""The language-model side: the paper's sites by name (`sites`), running a model site by site and
splicing SAEs in (`runner`), loading a model by name (`models`) and the embedded default model and
corpus (`embedded`)."""
