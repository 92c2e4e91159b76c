"""OpenNebula NIC alias IPs on Packet bare metal: the product, and nothing else.

- ``core``: what frontend and hypervisors share; the Python standard library only (>= 3.8).
- ``vnm``: the alias_sdnat VNM driver (hypervisors; standard library only).
- ``config``, ``onexml``, ``packet``, ``oned_client``: frontend services (the config file,
  oned's XML through lxml, the Packet API, oned's XML-RPC API).
- ``ipam``: the packet IPAM driver; ``hook``: the alias_ip hook and its registration.

The emulators, the scenario driver, the namespace lab and the demo are the ``packet_lab``
package beside this one: never installed into the remotes tree.
"""

__version__ = "0.1.0"
