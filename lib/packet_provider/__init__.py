"""OpenNebula NIC alias IPs on Packet bare metal.

Modules, one concern each:

- ``errors``, ``validate``, ``hostxml``, ``vm``, ``cli``, ``log``: shared, standard library
  only (they run on hypervisors too).
- ``nat``: the alias_sdnat VNM driver (host side, standard library only).
- ``config``, ``onexml``, ``packet``, ``ipam``, ``hook``: frontend side.
- ``emulator``: the Packet API and oned emulators.
"""

__version__ = "0.1.0"
