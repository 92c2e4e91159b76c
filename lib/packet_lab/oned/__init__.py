"""oned's side, emulated: the XML-RPC server, one_ipam, the drivers it runs, the scenario."""
