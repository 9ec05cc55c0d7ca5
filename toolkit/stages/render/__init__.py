"""Stage 2, `augur render`: prompt rows become images in the DomainBed layout, with a manifest."""
