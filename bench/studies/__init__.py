"""One-off studies: each answered one question, and its figures are in docs/results.md."""
