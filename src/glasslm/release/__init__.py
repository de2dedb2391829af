"""``glasslm release``: a run packaged as a Hugging Face-style git repository (see docs/release.md)."""
