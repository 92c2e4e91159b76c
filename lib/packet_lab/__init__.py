"""The lab around the product: stand-ins for what the plugin talks to, for the demo, trials
and fast tests. Never installed into OpenNebula's remotes tree.

- ``packet``: the Packet API emulator (``python3 -m packet_lab.packet``) and its admin client.
- ``oned``: the oned XML-RPC emulator (``python3 -m packet_lab.oned.emulator``), its
  one_ipam stand-in and the scenario driver that plays oned's life cycle.
- ``netlab``: network namespaces with real packets; ``demo``: the README's first command.
"""
