"""Stage 4, `augur dg`: domain generalization the DomainBed way (algorithms, hyper-parameter registry,
sweeps, three model-selection methods, collect_results tables)."""
