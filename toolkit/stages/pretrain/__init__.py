"""Stage 3, `augur pretrain`: supervised training on synthetic images; the head is thrown away (Premonition)."""
