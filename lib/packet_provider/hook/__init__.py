"""The alias_ip hook: ``entry`` (argv, stdin and the fast path), ``decide`` (pure decisions),
``sync`` (reads oned and Packet, writes Packet), ``registration`` (install.sh --hooks)."""
