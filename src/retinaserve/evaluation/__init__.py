"""Accuracy measured here, not quoted: the official WIDER FACE protocol and box + landmark metrics on any
annotated folder, for every model and engine variant."""
