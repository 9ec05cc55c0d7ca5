"""What every stage shares: errors and exit codes, files written atomically, output-folder claims,
names that become paths, caches, settings (one source of truth), registries, device policy, tables."""
