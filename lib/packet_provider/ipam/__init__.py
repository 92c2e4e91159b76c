"""The packet IPAM driver: the five actions one_ipam runs over Packet reservations.

- ``main``: the entry point (``remotes/ipam/packet/<action>``): one action, its log line.
- ``request``: parsing what oned sends (argv, ``IPAM_DRIVER_ACTION_DATA``, the AR).
- ``actions``: the five actions, each returning an ``Outcome``.
- ``answer``: the templates oned reads back (``AR = [...]``, ``ADDRESS = [...]``).
- ``block``: the Packet block behind a range (is it the range's; emptying and releasing it).
- ``leases``: local state (leases, the register journal, owed unassignments).
- ``recovery``: what killed or failed actions left to do, done by later ones.
- ``context``: what one action works with (configuration, local state, API clients).
"""
