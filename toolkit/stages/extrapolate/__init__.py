"""Stage 1, `augur extrapolate`: an LLM imagines novel domains per class (Beyond Finite Data) or the
classes of a realm (Premonition); `augur extrapolate import` reads the Premonition paper's own prompt CSVs."""
