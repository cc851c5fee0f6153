"""What a model is: resolving a name to files, the sentence-transformers folder reader, the
architecture table, poolers, the head modules, HFTextEncoder, and `hfenc info`'s description.

Imports only hfenc.errors from outside this wing."""
