"""The packet IPAM driver: the five actions one_ipam runs, and the lease journal."""
