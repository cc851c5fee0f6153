"""How rows are made: the encode loop (engine), the Embedder that turns a resolved model into a
runnable pipeline, reduced precision, and the OpenVINO backend.

Imports hfenc.model and hfenc.errors, nothing above."""
