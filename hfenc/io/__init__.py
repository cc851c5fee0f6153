"""Formats in and out: input readers (text, JSONL, CSV, Parquet/Arrow), output writers (.npy,
Parquet), the ownership rule for outputs, quantized rows, and the sidecar read back as a value.

Imports hfenc.compute, hfenc.model and hfenc.errors, nothing above."""
