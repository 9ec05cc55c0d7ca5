"""Stage 5, `augur cl`: class-incremental learning with the field's protocol and metrics."""
