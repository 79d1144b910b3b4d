"""The language-model side: named sites of Llama-family models, running and splicing them (`sites`),
and the embedded default model and corpus (`embedded`)."""
