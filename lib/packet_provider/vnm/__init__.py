"""The alias_sdnat VNM driver (runs on hypervisors; standard library only, Python >= 3.8)."""
